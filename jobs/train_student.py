"""Distil a teacher into a DiPair student: two-stage training on a distillation set.

    python -m jobs.train_student --distill distill/ --dev dev.jsonl --head dipair --output student/

A training recipe that reads top to bottom (DiPair §3.7, §4.3-4.4):

1. Read the distillation set (``label_pairs`` output: texts, teacher logits, soft labels; human
   labels may be mixed in) and the labeled dev pairs. Each side's texts are kept once (a pool of
   unique texts) and pairs point into the pools.
2. Build the student (encoder with K layers, first N / M tokens, projection to D, head).
3. Stage 1 -- encoder frozen: the frozen encoder gives every text the same token states in every
   epoch, so they are computed once per unique text (``encoders.frozen_states``, optionally kept on
   disk with ``--cache-dir``) and an epoch runs only projection + head. That makes stage-1 epochs
   nearly free, so stage 1 can run to convergence: early stop on dev.
4. Stage 2 -- everything trains; the encoder at a lower learning rate. Each batch encodes its
   unique texts once.
5. Dev is evaluated after every epoch of both stages; the best epoch of the whole run is the
   checkpoint (``save_student``: what ``score_pairs --model`` and ``encode_texts --model`` load).

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

import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from encoders.checkpoint import Student, build_student, load_student
from encoders.config import SIDES, StudentConfig
from encoders.device import pick_device
from encoders.distill import LOSSES, DistillConfig, Examples, Trainer, loss_floor, plan_stages
from encoders.frozen_states import FrozenStates
from encoders.inference import Pairs
from encoders.metrics import MAIN_METRIC
from encoders.sources import DEFAULT_ENCODER
from encoders.teacher import TASKS, TeacherTask
from heads import HEAD_NAMES, build_head
from jobs import cli
from jobs.common import run_started
from pipeline.datasets import (distillation_columns, distillation_task, first_width, present_columns,
                               read_distillation_set, read_labeled_pairs)
from pipeline.dead_letters import DeadLetter
from pipeline.outputs import abort_output_on_failure, local_path_or_none, open_output, write_dead_letter_file
from pipeline.pairs import TextPairColumns
from pipeline.progress import bar_options
from pipeline.readers import InputFile, check_columns, expand_inputs
from pipeline.summary import RunSummary

JOB_NAME = "train_student"
# The heads a student can be trained with; pooled-cos has no parameters (it is the zero-training
# baseline, ``baseline`` in jobs.evaluate).
TRAINABLE_HEADS = tuple(name for name in HEAD_NAMES if name != "pooled-cos")
# FFNN width used when --head-layers sets the depth of an FFNN head (DiPair §4.2: x128x128).
FFNN_WIDTH = 128


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
                            ("--stage2-max-pairs", self.stage2_max_pairs)):
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

    def student_config(self, num_outputs: int = 1) -> StudentConfig:
        """The StudentConfig these flags describe (ValueError naming a bad size)."""
        return StudentConfig(
            encoder=self.encoder, encoder_layers=self.layers, shared_encoder=not self.separate_encoders,
            left_tokens=self.n, right_tokens=self.m, left_max_length=self.left_max_length,
            right_max_length=self.right_max_length, token_selection=self.token_selection, dim=self.dim,
            pooled=self.cosine_skip, cosine_skip=self.cosine_skip, head=self.head,
            head_options=head_options_for(self.head, self.head_layers, self.head_options), num_outputs=num_outputs)

    def distill_config(self) -> DistillConfig:
        """How these flags distil the student (encoders.distill reads this, never the job)."""
        return DistillConfig(
            stages=self.stages, loss=self.loss, human_label_weight=self.human_label_weight,
            stage1_epochs=self.stage1_epochs, patience=self.patience, stage2_epochs=self.stage2_epochs,
            stage1_max_pairs=self.stage1_max_pairs, stage2_max_pairs=self.stage2_max_pairs, lr=self.lr,
            stage2_lr=self.stage2_lr, encoder_lr=self.encoder_lr, batch_size=self.batch_size,
            stage1_batch_size=self.stage1_batch_size, encode_batch_size=self.encode_batch_size,
            warmup=self.warmup, weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm, seed=self.seed,
            bar_options=bar_options() if self.progress else None)


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
    dev = read_labeled_pairs(dev_files, columns, job.label_col, task, job.limit)
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
    distill = job.distill_config()
    trainer = Trainer(student, distill, task, device, examples, dev_pairs, np.array(dev.targets),
                      checkpoint_dir=out.checkpoint_dir)
    stages = plan_stages(student, distill)
    if stages[0].frozen_encoder:
        texts = {side: [*examples.pairs.pools[side], *dev_pairs.pools[side]] for side in SIDES}
        trainer.cache = FrozenStates(student, texts, job.encode_batch_size, device, job.cache_dir,
                                     distill.bar_options)
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
    notes = [f"best: {best['stage']} epoch {best['epoch']} by dev {main_metric} = {best['dev'][main_metric]:.4f}; "
             f"the checkpoint in {job.output} holds its weights (score_pairs/encode_texts --model {job.output})",
             f"device {device}, torch threads {torch.get_num_threads()}"]
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
    if not any(present_columns(file, [column]) for file in files):
        raise ValueError(f"--human-label-col {column!r}: no --distill file has that column (label_pairs keeps "
                         f"it with --keep-cols {column})")


def _reasons_dict(letters: Sequence[DeadLetter]) -> dict[str, int]:
    return dict(sorted(Counter(letter.reason for letter in letters).items()))


def _reasons(letters: Sequence[DeadLetter]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in _reasons_dict(letters).items())


# The command line is declared in jobs/cli.py (light, so that --help and bad arguments answer
# before the imports above); ``main`` is kept for callers of ``jobs.train_student.main``.
main = cli.train_student
