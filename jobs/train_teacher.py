"""Fine-tune a cross-encoder teacher on labeled pairs.

    python -m jobs.train_teacher --train train.jsonl --dev dev.jsonl --task binary --output teacher/

A training recipe that reads top to bottom: read and check the pairs, tokenize once, then per
epoch length-grouped batches -> AdamW with linear warmup and decay, gradient clipping -> a dev
evaluation; the best epoch's weights are the checkpoint. Plain PyTorch, no Beam: training sets
fit in memory, and one process with all the cores trains fastest.
"""
from __future__ import annotations

if __name__ == "__main__":
    # `python -m jobs.train_teacher`: the command line (jobs/cli.py, light) parses the flags before the
    # imports below run, and imports this module by name only to run the job.
    from jobs.cli import main_module
    main_module("train_teacher")

import random
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from encoders.sources import DEFAULT_ENCODER
from encoders.teacher import CrossEncoder, TeacherTask, autocast, build_teacher, load_teacher, save_teacher
from jobs import cli
from jobs.common import run_started
from jobs.metrics import MAIN_METRIC, selection_score, task_metrics
from jobs.training import EpochProgress, grad_scaler, make_adamw, optimizer_step
from pipeline import dead_letters as dl
from pipeline.dead_letters import DeadLetter
from pipeline.encode import pick_device
from pipeline.outputs import abort_output_on_failure, local_path_or_none, open_output, write_dead_letter_file
from pipeline.pairs import TextPairColumns, extract_text_pair
from pipeline.readers import InputFile, check_columns, expand_inputs, read_rows
from pipeline.summary import RunSummary

JOB_NAME = "train_teacher"
# Length grouping: examples are sorted by length within windows of this many batches, so a batch
# pads little while batch order stays random (sorting the whole set would put every long pair
# in the last steps of the epoch).
GROUP_BATCHES = 64


@dataclass(frozen=True)
class TrainTeacherJob:
    """Everything one training run needs; built once from the command line."""
    train: tuple[str, ...]
    dev: tuple[str, ...]
    output: str
    task: str = "binary"
    label_col: str = "label"
    left_col: str = "left"
    right_col: str = "right"
    base: str = DEFAULT_ENCODER
    swap: bool = False
    epochs: int = 2
    lr: float = 3e-5
    batch_size: int = 32
    max_length: int = 128
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    device: str = "auto"
    label_range: tuple[float, float] | None = None
    num_classes: int | None = None
    loss: str | None = None
    limit: int | None = None
    format: str | None = None
    overwrite: bool = False
    progress: bool = True

    def teacher_task(self) -> TeacherTask:
        return TeacherTask(task=self.task, loss=self.loss, label_range=self.label_range,
                           num_classes=self.num_classes, max_length=self.max_length)

    def check(self) -> None:
        """Bad numbers fail here, before anything is read, naming the flag and what is allowed."""
        positive_ints = {"--epochs": self.epochs, "--batch-size": self.batch_size}
        if self.limit is not None:
            positive_ints["--limit"] = self.limit
        for flag, value in positive_ints.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{flag} {value!r} is not allowed: give a positive integer")
        if not self.lr > 0:
            raise ValueError(f"--lr {self.lr!r} is not allowed: give a learning rate > 0")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"--warmup {self.warmup!r} is not allowed: give the fraction of all steps "
                             "spent warming up, 0 <= WARMUP < 1")
        if self.weight_decay < 0 or not self.max_grad_norm > 0:
            raise ValueError(f"--weight-decay {self.weight_decay!r} must be >= 0 and --max-grad-norm "
                             f"{self.max_grad_norm!r} > 0")


# --------------------------------------------------------------------------- data

@dataclass
class LabeledPairs:
    """The usable pairs of one split (lefts, rights, targets: P each) and what was skipped."""
    lefts: list[str] = field(default_factory=list)
    rights: list[str] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)   # the --group-col value of each pair, when asked for
    rows_read: int = 0
    skipped: list[DeadLetter] = field(default_factory=list)


def read_labeled_pairs(files: Sequence[InputFile], columns: TextPairColumns, label_col: str,
                       task: TeacherTask, limit: int | None = None, group_col: str | None = None) -> LabeledPairs:
    """Read labeled pairs; rows with an unusable side or label are skipped as dead letters.

    With ``group_col`` each pair's query (e.g. ``qid``) is kept, as a string, in ``groups``; a row
    without one is skipped (``null_id``): it cannot be ranked among its query's candidates.

    Reasons: the reader's (``invalid_json``, ...), the pair's (``left_empty_text``,
    ``right_null_text``, ...), ``null_label`` (absent, null or empty) and ``invalid_label``
    (not a number the task allows: see ``TeacherTask.target``). ``limit`` stops after that many rows.
    """
    pairs = LabeledPairs()
    for file in files:
        for item in read_rows(file):
            if limit is not None and pairs.rows_read >= limit:
                return pairs
            pairs.rows_read += 1
            if isinstance(item, DeadLetter):
                pairs.skipped.append(item)
                continue
            pair = extract_text_pair(item, columns)
            if isinstance(pair, DeadLetter):
                pairs.skipped.append(pair)
                continue
            label = item.fields.get(label_col)
            if label is None or (isinstance(label, str) and not label.strip()):
                state = "absent from this row" if label_col not in item.fields else "null or empty"
                pairs.skipped.append(DeadLetter(dl.REASON_NULL_LABEL, f"label column {label_col!r} is {state}",
                                                item.source, item.fields))
                continue
            try:
                target = task.target(label)
            except ValueError as err:
                pairs.skipped.append(DeadLetter(dl.REASON_INVALID_LABEL, f"label column {label_col!r}: {err}",
                                                item.source, item.fields))
                continue
            if group_col is not None:
                group = item.fields.get(group_col)
                if group is None or (isinstance(group, str) and not group.strip()) or isinstance(group, (dict, list)):
                    pairs.skipped.append(DeadLetter(dl.REASON_NULL_ID, f"group column {group_col!r} is null, empty "
                                                    "or not a scalar", item.source, item.fields))
                    continue
                pairs.groups.append(str(group))
            pairs.lefts.append(pair.left)
            pairs.rights.append(pair.right)
            pairs.targets.append(target)
    return pairs


def training_examples(pairs: LabeledPairs, swap: bool) -> tuple[list[str], list[str], list[float]]:
    """(lefts, rights, targets) to train on: each pair, and with ``swap`` each pair again with its
    texts exchanged (for symmetric tasks: the teacher should not care which text comes first)."""
    if not swap:
        return pairs.lefts, pairs.rights, pairs.targets
    return pairs.lefts + pairs.rights, pairs.rights + pairs.lefts, pairs.targets + pairs.targets


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Example indices cut into batches of similar length.

    Shuffle; sort each window of ``GROUP_BATCHES * batch_size`` examples by length; cut the
    windows into batches; shuffle the batches. Every example is in exactly one batch.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = GROUP_BATCHES * batch_size
    batches = []
    for start in range(0, len(order), window):
        group = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


# --------------------------------------------------------------------------- training

def make_optimizer(teacher: CrossEncoder, job: TrainTeacherJob) -> torch.optim.Optimizer:
    """AdamW as in BERT, one learning rate for the whole model (see jobs.training.make_adamw)."""
    return make_adamw([(list(teacher.named_parameters()), job.lr)], job.weight_decay)


def train_epoch(teacher: CrossEncoder, examples: list, targets: torch.Tensor, batches: list[list[int]],
                optimizer, scheduler, scaler, job: TrainTeacherJob, description: str) -> dict[str, float]:
    """One pass over ``batches`` -> {train_loss (mean over the epoch), pairs, seconds, pairs_per_second}."""
    teacher.train()
    device = teacher.device
    progress = EpochProgress(len(examples), description, job.progress)
    for index in batches:
        batch = {k: v.to(device) for k, v in teacher.collate([examples[i] for i in index]).items()}
        with autocast(device):
            logits = teacher(batch)                                   # (B, C)
        loss = teacher.task.loss_value(logits, targets[index].to(device))
        optimizer_step(loss, optimizer, scheduler, scaler, teacher.parameters(), job.max_grad_norm)
        progress.update(loss, len(index), scheduler.get_last_lr()[0])
    return progress.close()


@abort_output_on_failure
def run(job: TrainTeacherJob, argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, train, keep the best epoch, write the summary."""
    job.check()
    task = job.teacher_task()
    device = pick_device(job.device)
    columns = TextPairColumns(left=job.left_col, right=job.right_col)
    splits = {"train": expand_inputs(job.train, job.format), "dev": expand_inputs(job.dev, job.format)}
    for files in splits.values():
        check_columns(files, [*columns.required(), job.label_col])
    random.seed(job.seed)
    np.random.seed(job.seed)
    torch.manual_seed(job.seed)
    teacher = build_teacher(job.base, task, seed=job.seed).to(device)
    out = open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                      reads={"--train": job.train, "--dev": job.dev, "--base": [local_path_or_none(job.base)]})

    started = run_started()
    data = {name: read_labeled_pairs(files, columns, job.label_col, task, job.limit)
            for name, files in splits.items()}
    for name, pairs in data.items():
        if not pairs.targets:
            reasons = _by_reason(pairs.skipped)
            raise ValueError(f"--{name} has no usable labeled pairs: {pairs.rows_read} rows read, all skipped "
                             f"({', '.join(f'{k}: {v}' for k, v in reasons.items()) or 'no rows'})")
    lefts, rights, train_targets = training_examples(data["train"], job.swap)
    examples = teacher.tokenize(lefts, rights)
    dev = data["dev"]
    dev_examples = teacher.tokenize(dev.lefts, dev.rights)
    targets = torch.tensor(train_targets, dtype=torch.float32)

    rng = random.Random(job.seed)
    lengths = [e.num_tokens for e in examples]
    steps_per_epoch = -(-len(examples) // job.batch_size)
    total_steps = steps_per_epoch * job.epochs
    optimizer = make_optimizer(teacher, job)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(job.warmup * total_steps), total_steps)
    scaler = grad_scaler(device)
    main_metric = MAIN_METRIC[task.task]
    epochs, best, best_score = [], None, None
    for epoch in range(1, job.epochs + 1):
        batches = length_grouped_batches(lengths, job.batch_size, rng)
        record = {"epoch": epoch, **train_epoch(teacher, examples, targets, batches, optimizer, scheduler, scaler,
                                                 job, f"epoch {epoch}/{job.epochs}")}
        evaluated = time.perf_counter()
        dev_logits = teacher.predict(dev_examples, batch_size=2 * job.batch_size)
        record["dev"] = task_metrics(task, dev_logits, np.array(dev.targets))
        record["dev_seconds"] = round(time.perf_counter() - evaluated, 1)
        score = selection_score(task, record["dev"])
        if best is None or score > best_score:
            best, best_score = record, score
            save_teacher(teacher, out.checkpoint_dir)   # staged: committed as --output when training ends
        record["best_so_far"] = best is record
        epochs.append(record)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in record["dev"].items())
        tqdm.write(f"epoch {epoch}: train loss {record['train_loss']:.4f} ({record['pairs_per_second']:.1f} "
                   f"pairs/s); dev {shown}{' (best, saved)' if best is record else ''}", file=sys.stderr)

    # The fingerprint is taken from the saved files, which also proves they load.
    saved = load_teacher(out.checkpoint_dir)
    dead = [*data["train"].skipped, *dev.skipped]
    write_dead_letter_file(out.staged(), dead)
    train = data["train"]
    counts = {
        "train_rows_read": train.rows_read,
        "train_pairs_used": len(train.targets),
        "train_rows_skipped": len(train.skipped),
        "train_examples": len(examples),
        "train_examples_truncated": sum(e.truncated for e in examples),
        "dev_rows_read": dev.rows_read,
        "dev_pairs_used": len(dev.targets),
        "dev_rows_skipped": len(dev.skipped),
        "optimizer_steps": total_steps,
        "best_epoch": best["epoch"],
    }
    reconciliation = (f"train rows read {train.rows_read:,} = used {len(train.targets):,} + skipped "
                      f"{len(train.skipped):,}; dev rows read {dev.rows_read:,} = used {len(dev.targets):,} + "
                      f"skipped {len(dev.skipped):,}; training examples {len(examples):,} = used pairs"
                      + (" x 2 (--swap)" if job.swap else ""))
    notes = [f"best epoch {best['epoch']} by dev {main_metric} = {best['dev'][main_metric]:.4f}; the checkpoint in "
             f"{job.output} holds its weights",
             f"device {device}, torch threads {torch.get_num_threads()}"]
    if job.limit is not None:
        notes.append(f"--limit {job.limit}: at most {job.limit} rows read from each of --train and --dev")
    summary = RunSummary(
        job=JOB_NAME, arguments=list(argv if argv is not None else sys.argv[1:]), output=job.output,
        model_fingerprints={"teacher": saved.fingerprint}, wall_seconds=round(time.monotonic() - started, 3),
        counts=counts, dead_letters=_by_reason(dead), reconciliation=reconciliation, notes=notes,
        metrics={"task": task.to_dict(), "main_metric": main_metric, "best_epoch": best["epoch"],
                 "best_dev": best["dev"], "epochs": epochs})
    out.commit(summary)
    return summary


def _by_reason(letters: Sequence[DeadLetter]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for letter in letters:
        counts[letter.reason] = counts.get(letter.reason, 0) + 1
    return dict(sorted(counts.items()))


# The command line is declared in jobs/cli.py (light, so that --help and bad arguments answer
# before the imports above); ``main`` is kept for callers of ``jobs.train_teacher.main``.
main = cli.train_teacher
