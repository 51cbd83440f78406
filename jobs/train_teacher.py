"""Fine-tune a cross-encoder teacher on labeled pairs.

    python -m jobs.train_teacher --train train.jsonl --dev dev.jsonl --task binary --output teacher/

A training recipe that reads top to bottom: read and check the pairs, tokenize once, then train
(``encoders/teacher_training.py``: per epoch length-grouped batches -> AdamW with linear warmup and
decay, gradient clipping -> a dev evaluation); the best epoch's weights are the checkpoint. Plain
PyTorch, no Beam: training sets fit in memory, and one process with all the cores trains fastest.
Its flags are the fields of :class:`TrainTeacherJob`, declared once by concern: the data below, the
training (``encoders/teacher_config.py``), the output and the run (``pipeline/settings.py``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from encoders.choices import DEVICES, TASKS, TEACHER_LOSSES
from encoders.settings import POSITIVE_INT, Range, check_settings, section, setting
from encoders.teacher_config import TeacherTraining
from jobs.common import abort_output_on_failure, job_command, main_module, refuse_non_finite, run_started
from pipeline.settings import LITERAL_OUTPUT, Output, PairData, TrainingRun, parse_label_range

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    from encoders.teacher import TeacherTask
    from pipeline.summary import RunSummary


JOB_NAME = "train_teacher"


@dataclass(frozen=True, kw_only=True)
class TeacherData:
    """The labeled pairs a teacher learns from and is chosen on, and how their labels are read."""
    train: tuple[str, ...] = setting(
        (), "Labeled training pairs: a path, glob or Beam filesystem path; repeat for more. Format from the "
            "extension: .parquet, .jsonl, .csv, .tsv, the last three optionally .zst.",
        multiple=True, required=True, metavar="PATH")
    dev: tuple[str, ...] = setting((), "Labeled dev pairs, evaluated after every epoch; the best epoch is kept.",
                                   multiple=True, required=True, metavar="PATH")
    task: str = setting("binary", "binary: labels 0/1, BCE on the logit. graded: numeric labels in --label-range, "
                                  "mapped to [0, 1] (BCE or MSE). classes: labels 0..K-1, softmax cross-entropy.",
                        choices=TASKS)
    label_range: tuple[float, float] | None = setting(
        None, "graded only: the label range mapped to [0, 1], e.g. 0,5 for STS-B. Labels outside are skipped.",
        parse=parse_label_range, metavar="LOW,HIGH")
    num_classes: int | None = setting(None, "classes only: the number of classes.", range=Range(int, 2), metavar="K")
    loss: str | None = setting(None, "bce (binary, graded; the default), mse on the sigmoid (graded), ce (classes; "
                                     "the default).", choices=TEACHER_LOSSES)
    limit: int | None = setting(None, "Read at most N rows from each of --train and --dev (quick runs).",
                                range=POSITIVE_INT, metavar="N")


@dataclass(frozen=True, kw_only=True)
class TrainTeacherJob(TrainingRun, Output, TeacherTraining, PairData, TeacherData):
    """Everything one training run needs, every field a flag: the concerns it inherits (--help
    lists the last base's flags first)."""
    output: str = setting(help="Checkpoint directory to create: config.json, model.safetensors, tokenizer, "
                               "teacher.json, _dead_letter/, _SUMMARY.json, _SUCCESS (the checkpoint is committed "
                               "when training ends)." + LITERAL_OUTPUT, metavar="DIR", required=True)
    device: str = setting("auto", "Where to train; auto = CUDA when present (with mixed precision).",
                          choices=DEVICES)

    def teacher_task(self) -> TeacherTask:
        from encoders.teacher import TeacherTask

        return TeacherTask(task=self.task, loss=self.loss, label_range=self.label_range,
                           num_classes=self.num_classes, max_length=self.max_length)

    def check(self) -> None:
        """Bad values fail here, before anything is read, naming the flag and what is allowed."""
        check_settings(self)


# --------------------------------------------------------------------------- the command line

def report(job: TrainTeacherJob, argv: list[str]) -> str:
    """Train; the summary with each epoch's line."""
    return run(job, argv).training_table()


main = job_command("train-teacher", TrainTeacherJob, report,
                   "Fine-tune a cross-encoder teacher on labeled pairs and save it for label_pairs.")


# --------------------------------------------------------------------------- the job

@abort_output_on_failure
def run(job: TrainTeacherJob, argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, train, keep the best epoch, write the summary."""
    from pipeline.provenance import table_metadata
    import numpy as np
    import torch
    from encoders.device import pick_device
    from encoders.metrics import MAIN_METRIC
    from encoders.teacher import build_teacher, load_teacher, save_teacher
    from encoders.teacher_training import fit_teacher
    from encoders.training import seed_everything
    from pipeline.datasets import read_labeled_pairs, training_examples
    from pipeline.dead_letters import check_dead_letter_limit, count_reasons
    from pipeline.output.commit import open_output, write_dead_letter_file
    from pipeline.output.paths import local_path_or_none
    from pipeline.pairs import PairColumns
    from pipeline.readers import InputError, check_columns, expand_inputs
    from pipeline.summary import RunSummary

    job.check()
    task = job.teacher_task()
    device = pick_device(job.device)
    columns = PairColumns(left=job.left_col, right=job.right_col)
    splits = {"train": expand_inputs(job.train, job.format), "dev": expand_inputs(job.dev, job.format)}
    for files in splits.values():
        check_columns(files, [*columns.required(), job.label_col])
    seed_everything(job.seed)
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

    def save_best() -> None:
        refuse_non_finite(teacher)                  # a NaN model is never saved, let alone committed
        save_teacher(teacher, out.checkpoint_dir)   # staged: committed as --output when training ends

    epochs, best, total_steps = fit_teacher(teacher, examples, targets, dev_examples, np.array(dev.targets),
                                            section(TeacherTraining, job), save_best, job.bars())
    main_metric = MAIN_METRIC[task.task]

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
