"""Fine-tune a cross-encoder teacher on labeled pairs.

    python -m jobs.train_teacher --train train.jsonl --dev dev.jsonl --task binary --output teacher/

A training recipe that reads top to bottom: read and check the pairs, tokenize once, then per
epoch length-grouped batches -> AdamW with linear warmup and decay, gradient clipping -> a dev
evaluation; the best epoch's weights are the checkpoint. Plain PyTorch, no Beam: training sets
fit in memory, and one process with all the cores trains fastest.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from jobs.common import (ARGV_KEY, DEFAULT_ENCODER, FORMATS, PLAIN_JOB_CONTEXT, TASKS, TEACHER_LOSSES,
                         abort_output_on_failure, device_option, JobCommand, main_module, output_option,
                         overwrite_option, parse_label_range, preflight, run_job, run_options, run_started,
                         dead_letter_option, Number, refuse_non_finite, POSITIVE_INT, SEED, LEARNING_RATE, WEIGHT_DECAY,
                         MAX_GRAD_NORM, warmup_type)

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    import torch
    from encoders.teacher import CrossEncoder, TeacherTask
    from pipeline.summary import RunSummary


JOB_NAME = "train_teacher"


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
    max_dead_letter_fraction: float = 0.1

    def teacher_task(self) -> TeacherTask:
        from encoders.teacher import TeacherTask

        return TeacherTask(task=self.task, loss=self.loss, label_range=self.label_range,
                           num_classes=self.num_classes, max_length=self.max_length)

    def check(self) -> None:
        """Bad numbers fail here, before anything is read, naming the flag and what is allowed."""
        from pipeline.errors import FlagError

        positive_ints = {"--epochs": self.epochs, "--batch-size": self.batch_size}
        if self.limit is not None:
            positive_ints["--limit"] = self.limit
        for flag, value in positive_ints.items():
            if not isinstance(value, int) or value < 1:
                raise FlagError(f"{flag} {value!r} is not allowed: give a positive integer")
        from encoders.training import check_optimizer_settings
        check_optimizer_settings({"--lr": self.lr}, self.warmup, "all steps", self.weight_decay, self.max_grad_norm)


# --------------------------------------------------------------------------- training

def make_optimizer(teacher: CrossEncoder, job: TrainTeacherJob) -> torch.optim.Optimizer:
    """AdamW as in BERT, one learning rate for the whole model (see encoders.training.make_adamw)."""
    from encoders.training import make_adamw

    return make_adamw([(list(teacher.named_parameters()), job.lr)], job.weight_decay)


def train_epoch(teacher: CrossEncoder, examples: list, targets: torch.Tensor, batches: list[list[int]],
                optimizer, scheduler, scaler, job: TrainTeacherJob, description: str) -> dict[str, float]:
    """One pass over ``batches`` -> {train_loss (mean over the epoch), pairs, seconds, pairs_per_second}."""
    from encoders.device import autocast
    from encoders.training import EpochProgress, optimizer_step
    from pipeline.progress import bar_options

    teacher.train()
    device = teacher.device
    progress = EpochProgress(len(examples), description, bar_options() if job.progress else None)
    for index in batches:
        batch = {k: v.to(device) for k, v in teacher.collate([examples[i] for i in index]).items()}
        with autocast(device):
            logits = teacher(batch)                                   # (B, C)
        loss = teacher.task.loss_value(logits, targets[index].to(device))
        optimizer_step(loss, optimizer, scheduler, scaler, teacher.parameters(), job.max_grad_norm)
        progress.update(loss, len(index), scheduler.get_last_lr()[0])
    return progress.close()


# --------------------------------------------------------------------------- the command line

@click.command("train-teacher", cls=JobCommand, context_settings=PLAIN_JOB_CONTEXT)
@click.option("--train", multiple=True, required=True, metavar="PATH",
              help="Labeled training pairs: a path, glob or Beam filesystem path; repeat for more. Format from "
                   "the extension: .parquet, .jsonl, .csv, .tsv, the last three optionally .zst.")
@click.option("--dev", multiple=True, required=True, metavar="PATH",
              help="Labeled dev pairs, evaluated after every epoch; the best epoch is kept.")
@click.option("--format", type=click.Choice(FORMATS), default=None,
              help="Read every input as this format, whatever its extension.")
@click.option("--left-col", default="left", show_default=True, help="Column holding the left text.")
@click.option("--right-col", default="right", show_default=True, help="Column holding the right text.")
@click.option("--label-col", default="label", show_default=True, help="Column holding the label.")
@click.option("--task", type=click.Choice(TASKS), default="binary", show_default=True,
              help="binary: labels 0/1, BCE on the logit. graded: numeric labels in --label-range, mapped to "
                   "[0, 1] (BCE or MSE). classes: labels 0..K-1, softmax cross-entropy.")
@click.option("--label-range", default=None, metavar="LOW,HIGH",
              help="graded only: the label range mapped to [0, 1], e.g. 0,5 for STS-B. Labels outside are skipped.")
@click.option("--num-classes", type=Number(int, 2),
              default=None, metavar="K", help="classes only: the number of classes.")
@click.option("--loss", type=click.Choice(TEACHER_LOSSES), default=None,
              help="bce (binary, graded; the default), mse on the sigmoid (graded), ce (classes; the default).")
@click.option("--base", default=DEFAULT_ENCODER, show_default=True, metavar="MODEL",
              help="Pretrained encoder to fine-tune: a local Hugging Face directory or hub id (offline: from the "
                   "local cache). The default is the packaged all-MiniLM-L6-v2, no download.")
@click.option("--swap", is_flag=True,
              help="Also train on every pair with left and right exchanged (symmetric tasks, e.g. duplicate "
                   "questions): doubles the training examples.")
@click.option("--epochs", type=POSITIVE_INT, default=2, show_default=True, help="Passes over the training pairs.")
@click.option("--lr", type=LEARNING_RATE, default=3e-5, show_default=True, help="Peak AdamW learning rate.")
@click.option("--batch-size", type=POSITIVE_INT, default=32, show_default=True,
              help="Pairs per optimizer step (batches are grouped by length, so padding stays small).")
@click.option("--max-length", type=Number(int, 4, allowed="give an integer of at least 4"),
              default=128, show_default=True,
              help="Tokens per pair, both texts and special tokens included; longer pairs lose tokens from the "
                   "longer text. Stored in the checkpoint; label_pairs uses it.")
@click.option("--warmup", type=warmup_type("all steps"), default=0.1, show_default=True,
              help="Fraction of all steps over which the learning rate rises linearly from 0; it then decays "
                   "linearly to 0.")
@click.option("--weight-decay", type=WEIGHT_DECAY, default=0.01, show_default=True, help="AdamW weight decay.")
@click.option("--max-grad-norm", type=MAX_GRAD_NORM, default=1.0, show_default=True, help="Gradient clipping norm.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds the head initialisation, dropout and batch order.")
@device_option("Where to train; auto = CUDA when present (with mixed precision).")
@click.option("--limit", type=POSITIVE_INT, default=None, metavar="N",
              help="Read at most N rows from each of --train and --dev (quick runs).")
@output_option("Checkpoint directory to create: config.json, model.safetensors, tokenizer, teacher.json, "
               "_dead_letter/, _SUMMARY.json, _SUCCESS (the checkpoint is committed when training ends).")
@overwrite_option
@dead_letter_option
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar with the loss and pairs/s.")
@run_options
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool, progress: bool, **flags) -> None:
    """Fine-tune a cross-encoder teacher on labeled pairs and save it for label_pairs."""
    def go() -> str:
        label_range = parse_label_range(flags.pop("label_range"))
        preflight(ctx, "train_teacher", flags)
        job = TrainTeacherJob(train=tuple(flags.pop("train")), dev=tuple(flags.pop("dev")),
                              label_range=label_range, progress=progress and not quiet, **flags)
        summary = run(job, ctx.meta[ARGV_KEY])
        lines = [summary.table()]
        for record in summary.metrics["epochs"]:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in record["dev"].items())
            lines.append(f"  epoch {record['epoch']}: train loss {record['train_loss']:.4f}, dev {shown}")
        return "\n".join(lines)
    run_job(go, name="train_teacher", quiet=quiet, verbose=verbose)


@abort_output_on_failure
def run(job: TrainTeacherJob, argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, train, keep the best epoch, write the summary."""
    from pipeline.provenance import table_metadata
    import numpy as np
    import torch
    from encoders.device import grad_scaler, pick_device
    from encoders.metrics import MAIN_METRIC, selection_score, task_metrics
    from encoders.teacher import build_teacher, load_teacher, save_teacher
    from encoders.training import length_grouped_batches
    from pipeline.datasets import read_labeled_pairs, training_examples
    from pipeline.dead_letters import check_dead_letter_limit, count_reasons
    from pipeline.output.commit import open_output, write_dead_letter_file
    from pipeline.output.paths import local_path_or_none
    from pipeline.pairs import PairColumns
    from pipeline.readers import InputError, check_columns, expand_inputs
    from pipeline.summary import RunSummary
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    job.check()
    task = job.teacher_task()
    device = pick_device(job.device)
    columns = PairColumns(left=job.left_col, right=job.right_col)
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
    # Before the training, the long part: a bad input is known once it has been read.
    skipped = [letter for pairs in data.values() for letter in pairs.skipped]
    check_dead_letter_limit(sum(pairs.rows_read for pairs in data.values()), len(skipped), count_reasons(skipped),
                            job.max_dead_letter_fraction, "; ".join(
                                f"{name} rows read {pairs.rows_read:,} = used {len(pairs.targets):,} + skipped "
                                f"{len(pairs.skipped):,}" for name, pairs in data.items()))
    for name, pairs in data.items():
        if not pairs.targets:
            reasons = count_reasons(pairs.skipped)
            raise InputError(f"--{name} has no usable labeled pairs: {pairs.rows_read} rows read, all skipped "
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
            refuse_non_finite(teacher)                  # a NaN model is never saved, let alone committed
            save_teacher(teacher, out.checkpoint_dir)   # staged: committed as --output when training ends
        record["best_so_far"] = best is record
        epochs.append(record)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in record["dev"].items())
        tqdm.write(f"epoch {epoch}: train loss {record['train_loss']:.4f} ({record['pairs_per_second']:.1f} "
                   f"pairs/s); dev {shown}{' (best, saved)' if best is record else ''}", file=sys.stderr)

    # The fingerprint is taken from the saved files, which also proves they load.
    saved = load_teacher(out.checkpoint_dir)
    dead = [*data["train"].skipped, *dev.skipped]
    write_dead_letter_file(out.staged(), dead, table_metadata(JOB_NAME, {"teacher": (saved.fingerprint, job.output)}))
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
        counts=counts, dead_letters=count_reasons(dead), reconciliation=reconciliation, notes=notes,
        metrics={"task": task.to_dict(), "main_metric": main_metric, "best_epoch": best["epoch"],
                 "best_dev": best["dev"], "epochs": epochs})
    out.commit(summary)
    return summary


if __name__ == "__main__":  # python -m jobs.train_teacher
    main_module("train_teacher")
