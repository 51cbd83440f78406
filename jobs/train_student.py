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
   unique texts once. ``--train-layers k``: only the top k encoder layers train, on the frozen
   lower layers' outputs cached once per unique text (``encoders/layer_cache.py``).
5. Dev is evaluated after every epoch of both stages (``--dev-group-col``: also MRR@10, MAP, nDCG@10
   per query; ``--select-metric`` chooses); the best epoch of the whole run is the checkpoint
   (``save_student``: what ``score_pairs --model`` and ``encode_texts --model`` load).

``--stages 1`` trains everything from the first step instead (no frozen stage), for the ablation.

The trainer, the loss and the stage plan are ``encoders/distill.py``; this recipe reads the data
(``pipeline/datasets.py``), builds the student and runs them. Its flags are the fields of
:class:`TrainStudentJob`, declared once by concern: the data below, the student
(``encoders/config.py`` StudentSettings), the distillation (``encoders/distill_config.py``), the
output and the run (``pipeline/settings.py``); ``jobs/options.py`` makes them click options.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from encoders.choices import DEVICES, TASKS, TRAINABLE_HEADS
from encoders.config import StudentSettings
from encoders.distill_config import DistillConfig
from encoders.errors import FlagError
from encoders.settings import POSITIVE_INT, check_settings, section, setting
from jobs.common import abort_output_on_failure, job_command, main_module, refuse_non_finite, run_started
from pipeline.settings import LITERAL_OUTPUT, Output, PairData, TrainingRun, parse_label_range

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    from encoders.checkpoint import Student
    from pipeline.summary import RunSummary

JOB_NAME = "train_student"


@dataclass(frozen=True, kw_only=True)
class StudentData:
    """What a student learns from: the distillation set, dev, and how their labels are read."""
    distill: tuple[str, ...] = setting(
        (), "The distillation set: a label_pairs output directory (or its files, a glob, a Beam filesystem path); "
            "repeat for more. Columns left, right, soft_label and logit (soft_labels and logits for k-class "
            "teachers).", multiple=True, required=True, metavar="PATH")
    dev: tuple[str, ...] = setting(
        (), "Labeled dev pairs (--label-col), evaluated after every epoch; the best epoch is kept.",
        multiple=True, required=True, metavar="PATH")
    task: str | None = setting(
        None, "How dev (and human) labels are read. Default: the teacher's task from the distillation set's "
              "_MANIFEST.json; without one, binary (classes for k-class soft labels).", choices=TASKS)
    label_range: tuple[float, float] | None = setting(
        None, "graded only: the label range mapped to [0, 1], e.g. 0,5 for STS-B.", parse=parse_label_range,
        metavar="LOW,HIGH")
    human_label_col: str | None = setting(
        None, "A column of the distillation set with human labels (e.g. label_pairs --keep-cols label). Pairs with "
              "one learn from both; pairs without (mined pairs) from the teacher alone.", metavar="COL")
    dev_group_col: str | None = setting(
        None, "Dev's query column (e.g. qid): every epoch also reports MRR@10, MAP and nDCG@10 over dev's queries.",
        metavar="COL")
    swap: bool = setting(False, "Also train on every pair with left and right exchanged (symmetric tasks): doubles "
                                "the examples.", switch=True)
    teacher: str | None = setting(
        None, "The cross-encoder teacher checkpoint (train_teacher's output) for --virt-weight; its tokenizer must be "
              "the student encoder's. Unused while --virt-weight is 0.", metavar="DIR")
    cache_dir: str | None = setting(
        None, "Keep stage 1's frozen encoder states here (one safetensors file per encoder, length and text set) "
              "and reuse them: runs that differ only in the head encode the texts once.", metavar="DIR")
    limit: int | None = setting(None, "Read at most N rows from each of --distill and --dev (quick runs).",
                                range=POSITIVE_INT, metavar="N")


@dataclass(frozen=True, kw_only=True)
class TrainStudentJob(TrainingRun, Output, DistillConfig, StudentSettings, PairData, StudentData):
    """Everything one training run needs, every field a flag: the concerns it inherits (--help
    lists the last base's flags first)."""
    output: str = setting(help="Student checkpoint directory to create: config.json, student.safetensors, encoder/, "
                               "_dead_letter/, _SUMMARY.json, _SUCCESS (the checkpoint is committed when training "
                               "ends)." + LITERAL_OUTPUT, metavar="DIR", required=True)
    label_col: str = setting("label", "Column holding the dev label.")
    device: str = setting("auto", "Where to train; auto = CUDA when present (with mixed precision).",
                          choices=DEVICES)

    def check(self) -> None:
        """Bad values fail here, before anything is read, naming the flag and what is allowed."""
        if self.head == "pooled-cos":
            raise FlagError(f"--head pooled-cos is not allowed: choose one of {', '.join(TRAINABLE_HEADS)} "
                             "(pooled-cos has no parameters: it is the zero-training baseline, `--model baseline` "
                             "in jobs.evaluate)")
        check_settings(self)
        self.distill_config().check(ranked_dev=bool(self.dev_group_col))
        if self.virt_weight and self.teacher is None:
            raise FlagError(f"--virt-weight {self.virt_weight} needs --teacher DIR: the cross-encoder whose attention "
                            "maps the student learns (VIRT)")

    def distill_config(self) -> DistillConfig:
        """How these flags distil the student (encoders.distill reads this, never the job)."""
        return section(DistillConfig, self)


# --------------------------------------------------------------------------- the command line

def report(job: TrainStudentJob, argv: list[str]) -> str:
    """Train; the summary with each epoch's line."""
    return run(job, argv).training_table()


main = job_command("train-student", TrainStudentJob, report,
                   "Distil a teacher into a DiPair student (two-stage training) and save the checkpoint.")


# --------------------------------------------------------------------------- the job

def run(job: TrainStudentJob, argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, read, train in stages, keep the best epoch, summarise."""
    return train(job, argv)[0]


@abort_output_on_failure
def train(job: TrainStudentJob, argv: list[str] | None = None) -> tuple[RunSummary, Student]:
    """``run``, also returning the trained student in memory (the best epoch's weights, as saved)."""
    from pipeline.errors import ModelError
    from pipeline.provenance import table_metadata
    import numpy as np
    import torch
    from encoders.checkpoint import build_head, build_student, load_student
    from encoders.config import SIDES
    from encoders.device import pick_device
    from encoders.distill import Examples, Trainer, check_encoder, loss_floor, plan_stages, resolve_task
    from encoders.frozen_states import FrozenStates
    from encoders.training import seed_everything
    from encoders.inference import Pairs
    from encoders.metrics import MAIN_METRIC
    from pipeline.datasets import (check_human_label_column, distillation_columns, distillation_task, first_width,
                                   read_distillation_set, read_labeled_pairs)
    from pipeline.dead_letters import check_dead_letter_limit, count_reasons, describe_reasons
    from pipeline.output.commit import open_output, write_dead_letter_file
    from pipeline.output.paths import local_path_or_none
    from pipeline.pairs import PairColumns
    from pipeline.readers import InputError, check_columns, expand_inputs
    from pipeline.summary import RunSummary

    job.check()
    device = pick_device(job.device)
    columns = PairColumns(left=job.left_col, right=job.right_col)
    distill_files = expand_inputs(job.distill, job.format)
    dev_files = expand_inputs(job.dev, job.format)
    soft_col, logit_col = distillation_columns(distill_files, columns, need_logits=job.loss == "mse")
    check_columns(dev_files, [*columns.required(), job.label_col])
    if job.human_label_col:
        check_human_label_column(distill_files, job.human_label_col)
    num_outputs = 1 if soft_col == "soft_label" else first_width(distill_files, soft_col)
    task = resolve_task(job.task, job.label_range, num_outputs, distillation_task(job.distill))
    config = job.student_config(num_outputs)
    check_encoder(config)
    virt_teacher = None
    if job.virt_weight:
        from encoders.sources import load_pretrained_tokenizer
        from encoders.virt import load_virt_teacher
        virt_teacher = load_virt_teacher(job.teacher, job.virt_weight, load_pretrained_tokenizer(config.encoder))
    # A dry build of the head names a bad option (or a size it cannot take) before anything is read.
    build_head(config.head, dim=config.dim, left_tokens=config.left_tokens, right_tokens=config.right_tokens,
               num_outputs=num_outputs, **config.head_options)
    out = open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                      reads={"--distill": job.distill, "--dev": job.dev, "--encoder": [local_path_or_none(job.encoder)],
                             "--cache-dir": [job.cache_dir]})

    started = run_started()
    seed_everything(job.seed)
    data = read_distillation_set(distill_files, columns, soft_col, logit_col, num_outputs, task,
                                 job.human_label_col, job.limit)
    if job.dev_group_col:
        check_columns(dev_files, [job.dev_group_col])
    dev = read_labeled_pairs(dev_files, columns, job.label_col, task, job.limit, job.dev_group_col)
    # Both inputs are read before the training, the long part: a bad input is known now.
    skipped = [*data.skipped, *dev.skipped]
    check_dead_letter_limit(data.rows_read + dev.rows_read, len(skipped), count_reasons(skipped),
                            job.max_dead_letter_fraction,
                            f"distill rows read {data.rows_read:,} = used {len(data.soft):,} + skipped "
                            f"{len(data.skipped):,}; dev rows read {dev.rows_read:,} = used {len(dev.targets):,} + "
                            f"skipped {len(dev.skipped):,}")
    if not data.soft:
        raise InputError(f"--distill has no usable pairs: {data.rows_read} rows read, all skipped "
                         f"({describe_reasons(data.skipped) or 'no rows'})")
    if job.loss == "mse" and data.logits is None:
        raise InputError(f"--loss mse needs the teacher's logits, but some rows of --distill have no {logit_col!r}")
    if not dev.targets:
        raise InputError(f"--dev has no usable labeled pairs: {dev.rows_read} rows read, all skipped "
                         f"({describe_reasons(dev.skipped) or 'no rows'})")

    try:
        student = build_student(config, seed=job.seed).to(device)
    except OSError as err:
        raise ModelError(f"cannot load encoder {job.encoder!r} (a local Hugging Face directory or a cached hub "
                         f"id, safetensors weights): {err}") from err
    examples = Examples.of(data, job.swap)
    dev_pairs = Pairs.of(dev.lefts, dev.rights)
    distill = job.distill_config()
    trainer = Trainer(student, distill, task, device, examples, dev_pairs, np.array(dev.targets),
                      checkpoint_dir=out.checkpoint_dir, dev_groups=np.array(dev.groups) if job.dev_group_col else None,
                      bars=job.bars())
    stages = plan_stages(student, distill)
    if virt_teacher is not None:
        from encoders.layer_cache import encoder_layers
        from encoders.virt import Virt
        layers = encoder_layers(student.encoder.left)
        trained = range(len(layers) - (job.train_layers or len(layers)), len(layers))
        trainer.virt = Virt(virt_teacher.to(device), job.virt_weight, layers, trained)
    if stages[0].frozen_encoder:
        texts = {side: [*examples.pairs.pools[side], *dev_pairs.pools[side]] for side in SIDES}
        trainer.cache = FrozenStates(student, texts, job.encode_batch_size, device, job.cache_dir, trainer.bars)
    if job.train_layers is not None:
        trainer.build_lower_caches(job.cache_dir)
    skip_fit = trainer.fit_cosine_skip() if config.cosine_skip else None
    rng = random.Random(job.seed)
    per_stage = {stage.name: trainer.train_stage(stage, rng) for stage in stages}
    student.load_state_dict(trainer.best_state)   # in memory as on disk: the best epoch of the run
    refuse_non_finite(student)

    # The fingerprint is taken from the saved files, which also proves they load.
    saved = load_student(out.checkpoint_dir)
    dead = [*data.skipped, *dev.skipped]
    write_dead_letter_file(out.staged(), dead, table_metadata(JOB_NAME, {"student": (saved.fingerprint, job.output)}))
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
    caches, cache_notes = trainer.cache_report()
    notes = [f"best: {best['stage']} epoch {best['epoch']} by dev {chosen} = {best['dev'][chosen]:.4f}; "
             f"the checkpoint in {job.output} holds its weights (score_pairs/encode_texts --model {job.output})",
             f"device {device}, torch threads {torch.get_num_threads()}", *cache_notes]
    virt = None
    if trainer.virt is not None:
        speed = [r["pairs_per_second"] for r in trainer.records if "virt_loss" in r]
        virt = {**trainer.virt.describe(), "teacher": job.teacher, "teacher_fingerprint": virt_teacher.fingerprint,
                "pairs_per_second": speed}
        notes.append(f"VIRT alpha {job.virt_weight}: student layer -> teacher layer {virt['layers']}, heads "
                     f"{virt['heads']}; the encoder-training epochs ran at {', '.join(f'{v:.1f}' for v in speed)} "
                     "pairs/s (teacher forward included)")
    if job.limit is not None:
        notes.append(f"--limit {job.limit}: at most {job.limit} rows read from each of --distill and --dev")
    floor = loss_floor(examples.soft, examples.human, job.human_label_weight) if job.loss == "ce" else 0.0
    summary = RunSummary(
        job=JOB_NAME, arguments=list(argv if argv is not None else sys.argv[1:]), output=job.output,
        model_fingerprints={"student": saved.fingerprint}, wall_seconds=round(time.monotonic() - started, 3),
        counts=counts, dead_letters=count_reasons(dead), reconciliation=reconciliation, notes=notes,
        metrics={"task": task.to_dict(), "main_metric": main_metric, "loss": job.loss, "train_loss_floor": floor,
                 "stages": job.stages, "best_stage": best["stage"], "best_epoch": best["epoch"],
                 "best_dev": best["dev"], "epochs": trainer.records,
                 "stage_seconds": {name: round(sum(r["seconds"] + r["dev_seconds"] for r in records), 1)
                                   for name, records in per_stage.items()},
                 **caches, "select_metric": chosen, "virt": virt, "cosine_skip_fit": skip_fit, "student_config": config.to_dict()})
    out.commit(summary)
    return summary, student


if __name__ == "__main__":  # python -m jobs.train_student
    main_module("train_student")
