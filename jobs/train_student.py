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
(``pipeline/datasets.py``), builds the student and a ``DistillConfig`` from the flags, and runs them.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from jobs.common import (ARGV_KEY, DEFAULT_ENCODER, FORMATS, PLAIN_JOB_CONTEXT, STUDENT_HEADS, STUDENT_LOSSES, TASKS,
                         abort_output_on_failure, device_option, JobCommand, main_module, output_option,
                         overwrite_option, parse_head_options, parse_label_range, preflight, run_job, run_options,
                         run_started, dead_letter_option, Number, refuse_non_finite, POSITIVE_INT, SEED, LEARNING_RATE,
                         WEIGHT_DECAY, MAX_GRAD_NORM, warmup_type)

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    from encoders.checkpoint import Student
    from encoders.config import StudentConfig
    from encoders.distill import DistillConfig
    from pipeline.summary import RunSummary

JOB_NAME = "train_student"
# The heads a student can be trained with (encoders.distill.TRAINABLE_HEADS); pooled-cos has no
# parameters (it is the zero-training baseline, ``baseline`` in jobs.evaluate).
TRAINABLE_HEADS = STUDENT_HEADS
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
    train_layers: int | None = None     # stage 2 trains only the top k encoder layers, on cached lower states
    dev_group_col: str | None = None    # dev's query column: ranking metrics per epoch
    select_metric: str | None = None    # the dev metric that picks the best epoch (default: the task's)
    teacher: str | None = None          # the cross-encoder VIRT reads attention maps from
    virt_weight: float = 0.0            # alpha of the VIRT loss where the encoder trains (0: off)
    limit: int | None = None
    format: str | None = None
    overwrite: bool = False
    progress: bool = True
    max_dead_letter_fraction: float = 0.1

    def check(self) -> None:
        """Bad values fail here, before anything is read, naming the flag and what is allowed."""
        from pipeline.errors import FlagError

        if self.head not in TRAINABLE_HEADS:
            extra = (" (pooled-cos has no parameters: it is the zero-training baseline, `--model baseline` "
                     "in jobs.evaluate)") if self.head == "pooled-cos" else ""
            raise FlagError(f"--head {self.head!r} is not allowed: choose one of {', '.join(TRAINABLE_HEADS)}{extra}")
        positive = {"--n": self.n, "--m": self.m, "--dim": self.dim, "--stage1-epochs": self.stage1_epochs,
                    "--batch-size": self.batch_size,
                    "--stage1-batch-size": self.stage1_batch_size, "--encode-batch-size": self.encode_batch_size,
                    "--patience": self.patience}
        for flag, value in (("--layers", self.layers), ("--head-layers", self.head_layers),
                            ("--limit", self.limit), ("--stage1-max-pairs", self.stage1_max_pairs),
                            ("--stage2-max-pairs", self.stage2_max_pairs), ("--train-layers", self.train_layers)):
            if value is not None:
                positive[flag] = value
        for flag, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FlagError(f"{flag} {value!r} is not allowed: give a positive integer")
        if not isinstance(self.stage2_epochs, int) or isinstance(self.stage2_epochs, bool) or self.stage2_epochs < 0:
            raise FlagError(f"--stage2-epochs {self.stage2_epochs!r} is not allowed: give an integer >= 0 "
                            "(0: stage 1 only, the encoder stays frozen)")
        if self.task is not None and self.task not in TASKS:
            raise FlagError(f"--task {self.task!r} is not allowed: choose one of {', '.join(TASKS)}")
        self.distill_config().check(ranked_dev=bool(self.dev_group_col))   # stages, loss, rates, stage 2, selection
        if self.virt_weight and self.teacher is None:
            raise FlagError(f"--virt-weight {self.virt_weight} needs --teacher DIR: the cross-encoder whose attention "
                            "maps the student learns (VIRT)")

    def student_config(self, num_outputs: int = 1) -> StudentConfig:
        """The StudentConfig these flags describe (ValueError naming a bad size)."""
        from encoders.config import StudentConfig

        return StudentConfig(
            encoder=self.encoder, encoder_layers=self.layers, shared_encoder=not self.separate_encoders,
            left_tokens=self.n, right_tokens=self.m, left_max_length=self.left_max_length,
            right_max_length=self.right_max_length, token_selection=self.token_selection, dim=self.dim,
            pooled=self.cosine_skip, cosine_skip=self.cosine_skip, head=self.head,
            head_options=head_options_for(self.head, self.head_layers, self.head_options), num_outputs=num_outputs)

    def distill_config(self) -> DistillConfig:
        """How these flags distil the student (encoders.distill reads this, never the job)."""
        from encoders.distill import DistillConfig
        from pipeline.progress import bar_options

        return DistillConfig(
            stages=self.stages, loss=self.loss, human_label_weight=self.human_label_weight,
            stage1_epochs=self.stage1_epochs, patience=self.patience, stage2_epochs=self.stage2_epochs,
            stage1_max_pairs=self.stage1_max_pairs, stage2_max_pairs=self.stage2_max_pairs, lr=self.lr,
            stage2_lr=self.stage2_lr, encoder_lr=self.encoder_lr, batch_size=self.batch_size,
            stage1_batch_size=self.stage1_batch_size, encode_batch_size=self.encode_batch_size,
            warmup=self.warmup, weight_decay=self.weight_decay, max_grad_norm=self.max_grad_norm, seed=self.seed,
            train_layers=self.train_layers, select_metric=self.select_metric, virt_weight=self.virt_weight,
            bar_options=bar_options() if self.progress else None)


def head_options_for(head: str, layers: int | None, options: dict[str, Any]) -> dict[str, Any]:
    """``--head-options`` plus what ``--head-layers L`` means for ``head``: the transformer layers of
    dipair, or L hidden layers of 128 units for the FFNN heads (dipair-ffnn, de-ffnn, li)."""
    from pipeline.errors import FlagError

    options = dict(options)
    if layers is None:
        return options
    key, value = {"dipair": ("layers", layers), "dipair-ffnn": ("hidden", [FFNN_WIDTH] * layers),
                  "de-ffnn": ("hidden", [FFNN_WIDTH] * layers), "li": ("hidden", [FFNN_WIDTH] * layers)
                  }.get(head, (None, None))
    if key is None:
        raise FlagError(f"--head-layers {layers} is not allowed for head {head!r}: it has no layers")
    if key in options:
        raise FlagError(f"--head-layers {layers} and --head-options {key!r} both set {key!r}: give one of them")
    options[key] = value
    return options


# --------------------------------------------------------------------------- the command line

@click.command("train-student", cls=JobCommand, context_settings=PLAIN_JOB_CONTEXT)
@click.option("--distill", multiple=True, required=True, metavar="PATH",
              help="The distillation set: a label_pairs output directory (or its files, a glob, a Beam filesystem "
                   "path); repeat for more. Columns left, right, soft_label and logit (soft_labels and logits for "
                   "k-class teachers).")
@click.option("--dev", multiple=True, required=True, metavar="PATH",
              help="Labeled dev pairs (--label-col), evaluated after every epoch; the best epoch is kept.")
@click.option("--format", type=click.Choice(FORMATS), default=None,
              help="Read every input as this format, whatever its extension.")
@click.option("--left-col", default="left", show_default=True, help="Column holding the left text.")
@click.option("--right-col", default="right", show_default=True, help="Column holding the right text.")
@click.option("--label-col", default="label", show_default=True, help="Column holding the dev label.")
@click.option("--task", type=click.Choice(TASKS), default=None,
              help="How dev (and human) labels are read. Default: the teacher's task from the distillation set's "
                   "_MANIFEST.json; without one, binary (classes for k-class soft labels).")
@click.option("--label-range", default=None, metavar="LOW,HIGH",
              help="graded only: the label range mapped to [0, 1], e.g. 0,5 for STS-B.")
@click.option("--human-label-col", default=None, metavar="COL",
              help="A column of the distillation set with human labels (e.g. label_pairs --keep-cols label). Pairs "
                   "with one learn from both; pairs without (mined pairs) from the teacher alone.")
@click.option("--human-label-weight", type=Number(float, 0, 1, allowed="give a number in [0, 1] (0 = soft labels only, "
                                                                      "1 = human labels only where a pair has one)"),
              default=0.5, show_default=True,
              help="Weight w of the human label where a pair has one: loss = (1 - w) * teacher loss + w * human loss.")
@click.option("--head", type=click.Choice(STUDENT_HEADS), required=True,
              help="The head, from heads/: dipair (DiPair-TSF), dipair-ffnn, li (late interaction), de-ffnn, de-cos.")
@click.option("--encoder", default=DEFAULT_ENCODER, show_default=True, metavar="MODEL",
              help="Pretrained encoder: a local Hugging Face directory or hub id (offline: from the local cache). "
                   "The default is the packaged all-MiniLM-L6-v2, no download.")
@click.option("--layers", type=POSITIVE_INT, default=None, metavar="K",
              help="Encoder layers kept (DiPair's K, 1-4 there). Default: all.")
@click.option("--n", "n", type=POSITIVE_INT,
              default=4, show_default=True, metavar="N", help="Left token embeddings kept.")
@click.option("--m", "m", type=POSITIVE_INT,
              default=12, show_default=True, metavar="M", help="Right token embeddings kept.")
@click.option("--dim", type=POSITIVE_INT, default=128, show_default=True, metavar="D", help="Projected dimension.")
@click.option("--head-layers", type=POSITIVE_INT, default=None, metavar="L",
              help="Head depth: transformer layers of dipair (default 2), or hidden layers of 128 units of the FFNN "
                   "heads dipair-ffnn, de-ffnn, li (default 2). de-cos has none.")
@click.option("--head-options", default=None, metavar="JSON",
              help="Other head options as a JSON object, e.g. '{\"ffn\": 512, \"dropout\": 0.1}' (see the head's "
                   "*Config in heads/).")
@click.option("--cosine-skip/--no-cosine-skip", default=True, show_default=True,
              help="Add a learned scale * cos(pooled sentence embeddings) + bias to the head's logits, fitted to "
                   "the teacher before training, so the student starts from the zero-shot cosine and the head "
                   "learns the rest (heads/cosine_skip.py). The store then also keeps each text's pooled "
                   "embedding. --no-cosine-skip: the plain DiPair head.")
@click.option("--separate-encoders", is_flag=True,
              help="One encoder per side (default: one shared encoder; the projections are per side either way).")
@click.option("--left-max-length", type=POSITIVE_INT, default=64, show_default=True,
              help="Left tokenizer max length, special tokens included.")
@click.option("--right-max-length", type=POSITIVE_INT, default=128, show_default=True,
              help="Right tokenizer max length, special tokens included.")
@click.option("--token-selection", type=click.Choice(["first", "last"]), default="first", show_default=True,
              help="Keep the first N / M output tokens ([CLS] first) or the last ones.")
@click.option("--stages", type=Number(int, 1, 2, allowed="give 1 or 2"), default=2, show_default=True,
              help="2: DiPair's schedule, stage 1 with the encoder frozen (early stop on dev), then stage 2 with "
                   "everything. 1: everything from the first step (the ablation).")
@click.option("--loss", type=click.Choice(STUDENT_LOSSES), default="ce", show_default=True,
              help="ce: cross-entropy on the soft labels (DiPair eq. 1). mse: squared error on the teacher's logits.")
@click.option("--swap", is_flag=True,
              help="Also train on every pair with left and right exchanged (symmetric tasks): doubles the examples.")
@click.option("--stage1-epochs", type=POSITIVE_INT, default=10, show_default=True,
              help="Most epochs of stage 1 (it stops early after --patience epochs without dev improvement).")
@click.option("--patience", type=POSITIVE_INT, default=2, show_default=True,
              help="Stage 1 stops after this many epochs without a better dev score.")
@click.option("--stage2-epochs",
              type=Number(int, 0, allowed="give an integer >= 0 (0: stage 1 only, the encoder stays frozen)"),
              default=1, show_default=True,
              help="Epochs of stage 2 (and of --stages 1). 0: stage 1 only, the encoder stays frozen (the "
                   "cheapest student; no --train-layers, --virt-weight or --stages 1 then).")
@click.option("--stage1-max-pairs", type=POSITIVE_INT, default=None, metavar="P",
              help="At most P pairs per stage-1 epoch (a new random sample each epoch), for distillation sets "
                   "larger than an epoch needs to be: dev is then evaluated, and early stopping decided, every P "
                   "pairs.")
@click.option("--stage2-max-pairs", type=POSITIVE_INT, default=None, metavar="P",
              help="At most P pairs per stage-2 epoch (a new random sample each epoch): stage 2 runs the encoder "
                   "and costs far more per pair than stage 1.")
@click.option("--lr", type=LEARNING_RATE, default=5e-4, show_default=True,
              help="Peak learning rate of projection + head in stage 1 (and in --stages 1).")
@click.option("--stage2-lr", type=LEARNING_RATE, default=1e-4, show_default=True,
              help="Peak learning rate of projection + head in stage 2.")
@click.option("--encoder-lr", type=LEARNING_RATE, default=2e-5, show_default=True,
              help="Peak learning rate of the encoder when it trains (stage 2, --stages 1).")
@click.option("--batch-size", type=POSITIVE_INT, default=32, show_default=True,
              help="Pairs per step when the encoder trains (stage 2, --stages 1).")
@click.option("--stage1-batch-size", type=POSITIVE_INT,
              default=128, show_default=True, help="Pairs per step in stage 1.")
@click.option("--encode-batch-size", type=POSITIVE_INT, default=128, show_default=True,
              help="Texts per batch when encoding without gradients (stage-1 cache, dev).")
@click.option("--warmup", type=warmup_type("a stage's steps"), default=0.1, show_default=True,
              help="Fraction of each stage's steps over which its learning rates rise linearly from 0; they then "
                   "decay linearly to 0 at the stage's last epoch.")
@click.option("--weight-decay", type=WEIGHT_DECAY, default=0.01, show_default=True, help="AdamW weight decay.")
@click.option("--max-grad-norm", type=MAX_GRAD_NORM, default=1.0, show_default=True, help="Gradient clipping norm.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seeds the projection and head initialisation, dropout and batch order.")
@device_option("Where to train; auto = CUDA when present (with mixed precision).")
@click.option("--cache-dir", default=None, metavar="DIR",
              help="Keep stage 1's frozen encoder states here (one safetensors file per encoder, length and text "
                   "set) and reuse them: runs that differ only in the head encode the texts once.")
@click.option("--train-layers", type=POSITIVE_INT, default=None, metavar="K",
              help="Stage 2 trains only the top K encoder layers (with projection and head), on the frozen lower "
                   "layers' outputs computed once per unique text (float16, in memory; kept in --cache-dir when "
                   "given). Default: the whole encoder trains, each batch encoded in full.")
@click.option("--teacher", default=None, metavar="DIR",
              help="The cross-encoder teacher checkpoint (train_teacher's output) for --virt-weight; its tokenizer "
                   "must be the student encoder's. Unused while --virt-weight is 0.")
@click.option("--virt-weight", type=Number(float, 0, allowed="give a number >= 0 (0: VIRT off)"),
              default=0.0, show_default=True, metavar="ALPHA",
              help="VIRT (Li et al. 2022, eq. 5-7): add ALPHA x the L2 distance between the teacher's cross attention "
                   "maps (left->right, right->left, eager attention over each pair) and the student's virtual ones "
                   "(each trained layer's queries of one tower against its keys of the other). Acts in stage 2 "
                   "only (and the single stage of --stages 1), where the encoder trains, on the trained layers "
                   "(--train-layers); costs a teacher forward per pair there. 0: off, training exactly as "
                   "without it. Needs --teacher.")
@click.option("--dev-group-col", default=None, metavar="COL",
              help="Dev's query column (e.g. qid): every epoch also reports MRR@10, MAP and nDCG@10 over dev's "
                   "queries.")
@click.option("--select-metric", type=click.Choice(["auc", "spearman", "accuracy", "mrr@10", "map", "ndcg@10"]),
              default=None, help="The dev metric that picks the best epoch (default: auc for binary, spearman for "
                                 "graded, accuracy for classes); the ranking ones need --dev-group-col.")
@click.option("--limit", type=POSITIVE_INT, default=None, metavar="N",
              help="Read at most N rows from each of --distill and --dev (quick runs).")
@output_option("Student checkpoint directory to create: config.json, student.safetensors, encoder/, "
               "_dead_letter/, _SUMMARY.json, _SUCCESS (the checkpoint is committed when training ends).")
@overwrite_option
@dead_letter_option
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar with the loss and pairs/s.")
@run_options
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool, progress: bool, **flags) -> None:
    """Distil a teacher into a DiPair student (two-stage training) and save the checkpoint."""
    def go() -> str:
        label_range = parse_label_range(flags.pop("label_range"))
        head_options = parse_head_options(flags.pop("head_options"))
        preflight(ctx, "train_student", flags)
        job = TrainStudentJob(distill=tuple(flags.pop("distill")), dev=tuple(flags.pop("dev")),
                              label_range=label_range, head_options=head_options,
                              progress=progress and not quiet, **flags)
        summary = run(job, ctx.meta[ARGV_KEY])
        lines = [summary.table()]
        for record in summary.metrics["epochs"]:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in record["dev"].items())
            lines.append(f"  {record['stage']} epoch {record['epoch']}: train loss {record['train_loss']:.4f}, "
                         f"dev {shown}")
        lines.append(f"  train loss floor (entropy of the targets): {summary.metrics['train_loss_floor']:.4f}")
        return "\n".join(lines)
    run_job(go, name="train_student", quiet=quiet, verbose=verbose)


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
    random.seed(job.seed)
    np.random.seed(job.seed)
    torch.manual_seed(job.seed)
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
                      checkpoint_dir=out.checkpoint_dir, dev_groups=np.array(dev.groups) if job.dev_group_col else None)
    stages = plan_stages(student, distill)
    if virt_teacher is not None:
        from encoders.layer_cache import encoder_layers
        from encoders.virt import Virt
        layers = encoder_layers(student.encoder.left)
        trained = range(len(layers) - (job.train_layers or len(layers)), len(layers))
        trainer.virt = Virt(virt_teacher.to(device), job.virt_weight, layers, trained)
    if stages[0].frozen_encoder:
        texts = {side: [*examples.pairs.pools[side], *dev_pairs.pools[side]] for side in SIDES}
        trainer.cache = FrozenStates(student, texts, job.encode_batch_size, device, job.cache_dir,
                                     distill.bar_options)
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
