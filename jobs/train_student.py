"""Distil a teacher into a DiPair student: two-stage training on a distillation set.

    python -m jobs.train_student --distill distill/ --dev dev.jsonl --head dipair --output student/

A training recipe that reads top to bottom (DiPair §3.7, §4.3-4.4):

1. Read the distillation set (``label_pairs`` output: texts, teacher logits, soft labels; human
   labels may be mixed in) and the labeled dev pairs. Each side's texts are kept once (a pool of
   unique texts) and pairs point into the pools.
2. Build the student (encoder with K layers, first N / M tokens, projection to D, head).
3. Stage 1 -- encoder frozen: the frozen encoder gives every text the same token states in every
   epoch, so they are computed once per unique text (``jobs.frozen_states``, optionally kept on
   disk with ``--cache-dir``) and an epoch runs only projection + head. That makes stage-1 epochs
   nearly free, so stage 1 can run to convergence: early stop on dev.
4. Stage 2 -- everything trains; the encoder at a lower learning rate. Each batch encodes its
   unique texts once. With ``--train-layers k`` only the top k encoder layers train (with the
   projection and head): the frozen lower layers' outputs for every token of every unique text
   are computed once (``encoders/layer_cache.py``, float16) and each step runs only the top k
   layers on them, in length-bucketed batches.
5. Dev is evaluated after every epoch of both stages (with ``--dev-group-col`` also MRR@10, MAP and
   nDCG@10 per query; ``--select-metric`` picks which metric chooses); the best epoch of the whole
   run is the checkpoint (``save_student``: what ``score_pairs --model`` and ``encode_texts --model`` load).

``--stages 1`` trains everything from the first step instead (no frozen stage), for the ablation.

Shapes: P pairs, B pairs in a batch, C outputs (1, or k classes), U unique texts of a pool,
T tokens kept per text in the cache (max(N, M) or N / M), H the encoder's hidden size, D the
projected size.
"""
from __future__ import annotations

if __name__ == "__main__":
    # `python -m jobs.train_student`: the command line (jobs/cli.py, light) parses the flags before the
    # imports below run, and imports this module by name only to run the job.
    from jobs.cli import main_module
    main_module("train_student")

import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from apache_beam.io.filesystems import FileSystems
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from encoders.checkpoint import Student, build_student, load_student, save_student
from encoders.config import SIDES, StudentConfig
from encoders.layer_cache import LowerStates, upper_forward, upper_parameters
from encoders.ranking_metrics import RANKING_METRICS, rank_queries
from encoders.sources import DEFAULT_ENCODER
from encoders.teacher import TASKS, TeacherTask, autocast
from heads import HEAD_NAMES, build_head
from jobs import cli
from jobs.common import run_started
from jobs.metrics import MAIN_METRIC, selection_score, task_metrics
from jobs.frozen_states import FrozenStates
from jobs.student_inference import Pairs, encode_pool, pair_logits
from jobs.training import EpochProgress, grad_scaler, make_adamw, optimizer_step
from jobs.train_teacher import length_grouped_batches, read_labeled_pairs
from pipeline import dead_letters as dl
from pipeline.dead_letters import DeadLetter
from pipeline.encode import pick_device
from pipeline.label import DISTILLATION_FORMAT
from pipeline.outputs import abort_output_on_failure, local_path_or_none, open_output, write_dead_letter_file
from pipeline.pairs import TextPairColumns, extract_text_pair
from pipeline.readers import InputError, InputFile, check_columns, expand_inputs, read_rows
from pipeline.store import MANIFEST_FILE
from pipeline.summary import RunSummary

JOB_NAME = "train_student"
# The heads a student can be trained with; pooled-cos has no parameters (it is the zero-training
# baseline, ``baseline`` in jobs.evaluate).
TRAINABLE_HEADS = tuple(name for name in HEAD_NAMES if name != "pooled-cos")
LOSSES = ("ce", "mse")
# FFNN width used when --head-layers sets the depth of an FFNN head (DiPair §4.2: x128x128).
FFNN_WIDTH = 128
# Training pairs whose cosines calibrate the cosine skip when no stage-1 cache has them all.
COSINE_FIT_PAIRS = 8192
# Soft labels of a k-class teacher must sum to 1 within this (they are float32 softmax outputs).
SOFT_LABEL_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class TrainStudentJob:
    """Everything one training run needs; built once from the command line."""
    distill: tuple[str, ...]
    dev: tuple[str, ...]
    output: str
    head: str = "dipair"
    label_col: str = "label"
    left_col: str = "left"
    right_col: str = "right"
    task: str | None = None
    label_range: tuple[float, float] | None = None
    human_label_col: str | None = None
    human_label_weight: float = 0.5
    encoder: str = DEFAULT_ENCODER
    layers: int | None = None
    n: int = 4
    m: int = 12
    dim: int = 128
    head_layers: int | None = None
    head_options: dict[str, Any] = field(default_factory=dict)
    separate_encoders: bool = False
    cosine_skip: bool = True
    left_max_length: int = 64
    right_max_length: int = 128
    token_selection: str = "first"
    stages: int = 2
    loss: str = "ce"
    swap: bool = False
    stage1_epochs: int = 10
    patience: int = 2
    stage2_epochs: int = 1
    stage1_max_pairs: int | None = None
    stage2_max_pairs: int | None = None
    lr: float = 5e-4
    stage2_lr: float = 1e-4
    encoder_lr: float = 2e-5
    batch_size: int = 32
    stage1_batch_size: int = 128
    encode_batch_size: int = 128
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    device: str = "auto"
    cache_dir: str | None = None
    train_layers: int | None = None     # stage 2 trains only the top k encoder layers, on cached lower states
    dev_group_col: str | None = None    # dev's query column: ranking metrics per epoch
    select_metric: str | None = None    # the dev metric that picks the best epoch (default: the task's)
    limit: int | None = None
    format: str | None = None
    overwrite: bool = False
    progress: bool = True

    def check(self) -> None:
        """Bad values fail here, before anything is read, naming the flag and what is allowed."""
        if self.head not in TRAINABLE_HEADS:
            extra = (" (pooled-cos has no parameters: it is the zero-training baseline, `--model baseline` "
                     "in jobs.evaluate)") if self.head == "pooled-cos" else ""
            raise ValueError(f"--head {self.head!r} is not allowed: choose one of {', '.join(TRAINABLE_HEADS)}{extra}")
        positive = {"--n": self.n, "--m": self.m, "--dim": self.dim, "--stage1-epochs": self.stage1_epochs,
                    "--stage2-epochs": self.stage2_epochs, "--batch-size": self.batch_size,
                    "--stage1-batch-size": self.stage1_batch_size, "--encode-batch-size": self.encode_batch_size,
                    "--patience": self.patience}
        for flag, value in (("--layers", self.layers), ("--head-layers", self.head_layers),
                            ("--limit", self.limit), ("--stage1-max-pairs", self.stage1_max_pairs),
                            ("--stage2-max-pairs", self.stage2_max_pairs), ("--train-layers", self.train_layers)):
            if value is not None:
                positive[flag] = value
        for flag, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{flag} {value!r} is not allowed: give a positive integer")
        if self.stages not in (1, 2):
            raise ValueError(f"--stages {self.stages!r} is not allowed: 2 (encoder frozen first, DiPair's "
                             "schedule) or 1 (everything trains from the start)")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss {self.loss!r} is not allowed: ce (cross-entropy on the soft labels, DiPair "
                             "eq. 1) or mse (on the logits)")
        for flag, value in (("--lr", self.lr), ("--stage2-lr", self.stage2_lr), ("--encoder-lr", self.encoder_lr)):
            if not value > 0:
                raise ValueError(f"{flag} {value!r} is not allowed: give a learning rate > 0")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"--warmup {self.warmup!r} is not allowed: give the fraction of a stage's steps "
                             "spent warming up, 0 <= WARMUP < 1")
        if self.weight_decay < 0 or not self.max_grad_norm > 0:
            raise ValueError(f"--weight-decay {self.weight_decay!r} must be >= 0 and --max-grad-norm "
                             f"{self.max_grad_norm!r} > 0")
        if not 0 <= self.human_label_weight <= 1:
            raise ValueError(f"--human-label-weight {self.human_label_weight!r} is not allowed: give a number in "
                             "[0, 1] (0 = soft labels only, 1 = human labels only where a pair has one)")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"--task {self.task!r} is not allowed: choose one of {', '.join(TASKS)}")
        if self.train_layers is not None and self.stages != 2:
            raise ValueError("--train-layers needs --stages 2: it trains the top layers in stage 2, on the lower "
                             "layers' cached outputs")
        allowed = sorted({*MAIN_METRIC.values(), *RANKING_METRICS})
        if self.select_metric is not None and self.select_metric not in allowed:
            raise ValueError(f"--select-metric {self.select_metric!r} is not allowed: choose one of {', '.join(allowed)}")
        if self.select_metric in RANKING_METRICS and not self.dev_group_col:
            raise ValueError(f"--select-metric {self.select_metric} ranks dev's candidates per query: give "
                             "--dev-group-col (e.g. qid)")

    def student_config(self, num_outputs: int = 1) -> StudentConfig:
        """The StudentConfig these flags describe (ValueError naming a bad size)."""
        return StudentConfig(
            encoder=self.encoder, encoder_layers=self.layers, shared_encoder=not self.separate_encoders,
            left_tokens=self.n, right_tokens=self.m, left_max_length=self.left_max_length,
            right_max_length=self.right_max_length, token_selection=self.token_selection, dim=self.dim,
            pooled=self.cosine_skip, cosine_skip=self.cosine_skip, head=self.head,
            head_options=head_options_for(self.head, self.head_layers, self.head_options), num_outputs=num_outputs)


def head_options_for(head: str, layers: int | None, options: dict[str, Any]) -> dict[str, Any]:
    """``--head-options`` plus what ``--head-layers L`` means for ``head``: the transformer layers of
    dipair, or L hidden layers of 128 units for the FFNN heads (dipair-ffnn, de-ffnn, li)."""
    options = dict(options)
    if layers is None:
        return options
    key, value = {"dipair": ("layers", layers), "dipair-ffnn": ("hidden", [FFNN_WIDTH] * layers),
                  "de-ffnn": ("hidden", [FFNN_WIDTH] * layers), "li": ("hidden", [FFNN_WIDTH] * layers)
                  }.get(head, (None, None))
    if key is None:
        raise ValueError(f"--head-layers {layers} is not allowed for head {head!r}: it has no layers")
    if key in options:
        raise ValueError(f"--head-layers {layers} and --head-options {key!r} both set {key!r}: give one of them")
    options[key] = value
    return options


# --------------------------------------------------------------------------- data

@dataclass
class DistillationSet:
    """The usable rows of the distillation set (P each) and what was skipped.

    soft:   (P, C) float32 teacher soft labels (C = 1: sigmoid(z / T); C = k: softmax(z / T)).
    logits: (P, C) float32 teacher logits, or None when the set has none (only ``--loss mse`` needs them).
    human:  (P,) float32 human targets as ``TeacherTask.target`` gives them, NaN where a pair has none.
    """
    lefts: list[str] = field(default_factory=list)
    rights: list[str] = field(default_factory=list)
    soft: list[list[float]] = field(default_factory=list)
    logits: list[list[float]] | None = field(default_factory=list)
    human: list[float] = field(default_factory=list)
    rows_read: int = 0
    skipped: list[DeadLetter] = field(default_factory=list)


def distillation_columns(files: Sequence[InputFile], columns: TextPairColumns, need_logits: bool) -> tuple[str, str]:
    """(soft label column, logit column) of a distillation set: ``soft_label`` / ``logit`` for
    one-output teachers, ``soft_labels`` / ``logits`` for k classes (pipeline/label.py). Checked
    in every file before anything is read."""
    problems = []
    for soft, logit in (("soft_label", "logit"), ("soft_labels", "logits")):
        required = [*columns.required(), soft] + ([logit] if need_logits else [])
        try:
            check_columns(files, required)
            return soft, logit
        except InputError as err:
            problems.append(str(err))
    raise ValueError(f"--distill is not a distillation set (a label_pairs output with soft_label and logit, or "
                     f"soft_labels and logits, columns{' -- --loss mse needs the logits' if need_logits else ''}): "
                     f"{problems[0]}")


def first_width(files: Sequence[InputFile], soft_col: str) -> int:
    """C of a k-class distillation set: the length of the first non-null ``soft_labels`` list."""
    for file in files:
        for item in read_rows(file, [soft_col]):
            if not isinstance(item, DeadLetter) and isinstance(item.fields.get(soft_col), (list, tuple)):
                return len(item.fields[soft_col])
    raise ValueError(f"--distill has no row with a {soft_col!r} list: no soft labels to learn from")


def _numbers(value: Any, column: str, width: int) -> list[float]:
    """A scalar or list cell as ``width`` finite floats (numeric strings allowed: CSV inputs);
    ValueError saying what is wrong."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) != width:
        raise ValueError(f"{column} has {len(values)} values; this set has {width} per pair")
    out = []
    for item in values:
        try:
            number = float(item.strip() if isinstance(item, str) else item)
        except (TypeError, ValueError):
            raise ValueError(f"{column} value {item!r:.60} is not a number") from None
        if isinstance(item, bool) or not math.isfinite(number):
            raise ValueError(f"{column} value {item!r:.60} is not a finite number")
        out.append(number)
    return out


def read_distillation_set(files: Sequence[InputFile], columns: TextPairColumns, soft_col: str, logit_col: str,
                          width: int, task: TeacherTask, human_col: str | None = None, limit: int | None = None
                          ) -> DistillationSet:
    """Read a distillation set; rows that cannot be trained on are skipped as dead letters.

    Reasons: the reader's (``invalid_json``, ...), the pair's (``left_empty_text``, ...),
    ``null_label`` (the soft label is absent or null) and ``invalid_label`` (a soft label outside
    [0, 1], k soft labels that do not sum to 1, a logit that is not a finite number, a human label
    the task does not allow). A null human label is not an error: the pair learns from the
    teacher alone. ``width``: C, soft labels per pair; ``task`` reads the human labels.
    """
    data = DistillationSet()
    for file in files:
        # The logit and human label columns may be absent from a file (mined pairs have no human
        # label); read only what it has, and absent values count as null.
        wanted = [*columns.required(), soft_col, *_present(file, [logit_col] + ([human_col] if human_col else []))]
        for item in read_rows(file, wanted):
            if limit is not None and data.rows_read >= limit:
                return _without_empty_logits(data)
            data.rows_read += 1
            if isinstance(item, DeadLetter):
                data.skipped.append(item)
                continue
            pair = extract_text_pair(item, columns)
            if isinstance(pair, DeadLetter):
                data.skipped.append(pair)
                continue
            fields = item.fields
            if fields.get(soft_col) is None:
                data.skipped.append(DeadLetter(dl.REASON_NULL_LABEL, f"soft label column {soft_col!r} is null or "
                                               "absent", item.source, fields))
                continue
            try:
                soft = _numbers(fields[soft_col], soft_col, width)
                if not all(0.0 <= p <= 1.0 for p in soft):
                    raise ValueError(f"{soft_col} {fields[soft_col]!r:.60} is outside [0, 1]")
                if len(soft) > 1 and abs(sum(soft) - 1.0) > SOFT_LABEL_SUM_TOLERANCE:
                    raise ValueError(f"{soft_col} {fields[soft_col]!r:.60} does not sum to 1")
                logit = None if fields.get(logit_col) is None else _numbers(fields[logit_col], logit_col, len(soft))
                human = math.nan
                if human_col and not _is_blank(fields.get(human_col)):
                    human = task.target(fields[human_col])
            except ValueError as err:
                data.skipped.append(DeadLetter(dl.REASON_INVALID_LABEL, str(err), item.source, fields))
                continue
            data.lefts.append(pair.left)
            data.rights.append(pair.right)
            data.soft.append(soft)
            if data.logits is not None:
                if logit is None:
                    data.logits = None  # some row has no logit: the set has none to train on
                else:
                    data.logits.append(logit)
            data.human.append(human)
    return _without_empty_logits(data)


def _present(file: InputFile, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that ``file`` has as columns."""
    present = []
    for name in names:
        try:
            check_columns([file], [name])
            present.append(name)
        except InputError:
            pass
    return present


def _without_empty_logits(data: DistillationSet) -> DistillationSet:
    if data.logits is not None and len(data.logits) != len(data.soft):
        data.logits = None
    return data


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def distillation_task(paths: Sequence[str]) -> TeacherTask | None:
    """The teacher's task from ``_MANIFEST.json`` of the --distill directories (label_pairs writes
    it), so the dev labels and human labels are read as the teacher's were; None when no
    directory has one. Directories labeled for different tasks are refused."""
    tasks = {}
    for path in paths:
        manifest = FileSystems.join(path.rstrip("/"), MANIFEST_FILE)
        if "*" in path or not FileSystems.exists(manifest):
            continue
        with FileSystems.open(manifest) as handle:
            data = json.loads(handle.read().decode("utf-8"))
        if data.get("format") == DISTILLATION_FORMAT and isinstance(data.get("task"), dict):
            task = TeacherTask.from_dict(data["task"])
            # The teacher's max length does not change what a label means.
            meaning = {k: v for k, v in task.to_dict().items() if k != "max_length"}
            tasks[json.dumps(meaning, sort_keys=True)] = (task, path)
    if len(tasks) > 1:
        raise ValueError(f"--distill sets were labeled for different tasks ({', '.join(p for _, p in tasks.values())}); "
                         "give --task to say how the dev labels are read")
    return next(iter(tasks.values()))[0] if tasks else None


def resolve_task(job: TrainStudentJob, num_outputs: int, from_manifest: TeacherTask | None) -> TeacherTask:
    """How dev (and human) labels are read: ``--task``, else the distillation set's manifest, else
    binary for one-output sets and classes for k-output ones. It must give ``num_outputs`` logits."""
    if job.task is not None:
        task = TeacherTask(job.task, label_range=job.label_range,
                           num_classes=num_outputs if job.task == "classes" else None)
    elif from_manifest is not None:
        task = from_manifest
    else:
        task = (TeacherTask("binary") if num_outputs == 1 else TeacherTask("classes", num_classes=num_outputs))
    if task.num_outputs != num_outputs:
        raise ValueError(f"task {task.task!r} needs {task.num_outputs} output(s) but the distillation set has "
                         f"{num_outputs} soft label(s) per pair")
    return task


@dataclass
class Examples:
    """What the student trains on: pairs and their targets (P each; see DistillationSet)."""
    pairs: Pairs
    soft: torch.Tensor                      # (P, C) float32
    logits: torch.Tensor | None             # (P, C) float32
    human: torch.Tensor                     # (P,) float32, NaN = no human label

    @classmethod
    def of(cls, data: DistillationSet, swap: bool) -> "Examples":
        """With ``swap`` every pair is added again with its texts exchanged (symmetric tasks)."""
        lefts, rights = data.lefts, data.rights
        soft = torch.tensor(data.soft, dtype=torch.float32).reshape(len(data.soft), -1)
        logits = (torch.tensor(data.logits, dtype=torch.float32).reshape(len(data.soft), -1)
                  if data.logits is not None else None)
        human = torch.tensor(data.human, dtype=torch.float32)
        if swap:
            lefts, rights = lefts + rights, rights + lefts
            soft, human = soft.repeat(2, 1), human.repeat(2)
            logits = logits.repeat(2, 1) if logits is not None else None
        return cls(Pairs.of(lefts, rights), soft, logits, human)


# --------------------------------------------------------------------------- loss

def distillation_loss(logits: torch.Tensor, soft: torch.Tensor, teacher_logits: torch.Tensor | None,
                      human: torch.Tensor, human_weight: float, loss: str = "ce") -> torch.Tensor:
    """The mean loss of a batch (a scalar, float32).

    logits (B, C) student; soft (B, C) teacher soft labels; teacher_logits (B, C) (``mse`` only);
    human (B,) human targets, NaN where a pair has none; human_weight w in [0, 1].

    Per pair: ``(1 - w_i) * distill_i + w_i * human_i`` with ``w_i = w`` where the pair has a human
    label, else 0, and

    * distill_i, ``ce`` (DiPair eq. 1): C = 1: ``-(p log sigmoid(z) + (1 - p) log(1 - sigmoid(z)))``;
      C = k: ``-sum_c p_c log softmax(z)_c``;
    * distill_i, ``mse``: ``mean_c (z_c - z_teacher_c)^2``;
    * human_i: the same cross-entropy with the human target (0/1, a grade in [0, 1], or a class).
    """
    logits = logits.float()
    if loss == "ce":
        distill = _cross_entropy(logits, soft.float())
    elif loss == "mse":
        if teacher_logits is None:
            raise ValueError("--loss mse needs the teacher's logits; this distillation set has none")
        distill = ((logits - teacher_logits.float()) ** 2).mean(dim=1)
    else:
        raise ValueError(f"loss {loss!r} is not allowed: choose one of {', '.join(LOSSES)}")
    has_human = ~torch.isnan(human)
    if human_weight == 0 or not bool(has_human.any()):
        return distill.mean()
    target = torch.where(has_human, human, torch.zeros_like(human))
    if logits.shape[1] == 1:
        human_loss = _cross_entropy(logits, target[:, None])
    else:
        human_loss = F.cross_entropy(logits, target.long(), reduction="none")
    weight = has_human.float() * human_weight
    return ((1 - weight) * distill + weight * human_loss).mean()


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C) logits and target probabilities -> (B,) cross-entropy (binary when C = 1)."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], target[:, 0], reduction="none")
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


def loss_floor(soft: torch.Tensor, human: torch.Tensor, human_weight: float) -> float:
    """The lowest mean ``ce`` loss any student can reach on these targets: the mean entropy of each
    pair's target distribution (cross-entropy is linear in the target, so mixing the losses equals
    mixing the targets). A training loss far above it means the student underfits."""
    target = soft.double()
    has_human = ~torch.isnan(human)
    if human_weight and bool(has_human.any()):
        if soft.shape[1] == 1:
            hard = torch.where(has_human, human, torch.zeros_like(human)).double()[:, None]
        else:
            hard = F.one_hot(torch.where(has_human, human, torch.zeros_like(human)).long(), soft.shape[1]).double()
        weight = (has_human.double() * human_weight)[:, None]
        target = (1 - weight) * target + weight * hard
    if target.shape[1] == 1:
        target = torch.cat([target, 1 - target], dim=1)
    entropy = -(target * torch.log(target.clamp(min=1e-300))).sum(dim=1)
    return float(entropy.mean())


# --------------------------------------------------------------------------- encoding

# --------------------------------------------------------------------------- training

@dataclass
class Stage:
    """One phase of training: which parameters learn, at which rates, for how long."""
    name: str                                   # "stage1" | "stage2" | "one_stage"
    description: str
    frozen_encoder: bool
    epochs: int
    batch_size: int
    groups: list[tuple[list[tuple[str, torch.nn.Parameter]], float]]   # (named parameters, lr)
    patience: int | None = None
    max_pairs: int | None = None
    lower_cache: bool = False        # the encoder's lower layers are frozen and read from Trainer.lower


def plan_stages(student: Student, job: TrainStudentJob) -> list[Stage]:
    """``--stages 2``: stage 1 trains projection + head with the encoder frozen (early stop on dev),
    stage 2 trains everything, the encoder at ``--encoder-lr``. ``--stages 1``: everything from the
    first step, head at ``--lr`` (it starts from random weights) and encoder at ``--encoder-lr``."""
    encoder = _named_encoder_parameters(student)
    encoder_ids = {id(p) for _, p in encoder}
    rest = [(n, p) for n, p in student.named_parameters() if id(p) not in encoder_ids]
    if job.stages == 1:
        return [Stage("one_stage", "one stage: everything trains", False, job.stage2_epochs, job.batch_size,
                      [(rest, job.lr), (encoder, job.encoder_lr)], max_pairs=job.stage2_max_pairs)]
    stage1 = Stage("stage1", "stage 1: encoder frozen", True, job.stage1_epochs, job.stage1_batch_size,
                   [(rest, job.lr)], patience=job.patience, max_pairs=job.stage1_max_pairs)
    if job.train_layers is not None:
        upper = _unique_parameters([(f"{side}.{name}", p) for side in SIDES
                                    for name, p in upper_parameters(student.encoder.side(side), job.train_layers)])
        return [stage1, Stage("stage2", f"stage 2: top {job.train_layers} encoder layers train", False,
                              job.stage2_epochs, job.batch_size, [(rest, job.stage2_lr), (upper, job.encoder_lr)],
                              max_pairs=job.stage2_max_pairs, lower_cache=True)]
    return [stage1, Stage("stage2", "stage 2: everything trains", False, job.stage2_epochs, job.batch_size,
                          [(rest, job.stage2_lr), (encoder, job.encoder_lr)], max_pairs=job.stage2_max_pairs)]


def _unique_parameters(named: list[tuple[str, torch.nn.Parameter]]) -> list[tuple[str, torch.nn.Parameter]]:
    """Each parameter once (a shared encoder is one module on both sides)."""
    seen, unique = set(), []
    for name, parameter in named:
        if id(parameter) not in seen:
            seen.add(id(parameter))
            unique.append((name, parameter))
    return unique


def _named_encoder_parameters(student: Student) -> list[tuple[str, torch.nn.Parameter]]:
    """The transformer weights, each once (a shared encoder is one module on both sides)."""
    seen, named = set(), []
    for side in SIDES:
        for name, parameter in student.encoder.side(side).transformer.named_parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                named.append((f"{side}.{name}", parameter))
    return named


@dataclass
class Trainer:
    """The run's data and state: the student, the examples, dev, where the best epoch goes."""
    student: Student
    job: TrainStudentJob
    task: TeacherTask
    device: str
    examples: Examples
    dev: Pairs
    dev_targets: np.ndarray
    cache: FrozenStates | None = None
    lower: dict[str, LowerStates] | None = None   # side -> its lower-layer cache (--train-layers)
    dev_groups: np.ndarray | None = None          # (P_dev,) dev's query of each pair (--dev-group-col)
    best_score: tuple[float, float] | None = None
    best: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_dir: str | None = None   # where the best epoch is saved (staged; committed at the end)

    def train_stage(self, stage: Stage, rng: random.Random) -> list[dict[str, Any]]:
        """Run one stage; returns its epoch records. Ends with the stage's best weights loaded."""
        job, student = self.job, self.student
        # The encoder weights this stage trains (none in stage 1, the top k with --train-layers).
        training = {id(p) for named, _ in stage.groups for _, p in named}
        for _, parameter in _named_encoder_parameters(student):
            parameter.requires_grad_(id(parameter) in training)
        if stage.lower_cache:
            rows = {side: self.lower[side].rows_of(self.examples.pairs.pools[side])[self.examples.pairs.index[side]]
                    for side in SIDES}
            forward = lambda index: self._upper_and_score({s: r[index] for s, r in rows.items()})
            lengths = (self.lower["left"].lengths.numpy()[rows["left"]]
                       + self.lower["right"].lengths.numpy()[rows["right"]]).tolist()
        elif stage.frozen_encoder:
            rows = self.cache.pair_rows(self.examples.pairs)
            forward = lambda index: self.cache.logits(student, {s: r[index] for s, r in rows.items()}, self.device)
            # Cached states all have N / M tokens: nothing to group by length.
            lengths = [0] * len(self.examples.pairs)
        else:
            tokenized = {side: student.encoder.side(side).tokenize(self.examples.pairs.pools[side]) for side in SIDES}
            forward = lambda index: self._encode_and_score(tokenized, index)
            lengths = self._lengths(tokenized)
        batches = length_grouped_batches(lengths, stage.batch_size, random.Random(0))
        steps_per_epoch = len(first_pairs(batches, stage.max_pairs) if stage.max_pairs is not None else batches)
        total_steps = steps_per_epoch * stage.epochs
        optimizer = make_adamw(stage.groups, job.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(job.warmup * total_steps), total_steps)
        scaler = grad_scaler(self.device)
        parameters = [p for named, _ in stage.groups for _, p in named]
        stage_records, stage_best, bad_epochs = [], None, 0
        stage_best_state = None
        for epoch in range(1, stage.epochs + 1):
            batches = length_grouped_batches(lengths, stage.batch_size, rng)
            if stage.max_pairs is not None:
                batches = first_pairs(batches, stage.max_pairs)
            record = {"stage": stage.name, "epoch": epoch, **self._train_epoch(
                forward, batches, optimizer, scheduler, scaler, parameters,
                f"{stage.description}, epoch {epoch}/{stage.epochs}")}
            evaluated = time.perf_counter()
            logits = self._dev_logits(stage.frozen_encoder, stage.lower_cache)
            record["dev"] = task_metrics(self.task, logits, self.dev_targets)
            if self.dev_groups is not None:
                scores, _ = student.scores_from_logits(torch.from_numpy(logits))
                record["dev"].update(rank_queries(scores.numpy(), self.dev_targets, self.dev_groups).means())
            record["dev_seconds"] = round(time.perf_counter() - evaluated, 1)
            score = selection_score(self.task, record["dev"], job.select_metric)
            if self.best_score is None or score > self.best_score:
                self.best_score, self.best, self.best_state = score, record, _copy_state(student)
                save_student(student, self.checkpoint_dir)   # the best epoch so far is always on disk
            record["best_so_far"] = self.best is record
            if stage_best is None or score > stage_best:
                stage_best, bad_epochs = score, 0
                stage_best_state = _copy_state(student)
            else:
                bad_epochs += 1
            stage_records.append(record)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in record["dev"].items())
            tqdm.write(f"{stage.description}, epoch {epoch}: train loss {record['train_loss']:.4f} "
                       f"({record['pairs_per_second']:.1f} pairs/s); dev {shown}"
                       f"{' (best, saved)' if self.best is record else ''}", file=sys.stderr)
            if stage.patience is not None and bad_epochs >= stage.patience:
                record["early_stop"] = True
                tqdm.write(f"{stage.description}: dev did not improve for {bad_epochs} epochs, stopping early",
                           file=sys.stderr)
                break
        # The next stage starts from this stage's best epoch, not its last (DiPair: stage 1 "until convergence").
        student.load_state_dict(stage_best_state)
        self.records += stage_records
        return stage_records

    def _lengths(self, tokenized: dict[str, list]) -> list[int]:
        """Per example, what length grouping sorts by: the two texts' token counts."""
        pairs = self.examples.pairs
        counts = {side: np.array([t.num_tokens for t in tokenized[side]], dtype=np.int64) for side in SIDES}
        return (counts["left"][pairs.index["left"]] + counts["right"][pairs.index["right"]]).tolist()

    def _encode_and_score(self, tokenized: dict[str, list], index: np.ndarray) -> torch.Tensor:
        """A batch of pair indices -> logits (B, C), encoding each unique text of the batch once."""
        sides, pooled = {}, {}
        for side in SIDES:
            unique, inverse = np.unique(self.examples.pairs.index[side][index], return_inverse=True)
            encoder = self.student.encoder.side(side)
            batch = encoder.collate([tokenized[side][i] for i in unique]).to(self.device)
            encoded = encoder(batch.input_ids, batch.attention_mask)
            back = torch.from_numpy(inverse.reshape(-1)).to(self.device)
            sides[side] = (encoded.tokens[back], encoded.mask[back])
            pooled[side] = encoded.pooled[back] if encoded.pooled is not None else None
        return self.student.score_tokens(*sides["left"], *sides["right"], pooled["left"], pooled["right"])

    def _upper_and_score(self, rows: dict[str, np.ndarray]) -> torch.Tensor:
        """Lower-layer cache rows of a batch (side -> (B,)) -> logits (B, C): the top k layers,
        projection and head, each unique text of the batch run once."""
        sides, pooled = {}, {}
        for side in SIDES:
            unique, inverse = np.unique(rows[side], return_inverse=True)
            states, mask = self.lower[side].batch(unique, self.device)
            encoded = upper_forward(self.student.encoder.side(side), states, mask, self.job.train_layers)
            back = torch.from_numpy(inverse.reshape(-1)).to(self.device)
            sides[side] = (encoded.tokens[back], encoded.mask[back])
            pooled[side] = encoded.pooled[back] if encoded.pooled is not None else None
        return self.student.score_tokens(*sides["left"], *sides["right"], pooled["left"], pooled["right"])

    def fit_cosine_skip(self, sample: int = COSINE_FIT_PAIRS) -> dict[str, Any]:
        """Calibrate the cosine skip to the teacher before training (heads/cosine_skip.py): the
        logistic fit of the soft labels on the pooled-embedding cosine of up to ``sample`` training
        pairs (all of them come free from the stage-1 cache; otherwise a sample is encoded)."""
        pairs, head = self.examples.pairs, self.student.head
        if self.cache is not None:
            chosen = np.arange(len(pairs))
            rows = self.cache.pair_rows(pairs)
            pooled = {side: self.cache.pooled_of(side, rows[side]) for side in SIDES}
        else:
            chosen = np.sort(np.random.default_rng(self.job.seed).permutation(len(pairs))[:sample])
            pooled = {}
            for side in SIDES:
                unique, inverse = np.unique(pairs.index[side][chosen], return_inverse=True)
                encoded = encode_pool(self.student.encoder.side(side), [pairs.pools[side][i] for i in unique],
                                      self.job.encode_batch_size, self.device)
                pooled[side] = encoded.pooled.cpu()[torch.from_numpy(inverse.reshape(-1))]
        cosine = F.cosine_similarity(pooled["left"], pooled["right"], dim=-1)
        head.fit_to(cosine, self.examples.soft[torch.from_numpy(chosen)])
        return {"pairs": len(chosen), "scale": head.scale.tolist(), "bias": head.bias.tolist()}

    def _train_epoch(self, forward: Callable[[np.ndarray], torch.Tensor], batches: list[list[int]], optimizer,
                     scheduler, scaler, parameters: list[torch.nn.Parameter], description: str) -> dict[str, float]:
        """One pass over ``batches`` -> {train_loss (mean over the epoch), seconds, pairs_per_second, lr}."""
        self.student.train()
        examples, job, device = self.examples, self.job, self.device
        progress = EpochProgress(sum(len(b) for b in batches), description, job.progress)
        for batch in batches:
            index = np.asarray(batch)
            rows = torch.from_numpy(index)
            with autocast(device):
                logits = forward(index)                                                  # (B, C)
            loss = distillation_loss(
                logits, examples.soft[rows].to(device),
                examples.logits[rows].to(device) if examples.logits is not None else None,
                examples.human[rows].to(device), job.human_label_weight, job.loss)
            optimizer_step(loss, optimizer, scheduler, scaler, parameters, job.max_grad_norm)
            progress.update(loss, len(index), scheduler.get_last_lr()[0])
        return progress.close()

    @torch.inference_mode()
    def _dev_logits(self, frozen_encoder: bool, lower_cache: bool = False) -> np.ndarray:
        """Dev logits (P, C): from the cache while the encoder is frozen, from the lower-layer cache
        while only the top layers train, else encoding the dev texts."""
        if lower_cache:
            self.student.eval()
            rows = {side: self.lower[side].rows_of(self.dev.pools[side])[self.dev.index[side]] for side in SIDES}
            # Length-sorted chunks, so each pads little.
            order = np.argsort(self.lower["left"].lengths.numpy()[rows["left"]]
                               + self.lower["right"].lengths.numpy()[rows["right"]], kind="stable")
            logits = np.zeros((len(self.dev), self.student.config.num_outputs), dtype=np.float32)
            for start in range(0, len(order), 256):
                chunk = order[start:start + 256]
                with autocast(self.device):
                    logits[chunk] = self._upper_and_score({s: r[chunk] for s, r in rows.items()}).float().cpu().numpy()
            return logits
        if not frozen_encoder:
            return pair_logits(self.student, self.dev, self.device, self.job.encode_batch_size)[0]
        self.student.eval()
        rows = self.cache.pair_rows(self.dev)
        out = []
        for start in range(0, len(self.dev), 4096):
            with autocast(self.device):
                out.append(self.cache.logits(self.student, {s: r[start:start + 4096] for s, r in rows.items()},
                                             self.device).float().cpu())
        return torch.cat(out).numpy()


def build_lower_caches(student: Student, job: TrainStudentJob, train: Pairs, dev: Pairs, device: str
                       ) -> dict[str, LowerStates]:
    """side -> the lower-layer cache of every unique training and dev text of that side. With a
    shared encoder and equal max lengths both sides read one cache (a text on both sides runs once)."""
    config = student.config
    shared = config.shared_encoder and config.left_max_length == config.right_max_length
    texts = {side: [*train.pools[side], *dev.pools[side]] for side in SIDES}
    if shared:
        both = LowerStates.build(student.encoder.left, texts["left"] + texts["right"], job.train_layers,
                                 job.encode_batch_size, device, job.cache_dir)
        return {"left": both, "right": both}
    return {side: LowerStates.build(student.encoder.side(side), texts[side], job.train_layers, job.encode_batch_size,
                                    device, job.cache_dir) for side in SIDES}


def first_pairs(batches: list[list[int]], count: int) -> list[list[int]]:
    """The leading batches holding ``count`` pairs in all (the last one cut short): an epoch of
    ``--stage2-max-pairs`` pairs, a new random sample each epoch since the batches are shuffled."""
    taken, total = [], 0
    for batch in batches:
        if total >= count:
            break
        taken.append(batch[:count - total])
        total += len(taken[-1])
    return taken


def _copy_state(student: Student) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


# --------------------------------------------------------------------------- the job

def run(job: TrainStudentJob, argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, read, train in stages, keep the best epoch, summarise."""
    return train(job, argv)[0]


@abort_output_on_failure
def train(job: TrainStudentJob, argv: list[str] | None = None) -> tuple[RunSummary, Student]:
    """``run``, also returning the trained student in memory (the best epoch's weights, as saved)."""
    job.check()
    device = pick_device(job.device)
    columns = TextPairColumns(left=job.left_col, right=job.right_col)
    distill_files = expand_inputs(job.distill, job.format)
    dev_files = expand_inputs(job.dev, job.format)
    soft_col, logit_col = distillation_columns(distill_files, columns, need_logits=job.loss == "mse")
    check_columns(dev_files, [*columns.required(), job.label_col])
    if job.human_label_col:
        _check_human_label_column(distill_files, job.human_label_col)
    num_outputs = 1 if soft_col == "soft_label" else first_width(distill_files, soft_col)
    task = resolve_task(job, num_outputs, distillation_task(job.distill))
    config = job.student_config(num_outputs)
    check_encoder(config)
    # A dry build of the head names a bad option (or a size it cannot take) before anything is read.
    build_head(config.head, dim=config.dim, left_tokens=config.left_tokens, right_tokens=config.right_tokens,
               num_outputs=num_outputs, **config.head_options)
    out = open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                      reads={"--distill": job.distill, "--dev": job.dev, "--encoder": [local_path_or_none(job.encoder)],
                             "--cache-dir": [job.cache_dir]})

    started = run_started()
    random.seed(job.seed)
    np.random.seed(job.seed)
    torch.manual_seed(job.seed)
    data = read_distillation_set(distill_files, columns, soft_col, logit_col, num_outputs, task,
                                 job.human_label_col, job.limit)
    if not data.soft:
        raise ValueError(f"--distill has no usable pairs: {data.rows_read} rows read, all skipped "
                         f"({_reasons(data.skipped) or 'no rows'})")
    if job.loss == "mse" and data.logits is None:
        raise ValueError(f"--loss mse needs the teacher's logits, but some rows of --distill have no {logit_col!r}")
    if job.dev_group_col:
        check_columns(dev_files, [job.dev_group_col])
    dev = read_labeled_pairs(dev_files, columns, job.label_col, task, job.limit, job.dev_group_col)
    if not dev.targets:
        raise ValueError(f"--dev has no usable labeled pairs: {dev.rows_read} rows read, all skipped "
                         f"({_reasons(dev.skipped) or 'no rows'})")

    try:
        student = build_student(config, seed=job.seed).to(device)
    except OSError as err:
        raise ValueError(f"cannot load encoder {job.encoder!r} (a local Hugging Face directory or a cached hub "
                         f"id, safetensors weights): {err}") from err
    examples = Examples.of(data, job.swap)
    dev_pairs = Pairs.of(dev.lefts, dev.rights)
    trainer = Trainer(student, job, task, device, examples, dev_pairs, np.array(dev.targets),
                      checkpoint_dir=out.checkpoint_dir,
                      dev_groups=np.array(dev.groups) if job.dev_group_col else None)
    stages = plan_stages(student, job)
    if stages[0].frozen_encoder:
        texts = {side: [*examples.pairs.pools[side], *dev_pairs.pools[side]] for side in SIDES}
        trainer.cache = FrozenStates(student, texts, job.encode_batch_size, device, job.cache_dir, job.progress)
    if job.train_layers is not None:
        trainer.lower = build_lower_caches(student, job, examples.pairs, dev_pairs, device)
    skip_fit = trainer.fit_cosine_skip() if config.cosine_skip else None
    rng = random.Random(job.seed)
    per_stage = {stage.name: trainer.train_stage(stage, rng) for stage in stages}
    student.load_state_dict(trainer.best_state)   # in memory as on disk: the best epoch of the run

    # The fingerprint is taken from the saved files, which also proves they load.
    saved = load_student(out.checkpoint_dir)
    dead = [*data.skipped, *dev.skipped]
    write_dead_letter_file(out.staged(), dead)
    best = trainer.best
    counts = {
        "distill_rows_read": data.rows_read,
        "distill_pairs_used": len(data.soft),
        "distill_rows_skipped": len(data.skipped),
        "distill_pairs_with_human_label": int(np.isfinite(np.array(data.human, dtype=np.float64)).sum()),
        "train_examples": len(examples.pairs),
        "left_texts": len(examples.pairs.pools["left"]),
        "right_texts": len(examples.pairs.pools["right"]),
        "dev_rows_read": dev.rows_read,
        "dev_pairs_used": len(dev.targets),
        "dev_rows_skipped": len(dev.skipped),
        "best_epoch": best["epoch"],
    }
    if trainer.cache is not None:
        counts["stage1_texts_cached"] = trainer.cache.texts
    main_metric = MAIN_METRIC[task.task]
    reconciliation = (f"distill rows read {data.rows_read:,} = used {len(data.soft):,} + skipped "
                      f"{len(data.skipped):,}; dev rows read {dev.rows_read:,} = used {len(dev.targets):,} + skipped "
                      f"{len(dev.skipped):,}; training examples {len(examples.pairs):,} = used pairs"
                      + (" x 2 (--swap)" if job.swap else ""))
    chosen = job.select_metric or main_metric
    notes = [f"best: {best['stage']} epoch {best['epoch']} by dev {chosen} = {best['dev'][chosen]:.4f}; "
             f"the checkpoint in {job.output} holds its weights (score_pairs/encode_texts --model {job.output})",
             f"device {device}, torch threads {torch.get_num_threads()}"]
    lower = None
    if trainer.lower is not None:
        caches = list({id(c): c for c in trainer.lower.values()}.values())
        lower = {"train_layers": job.train_layers, "texts": sum(len(c.rows) for c in caches),
                 "tokens": sum(len(c.flat) for c in caches), "bytes": sum(c.bytes for c in caches),
                 "seconds": round(sum(c.seconds for c in caches), 1), "reused": [c.reused for c in caches if c.reused]}
        notes.append(f"stage 2 trained the top {job.train_layers} encoder layers on cached lower-layer states: "
                     f"{lower['texts']:,} texts, {lower['tokens']:,} tokens, {lower['bytes'] / 2 ** 20:,.0f} MiB float16, "
                     f"{lower['seconds']:.0f} s" + (", reused from --cache-dir" if lower["reused"] else ""))
    if trainer.cache is not None:
        cache = trainer.cache
        notes.append(f"stage 1 encoded {cache.texts:,} unique texts once ({cache.bytes / 2 ** 20:,.0f} MiB of "
                     f"states, {cache.seconds:.0f} s" + (", reused from --cache-dir" if cache.reused else "") + ")")
    if job.limit is not None:
        notes.append(f"--limit {job.limit}: at most {job.limit} rows read from each of --distill and --dev")
    floor = loss_floor(examples.soft, examples.human, job.human_label_weight) if job.loss == "ce" else 0.0
    summary = RunSummary(
        job=JOB_NAME, arguments=list(argv if argv is not None else sys.argv[1:]), output=job.output,
        model_fingerprints={"student": saved.fingerprint}, wall_seconds=round(time.monotonic() - started, 3),
        counts=counts, dead_letters=_reasons_dict(dead), reconciliation=reconciliation, notes=notes,
        metrics={"task": task.to_dict(), "main_metric": main_metric, "loss": job.loss, "train_loss_floor": floor,
                 "stages": job.stages, "best_stage": best["stage"], "best_epoch": best["epoch"],
                 "best_dev": best["dev"], "epochs": trainer.records,
                 "stage_seconds": {name: round(sum(r["seconds"] + r["dev_seconds"] for r in records), 1)
                                   for name, records in per_stage.items()},
                 "stage1_cache": ({"texts": trainer.cache.texts, "bytes": trainer.cache.bytes,
                                   "seconds": round(trainer.cache.seconds, 1), "reused": trainer.cache.reused}
                                  if trainer.cache is not None else None),
                 "lower_cache": lower, "select_metric": job.select_metric or main_metric,
                 "cosine_skip_fit": skip_fit, "student_config": config.to_dict()})
    out.commit(summary)
    return summary, student


def check_encoder(config: StudentConfig) -> None:
    """The encoder exists and has at least K layers (its config only; the weights load later)."""
    from encoders.sources import load_config
    try:
        encoder_config = load_config(config.encoder)
    except OSError as err:
        raise ValueError(f"--encoder {config.encoder!r} cannot be loaded (a local Hugging Face directory or a "
                         f"cached hub id): {err}") from err
    available = encoder_config.num_hidden_layers
    if config.encoder_layers is not None and config.encoder_layers > available:
        raise ValueError(f"--layers {config.encoder_layers} is not allowed for {config.encoder!r}: it has "
                         f"{available} layers, choose 1..{available}")


def _check_human_label_column(files: Sequence[InputFile], column: str) -> None:
    """The human label column may be absent from some files (mined pairs have no human label) but
    must be in at least one: a misspelt name would otherwise silently train on soft labels alone."""
    if not any(_present(file, [column]) for file in files):
        raise ValueError(f"--human-label-col {column!r}: no --distill file has that column (label_pairs keeps "
                         f"it with --keep-cols {column})")


def _reasons_dict(letters: Sequence[DeadLetter]) -> dict[str, int]:
    return dict(sorted(Counter(letter.reason for letter in letters).items()))


def _reasons(letters: Sequence[DeadLetter]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in _reasons_dict(letters).items())


# The command line is declared in jobs/cli.py (light, so that --help and bad arguments answer
# before the imports above); ``main`` is kept for callers of ``jobs.train_student.main``.
main = cli.train_student
