"""The teacher: a cross-encoder that reads both texts of a pair as one sequence.

Plain PyTorch + transformers, no Beam: ``jobs.train_teacher`` fine-tunes it and
``jobs.label_pairs`` runs it over unlabeled pairs to write the distillation set.

A teacher checkpoint is a standard Hugging Face sequence-classification directory, so it also
loads with ``AutoModelForSequenceClassification`` (or sentence-transformers' ``CrossEncoder``)::

    config.json          the model config (num_labels = 1, or k for k classes)
    model.safetensors    the weights (nothing is ever pickled)
    tokenizer.json ...   the tokenizer
    teacher.json         pairscore's TeacherTask: task, loss, label mapping, max length

A cross-encoder someone else trained (any sequence-classification checkpoint with its head) is a
teacher too: without ``teacher.json`` its task is read from ``num_labels`` (1 -> binary, k -> k
classes) and its max length from the tokenizer.

Shapes: B pairs in a batch, T tokens (both texts with their special tokens, padded to the
batch's longest pair), C outputs (1, or k for k classes), P pairs in all.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel,
                          PreTrainedTokenizerBase)

from encoders.choices import TASKS, TEACHER_LOSSES_BY_TASK
from encoders.device import autocast
from encoders.dual_encoder import cut_texts
from encoders.file_fingerprint import write_record
from encoders.finite import check_finite_weights
from encoders.fingerprint import hash_weights, tokenizer_identity
from encoders.inference import length_order
from encoders.remote import atomic_directory, local_model_dir
from encoders.sources import refuse_checkpoint_code, resolve_encoder
from encoders.errors import ModelError

TEACHER_FILE = "teacher.json"
TASK_FORMAT = "pairscore-teacher"
TASK_VERSION = 1
LOSSES = TEACHER_LOSSES_BY_TASK    # the first loss of each task is its default
# Without teacher.json and with a tokenizer that does not say, pairs are cut here: BERT-style
# position embeddings stop at 512.
_FALLBACK_MAX_LENGTH = 512
# Config keys that say where or with which library version a model was saved, not what it is;
# left out of the fingerprint so a saved and re-loaded teacher keeps its fingerprint.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "architectures", "dtype", "torch_dtype")


# --------------------------------------------------------------------------- the task

@dataclass(frozen=True)
class TeacherTask:
    """What the teacher predicts and how its labels become training targets.

    task:        ``binary`` (labels 0/1), ``graded`` (numeric labels in ``label_range``, mapped
                 linearly to [0, 1]) or ``classes`` (labels 0..k-1).
    loss:        ``bce`` (binary, graded), ``mse`` on the sigmoid (graded), ``ce`` (classes);
                 None picks the task's default (bce, bce, ce).
    label_range: (low, high) of graded labels, e.g. (0, 5) for STS-B.
    num_classes: k, for ``classes``.
    max_length:  tokens per pair, both texts and special tokens included; longer pairs are cut
                 from the longer text first.
    """
    task: str = "binary"
    loss: str | None = None
    label_range: tuple[float, float] | None = None
    num_classes: int | None = None
    max_length: int = 128

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ModelError(f"task={self.task!r} is not allowed: choose one of {', '.join(TASKS)}")
        loss = LOSSES[self.task][0] if self.loss is None else self.loss
        if loss not in LOSSES[self.task]:
            raise ModelError(f"loss={loss!r} is not allowed for task {self.task!r}: "
                             f"choose {' or '.join(LOSSES[self.task])}")
        object.__setattr__(self, "loss", loss)
        if self.task == "graded":
            if self.label_range is None:
                raise ModelError("task 'graded' needs label_range (--label-range LOW,HIGH, e.g. 0,5 for "
                                 "STS-B): it maps the labels to [0, 1]")
            low, high = (float(v) for v in self.label_range)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ModelError(f"label_range={self.label_range!r} is not allowed: give two finite "
                                 "numbers LOW,HIGH with LOW < HIGH")
            object.__setattr__(self, "label_range", (low, high))
        elif self.label_range is not None:
            raise ModelError(f"label_range={self.label_range!r} is only for task 'graded', not {self.task!r}")
        if self.task == "classes":
            if not _is_int(self.num_classes) or self.num_classes < 2:
                raise ModelError(f"num_classes={self.num_classes!r} is not allowed for task 'classes': "
                                 "give an integer of at least 2 (--num-classes K)")
        elif self.num_classes is not None:
            raise ModelError(f"num_classes={self.num_classes!r} is only for task 'classes', not {self.task!r}")
        if not _is_int(self.max_length) or self.max_length < 4:
            raise ModelError(f"max_length={self.max_length!r} is not allowed: give an integer of at least 4 "
                             "(room for both texts and three special tokens)")

    @property
    def num_outputs(self) -> int:
        """C: logits per pair."""
        return self.num_classes if self.task == "classes" else 1

    def target(self, label: Any) -> float:
        """One label as read (a number, or a numeric string from CSV) -> the training target:
        0.0/1.0 (binary), a value in [0, 1] (graded), a class index as a float (classes).

        Raises:
            ValueError: the label is not a number the task allows; the message says what is.
        """
        number = _label_number(label, allow_bool=self.task == "binary")
        if self.task == "binary":
            if number not in (0.0, 1.0):
                raise ValueError(f"label {label!r} is not 0 or 1")
            return number
        if self.task == "graded":
            low, high = self.label_range
            if not low <= number <= high:
                raise ValueError(f"label {label!r} is outside the label range {low:g}..{high:g}")
            return (number - low) / (high - low)
        if not number.is_integer() or not 0 <= number < self.num_classes:
            raise ValueError(f"label {label!r} is not a class index 0..{self.num_classes - 1}")
        return number

    def loss_value(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits (B, C), targets (B,) as from :meth:`target` -> the mean loss (a scalar).

        Computed in float32 whatever the autocast dtype, so mixed precision does not round the loss.
        """
        logits = logits.float()
        if self.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits[:, 0], targets.float())
        if self.loss == "mse":
            return F.mse_loss(torch.sigmoid(logits[:, 0]), targets.float())
        return F.cross_entropy(logits, targets.long())

    def label_mapping(self) -> str:
        """How labels become targets, and what the outputs mean, for people reading teacher.json."""
        if self.task == "binary":
            return "label 0 or 1 -> target 0 or 1; output: one logit z, P(label = 1) = sigmoid(z)"
        if self.task == "graded":
            low, high = self.label_range
            return (f"label y in [{low:g}, {high:g}] -> target (y - {low:g}) / {high - low:g} in [0, 1]; "
                    f"output: one logit z, predicted label = {low:g} + {high - low:g} * sigmoid(z)")
        return (f"label k in 0..{self.num_classes - 1} -> class k; output: {self.num_classes} logits, "
                "P(class k) = softmax(logits)[k]")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["label_range"] = list(self.label_range) if self.label_range else None
        return {"format": TASK_FORMAT, "version": TASK_VERSION, **data,
                "num_outputs": self.num_outputs, "label_mapping": self.label_mapping()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TeacherTask":
        data = dict(data)
        fmt, version = data.pop("format", None), data.pop("version", None)
        if fmt != TASK_FORMAT:
            raise ModelError(f"format {fmt!r} is not a pairscore teacher task ({TASK_FORMAT!r})")
        if version != TASK_VERSION:
            raise ModelError(f"teacher task version {version!r} is not supported (this pairscore reads "
                             f"{TASK_VERSION})")
        for derived in ("num_outputs", "label_mapping"):  # written for people, recomputed on load
            data.pop(derived, None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown teacher task keys {unknown}; allowed: {sorted(known)}")
        if data.get("label_range") is not None:
            data["label_range"] = tuple(data["label_range"])
        return cls(**data)

    def replace(self, **changes: Any) -> "TeacherTask":
        return dataclasses.replace(self, **changes)


def soft_labels(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Teacher logits -> soft labels (Hinton et al.; DiPair section 4.3).

    logits (P, 1) -> (P,) ``sigmoid(z / T)``; logits (P, C > 1) -> (P, C) ``softmax(z / T)``.
    Computed in float64 from the logits as given and returned as float32, so soft labels
    written next to float32 logits are exactly ``sigmoid(logit / T)`` of what was written.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is not allowed: give a number > 0")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if scaled.ndim != 2:
        raise ValueError(f"logits must be (P, C), got shape {scaled.shape}")
    if scaled.shape[1] == 1:
        # exp of a negative number only: no overflow for large |z|.
        z = scaled[:, 0]
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)
    shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _label_number(label: Any, allow_bool: bool) -> float:
    """A label as a finite float, or ValueError saying why not."""
    if isinstance(label, bool):
        if not allow_bool:
            raise ValueError(f"label {label!r} is a boolean, not a number")
        return float(label)
    if isinstance(label, (int, float)):
        number = float(label)
    elif isinstance(label, str):
        try:
            number = float(label.strip())
        except ValueError:
            raise ValueError(f"label {label!r} is not a number") from None
    else:
        raise ValueError(f"label {label!r:.80} is a {type(label).__name__}, not a number")
    if not math.isfinite(number):
        raise ValueError(f"label {label!r} is not a finite number")
    return number


# --------------------------------------------------------------------------- the model

@dataclass(frozen=True)
class TokenizedPair:
    """One pair after tokenization: ``[CLS] left [SEP] right [SEP]`` as token ids, the segment
    ids when the model uses them, and whether truncation cut the pair."""
    input_ids: list[int]
    token_type_ids: list[int] | None
    truncated: bool

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


class CrossEncoder(nn.Module):
    """A sequence-classification transformer over ``[CLS] left [SEP] right [SEP]``, its tokenizer
    and its task. ``forward`` gives logits (B, C)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TeacherTask):
        super().__init__()
        if model.config.num_labels != task.num_outputs:
            raise ModelError(f"the model has {model.config.num_labels} outputs but task {task.task!r} "
                             f"needs {task.num_outputs}")
        self.model = model
        self.tokenizer = tokenizer
        self.task = task
        self._fingerprint: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) over the model config, the task, the tokenizer's vocabulary and rules, and
        every weight: equal teachers have equal fingerprints however they were saved or loaded.
        Computed once; call :meth:`refresh_fingerprint` after changing the weights."""
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self)
        return self._fingerprint

    def refresh_fingerprint(self) -> str:
        self._fingerprint = None
        return self.fingerprint

    def tokenize(self, lefts: Sequence[str], rights: Sequence[str]) -> list[TokenizedPair]:
        """Tokenize pairs without padding (batches are padded later, after sorting by length).
        Truncation cuts the longer text first, down to ``task.max_length``.

        Long texts are cut before tokenizing, and every pair still gets exactly the tokens of its
        whole texts (:func:`_cut_pairs`)."""
        if len(lefts) != len(rights):
            raise ValueError(f"{len(lefts)} left texts but {len(rights)} right texts")
        if not lefts:
            return []
        lefts, rights = _cut_pairs(self.tokenizer, list(lefts), list(rights), self.task.max_length)
        encoded = self.tokenizer(lefts, rights, truncation="longest_first", max_length=self.task.max_length,
                                 padding=False)
        type_ids = encoded.get("token_type_ids")
        if encoded.encodings is not None:
            # Fast tokenizers record what truncation cut off; that is the exact signal.
            truncated = [bool(e.overflowing) for e in encoded.encodings]
        else:
            truncated = [len(ids) >= self.task.max_length for ids in encoded["input_ids"]]
        return [TokenizedPair(ids, type_ids[i] if type_ids is not None else None, truncated[i])
                for i, ids in enumerate(encoded["input_ids"])]

    def collate(self, pairs: Sequence[TokenizedPair]) -> dict[str, torch.Tensor]:
        """Pad to the batch's longest pair -> input_ids, attention_mask (and token_type_ids): (B, T)."""
        features: dict[str, list] = {"input_ids": [p.input_ids for p in pairs]}
        if pairs and pairs[0].token_type_ids is not None:
            features["token_type_ids"] = [p.token_type_ids for p in pairs]
        return dict(self.tokenizer.pad(features, padding=True, return_tensors="pt"))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """A collated batch (tensors (B, T)) -> logits (B, C)."""
        return self.model(**batch).logits

    @torch.inference_mode()
    def predict(self, pairs: Sequence[TokenizedPair], batch_size: int = 64,
                on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Logits (P, C) float32 in input order.

        Pairs are sorted by token count before being cut into batches, so each batch pads only
        to its own longest pair; on GPU the model runs in mixed precision. ``on_batch``: called
        with each batch's pair count once it is done (progress).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not allowed: give a positive integer")
        was_training = self.training
        self.eval()
        device = self.device
        logits = np.empty((len(pairs), self.task.num_outputs), dtype=np.float32)
        try:
            for index in length_order(pairs, batch_size):
                batch = {k: v.to(device) for k, v in self.collate([pairs[i] for i in index]).items()}
                with autocast(device):
                    logits[index] = self(batch).float().cpu().numpy()
                if on_batch is not None:
                    on_batch(len(index))
        finally:
            self.train(was_training)
        return logits

    def predict_texts(self, lefts: Sequence[str], rights: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Raw texts -> logits (P, C) float32, in input order: the plain-PyTorch reference."""
        return self.predict(self.tokenize(lefts, rights), batch_size)


def _cut_pairs(tokenizer: PreTrainedTokenizerBase, lefts: list[str], rights: list[str], max_length: int
               ) -> tuple[list[str], list[str]]:
    """The texts to tokenize in the pairs' place: cuts of long texts where they give exactly the
    whole pair's tokens, so that memory is bounded by the batch times the cut (a whole huge text
    costs gigabytes; two in one pair, whose overflow pairs every piece of one with every piece of
    the other, far more).

    Truncating a pair ("longest_first") keeps the first k tokens of each text, with k set by the
    texts' token counts n_left, n_right and the budget B (max length minus the pair's special
    tokens): none cut when n_left + n_right <= B; else a text with n <= B/2 keeps all and the other
    fills the budget; else each keeps B // 2, and for an odd B the longer text (the right one on a
    tie) one more. A cut from ``encoders.dual_encoder.cut_texts`` for B tokens (plus one text's
    special tokens) has exactly the whole text's first B tokens and more after them, so it gives
    the same k wherever the counts enter only capped at B: always for an even B. For an odd B and
    a pair whose texts both have more than B tokens, which text is longer decides; there
    :func:`_odd_share` counts the whole texts one at a time (memory linear in the text, never the
    pair's product) and lengthens one cut until the cuts compare as the whole texts do."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    single = budget + tokenizer.num_special_tokens_to_add(pair=False)
    cut_lefts, cut_rights = cut_texts(tokenizer, lefts, single), cut_texts(tokenizer, rights, single)
    if budget % 2 == 0:
        return cut_lefts, cut_rights
    cut = [(len(a) < len(whole_a), len(b) < len(whole_b))
           for a, whole_a, b, whole_b in zip(cut_lefts, lefts, cut_rights, rights)]
    # A pair with one text cut (more than B tokens): is its other text over B tokens too? Those
    # texts are short (not cut), so asking the tokenizer is cheap.
    others = [i for i, (a, b) in enumerate(cut) if a != b]
    long_others = set()
    if others:
        encoded = tokenizer([rights[i] if cut[i][0] else lefts[i] for i in others], truncation=True,
                            max_length=single, padding=False)
        long_others = {i for i, e in zip(others, encoded.encodings) if e.overflowing}
    for i, (a, b) in enumerate(cut):
        if (a and b) or i in long_others:
            cut_lefts[i], cut_rights[i] = _odd_share(tokenizer, lefts[i], rights[i], cut_lefts[i], cut_rights[i])
    return cut_lefts, cut_rights


def _odd_share(tokenizer: PreTrainedTokenizerBase, left: str, right: str, cut_left: str, cut_right: str
               ) -> tuple[str, str]:
    """For a pair whose texts both have more than an odd budget's tokens: prefixes of ``left`` and
    ``right``, starting from their cuts (or the texts themselves), whose token counts compare as
    the whole texts' do (the left one greater, or the right one at least as great), so truncating
    the prefixes gives the longer whole text the odd token, as truncating the whole pair does.

    A prefix longer than a cut still has the whole text's first tokens (the cut's proof, complete
    words before it, holds for it too), so only the counts change. The side that must be longer
    doubles its prefix until it is; should it reach its whole text first, the other side does the
    same, and with both texts whole the counts are the true ones."""
    def count(text: str) -> int:
        return len(tokenizer([text], add_special_tokens=False, verbose=False)["input_ids"][0])

    left_wins = count(left) > count(right)                  # the whole texts, one at a time
    prefixes, wholes = [cut_left, cut_right], (left, right)
    counts = [count(cut_left), count(cut_right)]
    while not (counts[0] > counts[1] if left_wins else counts[1] >= counts[0]):
        side = 0 if left_wins else 1
        if prefixes[side] == wholes[side]:
            side = 1 - side
        prefixes[side] = wholes[side][:2 * len(prefixes[side])]
        counts[side] = count(prefixes[side])
    return prefixes[0], prefixes[1]


# --------------------------------------------------------------------------- checkpoints

def build_teacher(base: str, task: TeacherTask, seed: int = 0) -> CrossEncoder:
    """A fresh cross-encoder from a pretrained encoder (a path or hub id; the packaged
    all-MiniLM-L6-v2 for its id), with a new classification head of ``task.num_outputs``
    outputs initialised with ``seed``. A base that already has a head of another size gets a
    new one. Weights load as safetensors only.

    Raises:
        ValueError: the base cannot be found or loaded, or ``task.max_length`` exceeds its
            position embeddings.
    """
    location = resolve_encoder(base)
    refuse_checkpoint_code(location, "base model")
    labels = {i: f"class_{i}" for i in range(task.num_outputs)} if task.task == "classes" else {0: "score"}
    try:
        config = AutoConfig.from_pretrained(location, num_labels=task.num_outputs, id2label=labels,
                                            label2id={v: k for k, v in labels.items()}, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load base model {base!r}: {err}") from err
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and task.max_length > positions:
        raise ModelError(f"max_length={task.max_length} is not allowed for base {base!r}: its position "
                         f"embeddings stop at {positions}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                location, config=config, use_safetensors=True, ignore_mismatched_sizes=True, trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load base model {base!r} as a cross-encoder (safetensors weights "
                             f"are required): {err}") from err
    tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True, trust_remote_code=False)
    return CrossEncoder(model, tokenizer, task)


def save_teacher(teacher: CrossEncoder, directory: str | os.PathLike) -> Path:
    """Write a teacher checkpoint (see the module docstring); returns the directory.

    Written to a temporary directory beside ``directory`` and renamed into place
    (encoders.remote.atomic_directory), so a crash during a save never leaves a half-written
    model. An existing ``directory`` must be empty or an earlier teacher checkpoint."""
    directory = Path(directory)
    earlier_teacher = (directory / TEACHER_FILE).is_file()
    with atomic_directory(directory, allowed=lambda name: earlier_teacher) as target:
        teacher.model.save_pretrained(target, safe_serialization=True)
        teacher.tokenizer.save_pretrained(target)
        (target / TEACHER_FILE).write_text(teacher.task.to_json() + "\n", encoding="utf-8")
        write_record(target, teacher.fingerprint)   # encoders/file_fingerprint.py, after the files it lists
    return directory


def load_teacher(source: str | os.PathLike, attn_implementation: str | None = None) -> CrossEncoder:
    """Load a trained cross-encoder: a directory written by :func:`save_teacher`, or any Hugging
    Face sequence-classification checkpoint (path or cached hub id). Never unpickles.
    ``attn_implementation``: the attention kernels (``"eager"`` returns attention maps, for VIRT);
    None: the library's default.

    Raises:
        ValueError: the source does not exist, has no safetensors weights, is a plain encoder
            without a trained classification head, or its teacher.json is invalid.
    """
    # gs://, s3://...: a local copy (the pinned files, when ``source`` is a PinnedModelDir).
    location = resolve_encoder(local_model_dir(source))
    source = str(source)
    local = Path(location)
    if local.is_dir() and not (local / "config.json").is_file():
        raise ModelError(f"teacher {source!r} is not a model directory: it has no config.json")
    refuse_checkpoint_code(location, "teacher")
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            location, use_safetensors=True, output_loading_info=True, trust_remote_code=False,
            **({"attn_implementation": attn_implementation} if attn_implementation else {}))
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load teacher {source!r} (safetensors weights are required): {err}") from err
    if info["missing_keys"]:
        # A plain encoder loads with a freshly random head: its "labels" would be noise and its
        # fingerprint would change on every load.
        raise ModelError(f"teacher {source!r} is not a trained cross-encoder: weights "
                         f"{', '.join(sorted(info['missing_keys'])[:4])} are missing, so its classification "
                         "head would be random; train one with python -m jobs.train_teacher --base ...")
    tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True, trust_remote_code=False)
    task_path = local / TEACHER_FILE
    if task_path.is_file():
        try:
            task = TeacherTask.from_dict(json.loads(task_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ModelError(f"teacher task {str(task_path)!r} is invalid: {err}") from err
    else:
        task = _task_from_config(model, tokenizer)
    check_finite_weights(model, f"teacher {source!r}")   # NaN weights label NaN, silently
    return CrossEncoder(model, tokenizer, task).eval()


def _task_from_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> TeacherTask:
    """The task of a cross-encoder trained elsewhere: one output is binary, k outputs are k classes."""
    limits = [_FALLBACK_MAX_LENGTH, getattr(model.config, "max_position_embeddings", None),
              getattr(tokenizer, "model_max_length", None)]
    max_length = min(int(v) for v in limits if isinstance(v, int) and v > 0)
    labels = model.config.num_labels
    if labels == 1:
        return TeacherTask("binary", max_length=max_length)
    return TeacherTask("classes", num_classes=labels, max_length=max_length)


def _fingerprint(teacher: CrossEncoder) -> str:
    digest = hashlib.sha256()
    config = {k: v for k, v in teacher.model.config.to_dict().items()
              if not k.startswith("_") and k not in _VOLATILE_CONFIG_KEYS}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(teacher.task.to_json().encode())
    digest.update(tokenizer_identity(teacher.tokenizer).encode())
    hash_weights(digest, teacher.model.state_dict().items())
    return digest.hexdigest()
