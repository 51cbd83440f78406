"""The student and its checkpoint: one directory, JSON config + safetensors, never pickled.

Layout of a checkpoint directory::

    config.json            StudentConfig (see encoders/config.py), human-readable
    encoder/               shared encoder: Hugging Face save (safetensors + tokenizer files)
    left_encoder/          ... or one per side when the encoder is not shared
    right_encoder/
    student.safetensors    projections (left_projection.*, right_projection.*) and head (head.*)
    fingerprint.json       the file and weight fingerprints and every file's size and SHA-256
                           (encoders/file_fingerprint.py); older checkpoints without it still load

The encoders are saved with only their K layers, so a checkpoint is self-contained: it never
needs the pretrained source again. Stage one, stage two and training read this same format.

transformers is imported only where an encoder is built or loaded: stage two's workers load the
head alone (:func:`load_head`) and the launching process reads the config and sizes
(:func:`read_config`, :func:`hidden_size`), neither of which needs it (importing transformers is
seconds of start-up).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from encoders.config import StudentConfig, baseline_config
from encoders.file_fingerprint import RECORD_FILE, write_record
from encoders.finite import check_finite_weights
from encoders.fingerprint import hash_weights, tokenizer_identity
from encoders.errors import ModelError
from encoders.locations import encoder_hidden_size, refuse_checkpoint_code
from encoders.remote import atomic_directory, local_model_dir

if TYPE_CHECKING:  # the encoders import transformers: only where one is built or loaded
    from encoders.dual_encoder import DualEncoder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "student.safetensors"
SHARED_ENCODER_DIR = "encoder"
SIDE_ENCODER_DIRS = {"left": "left_encoder", "right": "right_encoder"}


class Student(nn.Module):
    """Dual encoder + head, built from one StudentConfig.

    ``head`` is None when the config names a head this build does not register and only
    the encoder side is needed (stage one); scoring requires it.
    """

    def __init__(self, config: StudentConfig, encoder: DualEncoder, head: nn.Module | None):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.head = head
        self._fingerprint: str | None = None

    def score_tokens(self, left: torch.Tensor, left_mask: torch.Tensor, right: torch.Tensor,
                     right_mask: torch.Tensor, left_pooled: torch.Tensor | None = None,
                     right_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """The head on stored tokens: (B, N, D), (B, N), (B, M, D), (B, M) [, (B, H) x2]
        -> logits (B, num_outputs). Stage two calls exactly this."""
        if self.head is None:
            raise ModelError(f"student has no head {self.config.head!r}: it cannot score pairs")
        return self.head(left, left_mask, right, right_mask, left_pooled=left_pooled, right_pooled=right_pooled)

    @torch.inference_mode()
    def score_texts(self, left_texts: list[str], right_texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Raw texts -> logits (B, num_outputs), in plain PyTorch with no store and no Beam:
        the reference the pipeline's scores must equal."""
        left = self.encoder.left.encode(left_texts, batch_size)
        right = self.encoder.right.encode(right_texts, batch_size)
        return self.score_tokens(left.tokens, left.mask, right.tokens, right.mask, left.pooled, right.pooled)

    def scores_from_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """logits (B, K) -> (score (B,), probs (B, K) or None).

        One output: score = sigmoid(logit), a probability; a head whose output is already a
        similarity (``score_kind == "cosine"``, the zero-training baseline) reports it as is.
        K classes: probs = softmax(logits) and score = the probability of the last class
        (the highest grade, e.g. "exact match").
        """
        logits = logits.float()
        if logits.shape[1] == 1:
            if getattr(self.head, "score_kind", "logits") == "cosine":
                return logits[:, 0], None
            return torch.sigmoid(logits[:, 0]), None
        probs = torch.softmax(logits, dim=1)
        return probs[:, -1], probs

    @property
    def fingerprint(self) -> str:
        """Content hash of the config, tokenizers and every weight (hex sha256, 64 chars).
        Equal students have equal fingerprints however they were saved or loaded."""
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self)
        return self._fingerprint


def build_student(config: StudentConfig, seed: int = 0) -> Student:
    """A fresh student from the pretrained encoder named in ``config`` (projections and
    head randomly initialised with ``seed``)."""
    from encoders.dual_encoder import DualEncoder
    from encoders.sources import load_pretrained

    left_transformer, left_tokenizer = load_pretrained(config.encoder, config.encoder_layers)
    if config.shared_encoder:
        right_transformer, right_tokenizer = left_transformer, left_tokenizer
    else:
        right_transformer, right_tokenizer = load_pretrained(config.encoder, config.encoder_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = DualEncoder(config, left_transformer, right_transformer, left_tokenizer, right_tokenizer)
        head = _build_head(config, encoder.left.output_dim)
    return Student(config, encoder, head).eval()


def save_student(student: Student, directory: str | os.PathLike) -> Path:
    """Write ``student`` as a checkpoint directory (see module docstring).

    The files are written to a temporary directory beside ``directory`` and renamed into place
    (encoders.remote.atomic_directory): a crash during a save never leaves a half-written
    model, and re-saving replaces the previous checkpoint whole. A ``directory`` holding anything
    but a checkpoint is refused rather than replaced."""
    directory = Path(directory)
    checkpoint_names = {CONFIG_FILE, WEIGHTS_FILE, RECORD_FILE, SHARED_ENCODER_DIR, *SIDE_ENCODER_DIRS.values()}
    config = student.config
    encoder = student.encoder
    with atomic_directory(directory, allowed=checkpoint_names.__contains__) as target:
        if config.shared_encoder:
            _save_transformer(encoder.left, target / SHARED_ENCODER_DIR)
        else:
            for side, name in SIDE_ENCODER_DIRS.items():
                _save_transformer(encoder.side(side), target / name)
        tensors = {f"left_projection.{k}": v for k, v in encoder.left.projection.state_dict().items()}
        tensors.update({f"right_projection.{k}": v for k, v in encoder.right.projection.state_dict().items()})
        if student.head is not None:
            tensors.update({f"head.{k}": v for k, v in student.head.state_dict().items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(target / WEIGHTS_FILE),
                  metadata={"format": "pairscore-student"})
        (target / CONFIG_FILE).write_text(config.to_json() + "\n", encoding="utf-8")
        # Last: it lists the files above (sizes and SHA-256) and the weight fingerprint, so the
        # pre-flight can match this model with a store without loading it.
        write_record(target, student.fingerprint)
    return directory


def load_student(directory: str | os.PathLike) -> Student:
    """Load a checkpoint written by :func:`save_student`. Raises ValueError naming what is
    missing or wrong before any weight is read; never unpickles. ``directory`` may be on any
    Beam filesystem (gs://, s3://, ...): it is then loaded from a local copy (encoders/remote.py)."""
    from encoders.dual_encoder import DualEncoder

    directory = Path(local_model_dir(directory))
    config = read_config(directory)
    encoder_dirs = ([SHARED_ENCODER_DIR] if config.shared_encoder else list(SIDE_ENCODER_DIRS.values()))
    missing = [name for name in [WEIGHTS_FILE, *encoder_dirs] if not (directory / name).exists()]
    if missing:
        raise ModelError(f"checkpoint {str(directory)!r} is incomplete: missing {', '.join(missing)} "
                         f"(a checkpoint holds {CONFIG_FILE}, {WEIGHTS_FILE} and {' or '.join(encoder_dirs)}/)")
    transformers_and_tokenizers = [_load_transformer(directory / name) for name in encoder_dirs]
    left, right = transformers_and_tokenizers[0], transformers_and_tokenizers[-1]
    encoder = DualEncoder(config, left[0], right[0], left[1], right[1])
    head = _build_head(config, encoder.left.output_dim)
    tensors = load_file(str(directory / WEIGHTS_FILE))
    _load_part(encoder.left.projection, tensors, "left_projection.", directory)
    _load_part(encoder.right.projection, tensors, "right_projection.", directory)
    if head is not None:
        _load_part(head, tensors, "head.", directory)
    student = Student(config, encoder, head).eval()
    check_finite_weights(student, f"checkpoint {str(directory)!r}")   # NaN weights score NaN, silently
    return student


def load_head(directory: str | os.PathLike | None) -> Student:
    """The student's head alone, for scoring stored tokens (stage two's workers): the checkpoint's
    config and the ``head.*`` weights of its safetensors file; the encoder's weights are never
    read (``student.encoder`` is None). ``None``: the zero-training baseline's head. The head is
    the one :func:`load_student` gives, weight for weight."""
    if not directory:
        config = baseline_config()
        return Student(config, None, _build_head(config, head_input_dim(None, config))).eval()
    directory = Path(local_model_dir(directory))
    config = read_config(directory)
    if not (directory / WEIGHTS_FILE).exists():
        raise ModelError(f"checkpoint {str(directory)!r} is incomplete: missing {WEIGHTS_FILE}")
    head = _build_head(config, head_input_dim(directory, config))
    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as weights:
        tensors = {key: weights.get_tensor(key) for key in weights.keys() if key.startswith("head.")}
    _load_part(head, tensors, "head.", directory)
    return Student(config, None, head).eval()


def read_config(directory: str | os.PathLike) -> StudentConfig:
    """The StudentConfig of a checkpoint directory, with errors that name the directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"model directory {str(directory)!r} does not exist")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"checkpoint {str(directory)!r} is incomplete: missing {CONFIG_FILE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        config = StudentConfig.from_dict(data)
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ModelError(f"checkpoint config {str(path)!r} is invalid: {err}") from err
    _check_head_name(config, directory)
    refuse_checkpoint_code(directory, "checkpoint")
    return config


def hidden_size(directory: str | os.PathLike | None, config: StudentConfig, side: str = "left") -> int:
    """H, ``side``'s encoder's hidden size (the pooled embedding's size, and the tokens' size
    without a projection), from JSON alone: the config.json of the checkpoint's encoder at the
    local ``directory``, or of the baseline's encoder when ``directory`` is None."""
    if not directory:
        hidden = encoder_hidden_size(config.encoder)
        if hidden is None:     # a hub id: its config through transformers
            from encoders.sources import load_config
            hidden = load_config(config.encoder).hidden_size
        return hidden
    path = Path(directory) / (SHARED_ENCODER_DIR if config.shared_encoder else SIDE_ENCODER_DIRS[side]) / CONFIG_FILE
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {str(directory)!r} is incomplete: {path} gives no hidden_size ({err})") from None


def head_input_dim(directory: str | os.PathLike | None, config: StudentConfig) -> int:
    """D, the size of the token embeddings the head reads: the projected size, or the encoder's
    hidden size without a projection."""
    return config.dim if config.dim is not None else hidden_size(directory, config)


def load_or_build_student(model_dir: str | os.PathLike | None, default: StudentConfig) -> Student:
    """The student a job runs: the checkpoint at ``model_dir``, or ``default`` built from
    its pretrained encoder when no directory is given."""
    return load_student(model_dir) if model_dir else build_student(default)


def _check_head_name(config: StudentConfig, directory: Path) -> None:
    from heads import HEAD_NAMES  # heads are plain PyTorch; imported late to keep this module light
    if config.head not in HEAD_NAMES:
        raise ModelError(f"checkpoint {str(directory)!r} names unknown head {config.head!r}; "
                         f"known heads: {', '.join(HEAD_NAMES)}")


def _build_head(config: StudentConfig, dim: int) -> nn.Module:
    """The head the config names, on ``dim``-sized token embeddings (the projected size, or the
    encoder's hidden size without a projection), wrapped in a CosineSkip when ``cosine_skip`` is
    on (its weights are then ``head.inner.*`` plus ``head.scale`` and ``head.bias``)."""
    from heads import CosineSkip
    head = build_head(config.head, dim=dim, left_tokens=config.left_tokens,
                      right_tokens=config.right_tokens, num_outputs=config.num_outputs,
                      **config.head_options)
    with _head_options_are_the_users():
        return CosineSkip(head) if config.cosine_skip else head


def build_head(name: str, *, dim: int, left_tokens: int, right_tokens: int, num_outputs: int = 1,
               **options: Any) -> nn.Module:
    """``heads.build_head`` (same arguments) for a head the user configured, with flags or a
    checkpoint's config: a refused name, option or size is a :class:`ModelError` (exit 2)."""
    from heads import build_head as build  # heads are plain PyTorch; imported late to keep this module light
    with _head_options_are_the_users():
        return build(name, dim=dim, left_tokens=left_tokens, right_tokens=right_tokens, num_outputs=num_outputs,
                     **options)


@contextlib.contextmanager
def _head_options_are_the_users() -> Iterator[None]:
    """The heads, a plain-PyTorch library below the usage-error family's layer (encoders/errors.py),
    refuse a bad argument with a ValueError as torch does; building one from the user's
    configuration, that argument is the user's to fix: the same message, as a ModelError."""
    try:
        yield
    except ValueError as err:
        raise ModelError(str(err)) from err


def _save_transformer(side, target: Path) -> None:
    side.transformer.save_pretrained(target, safe_serialization=True)
    side.tokenizer.save_pretrained(target)


def _load_transformer(source: Path):
    from transformers import AutoModel, AutoTokenizer

    import encoders.sources  # noqa: F401  (importing it quiets transformers' load reports and progress bars)

    model = AutoModel.from_pretrained(source, use_safetensors=True, trust_remote_code=False)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # see encoders/sources.py: never used
    return model, AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=False)


def _load_part(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, directory: Path) -> None:
    part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = set(module.state_dict())
    if set(part) != expected:
        raise ModelError(f"checkpoint {str(directory)!r}: {WEIGHTS_FILE} does not match the config for "
                         f"{prefix.rstrip('.')}: missing {sorted(expected - set(part))}, "
                         f"unexpected {sorted(set(part) - expected)}")
    module.load_state_dict(part, strict=True)


def _fingerprint(student: Student) -> str:
    digest = hashlib.sha256()
    digest.update(student.config.to_json().encode())
    sides = [student.encoder.left] if student.config.shared_encoder else [student.encoder.left, student.encoder.right]
    for side in sides:
        digest.update(tokenizer_identity(side.tokenizer).encode())
    parts = {"encoder.left.": student.encoder.left.transformer}
    if not student.config.shared_encoder:
        parts["encoder.right."] = student.encoder.right.transformer
    parts["left_projection."] = student.encoder.left.projection
    parts["right_projection."] = student.encoder.right.projection
    if student.head is not None:
        parts["head."] = student.head
    for prefix, module in parts.items():
        hash_weights(digest, module.state_dict().items(), prefix)
    return digest.hexdigest()

