"""How a student is distilled (DiPair §3.7, §4.3-4.4): the distillation concern of
``jobs.train_student``, declared once (``encoders/settings.py``). Each field is a flag of the job
(``stage1_epochs`` is ``--stage1-epochs``) with its default, help and range; ``encoders.distill``
reads the dataclass. Standard library only, so ``--help`` needs no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from encoders.choices import RANKING_METRICS, SELECT_METRICS, STUDENT_LOSSES
from encoders.errors import FlagError
from encoders.settings import (LEARNING_RATE, MAX_GRAD_NORM, POSITIVE_INT, SEED, WEIGHT_DECAY, Range, check_settings,
                               setting, warmup_range)

_ENCODER_TRAINS = "(stage 2, --stages 1)"


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """How a student is distilled; ``jobs.train_student``'s settings inherit it, and
    ``section(DistillConfig, job)`` is what the trainer reads.

    stages 2: encoder frozen first (DiPair's schedule), then everything; 1: everything from the start.
    lr / stage2_lr / encoder_lr: projection + head in stage 1 / in stage 2 / the encoder.
    train_layers: k, stage 2 trains only the top k encoder layers on cached lower states (None: all).
    select_metric: the dev metric that picks the best epoch (None: the task's main metric).
    virt_weight: alpha of the VIRT attention-map loss where the encoder trains (``encoders/virt.py``).
    """
    human_label_weight: float = setting(
        0.5, "Weight w of the human label where a pair has one: loss = (1 - w) * teacher loss + w * human loss.",
        range=Range(float, 0, 1, allowed="give a number in [0, 1] (0 = soft labels only, 1 = human labels only "
                                         "where a pair has one)"))
    stages: int = setting(
        2, "2: DiPair's schedule, stage 1 with the encoder frozen (early stop on dev), then stage 2 with everything. "
           "1: everything from the first step (the ablation).",
        range=Range(int, 1, 2, allowed="2 (encoder frozen first, DiPair's schedule) or 1 (everything trains from "
                                       "the start)"))
    loss: str = setting("ce", "ce: cross-entropy on the soft labels (DiPair eq. 1). mse: squared error on the "
                              "teacher's logits.", choices=STUDENT_LOSSES)
    stage1_epochs: int = setting(10, "Most epochs of stage 1 (it stops early after --patience epochs without dev "
                                     "improvement).", range=POSITIVE_INT)
    patience: int = setting(2, "Stage 1 stops after this many epochs without a better dev score.", range=POSITIVE_INT)
    stage2_epochs: int = setting(
        1, "Epochs of stage 2 (and of --stages 1). 0: stage 1 only, the encoder stays frozen (the cheapest student; "
           "no --train-layers, --virt-weight or --stages 1 then).",
        range=Range(int, 0, allowed="give an integer >= 0 (0: stage 1 only, the encoder stays frozen)"))
    stage1_max_pairs: int | None = setting(
        None, "At most P pairs per stage-1 epoch (a new random sample each epoch), for distillation sets larger than "
              "an epoch needs to be: dev is then evaluated, and early stopping decided, every P pairs.",
        range=POSITIVE_INT, metavar="P")
    stage2_max_pairs: int | None = setting(
        None, "At most P pairs per stage-2 epoch (a new random sample each epoch): stage 2 runs the encoder and "
              "costs far more per pair than stage 1.", range=POSITIVE_INT, metavar="P")
    lr: float = setting(5e-4, "Peak learning rate of projection + head in stage 1 (and in --stages 1).",
                        range=LEARNING_RATE)
    stage2_lr: float = setting(1e-4, "Peak learning rate of projection + head in stage 2.", range=LEARNING_RATE)
    encoder_lr: float = setting(2e-5, f"Peak learning rate of the encoder when it trains {_ENCODER_TRAINS}.",
                                range=LEARNING_RATE)
    batch_size: int = setting(32, f"Pairs per step when the encoder trains {_ENCODER_TRAINS}.", range=POSITIVE_INT)
    stage1_batch_size: int = setting(128, "Pairs per step in stage 1.", range=POSITIVE_INT)
    encode_batch_size: int = setting(128, "Texts per batch when encoding without gradients (stage-1 cache, dev).",
                                     range=POSITIVE_INT)
    warmup: float = setting(0.1, "Fraction of each stage's steps over which its learning rates rise linearly from 0; "
                                 "they then decay linearly to 0 at the stage's last epoch.",
                            range=warmup_range("a stage's steps"))
    weight_decay: float = setting(0.01, "AdamW weight decay.", range=WEIGHT_DECAY)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.", range=MAX_GRAD_NORM)
    seed: int = setting(0, "Seeds the projection and head initialisation, dropout and batch order.", range=SEED)
    train_layers: int | None = setting(
        None, "Stage 2 trains only the top K encoder layers (with projection and head), on the frozen lower layers' "
              "outputs computed once per unique text (float16, in memory; kept in --cache-dir when given). Default: "
              "the whole encoder trains, each batch encoded in full.", range=POSITIVE_INT, metavar="K")
    virt_weight: float = setting(
        0.0, "VIRT (Li et al. 2022, eq. 5-7): add ALPHA x the L2 distance between the teacher's cross attention maps "
             "(left->right, right->left, eager attention over each pair) and the student's virtual ones (each "
             "trained layer's queries of one tower against its keys of the other). Acts in stage 2 only (and the "
             "single stage of --stages 1), where the encoder trains, on the trained layers (--train-layers); costs "
             "a teacher forward per pair there. 0: off, training exactly as without it. Needs --teacher.",
        range=Range(float, 0, allowed="give a number >= 0 (0: VIRT off)"), metavar="ALPHA")
    select_metric: str | None = setting(
        None, "The dev metric that picks the best epoch (default: auc for binary, spearman for graded, accuracy for "
              "classes); the ranking ones need --dev-group-col.", choices=SELECT_METRICS)

    def check(self, ranked_dev: bool) -> None:
        """What these settings allow (ValueError naming the flag); ``ranked_dev``: dev has a
        query column (``--dev-group-col``)."""
        check_settings(self)
        if self.stage2_epochs == 0:
            given = [flag for flag, on in (("--stages 1", self.stages == 1), ("--train-layers", self.train_layers),
                                           ("--virt-weight", self.virt_weight)) if on]
            if given:
                raise FlagError(f"--stage2-epochs 0 (stage 1 only, the encoder frozen) is not allowed with "
                                 f"{', '.join(given)}: those train the encoder, which then never trains")
        if self.train_layers is not None and self.stages != 2:
            raise FlagError("--train-layers needs --stages 2: it trains the top layers in stage 2, on the lower "
                             "layers' cached outputs")
        if self.select_metric in RANKING_METRICS and not ranked_dev:
            raise FlagError(f"--select-metric {self.select_metric} ranks dev's candidates per query: give "
                             "--dev-group-col (e.g. qid)")
