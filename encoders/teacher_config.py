"""How a cross-encoder teacher is fine-tuned: the training concern of ``jobs.train_teacher``,
declared once (``encoders/settings.py``): each field is a flag with its default, help and range;
``encoders/teacher_training.py`` reads the dataclass. Standard library only, so ``--help`` needs
no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from encoders.config import DEFAULT_ENCODER
from encoders.settings import (LEARNING_RATE, MAX_GRAD_NORM, POSITIVE_INT, SEED, WEIGHT_DECAY, Range, setting,
                               warmup_range)


@dataclass(frozen=True, kw_only=True)
class TeacherTraining:
    """The base model, its input length and the optimizer's schedule (AdamW, linear warmup and decay)."""
    base: str = setting(DEFAULT_ENCODER, "Pretrained encoder to fine-tune: a local Hugging Face directory or hub id "
                                         "(offline: from the local cache). The default is the packaged "
                                         "all-MiniLM-L6-v2, no download.", metavar="MODEL")
    swap: bool = setting(False, "Also train on every pair with left and right exchanged (symmetric tasks, e.g. "
                                "duplicate questions): doubles the training examples.", switch=True)
    epochs: int = setting(2, "Passes over the training pairs.", range=POSITIVE_INT)
    lr: float = setting(3e-5, "Peak AdamW learning rate.", range=LEARNING_RATE)
    batch_size: int = setting(32, "Pairs per optimizer step (batches are grouped by length, so padding stays "
                                  "small).", range=POSITIVE_INT)
    max_length: int = setting(128, "Tokens per pair, both texts and special tokens included; longer pairs lose "
                                   "tokens from the longer text. Stored in the checkpoint; label_pairs uses it.",
                              range=Range(int, 4, allowed="give an integer of at least 4"))
    warmup: float = setting(0.1, "Fraction of all steps over which the learning rate rises linearly from 0; it then "
                                 "decays linearly to 0.", range=warmup_range("all steps"))
    weight_decay: float = setting(0.01, "AdamW weight decay.", range=WEIGHT_DECAY)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.", range=MAX_GRAD_NORM)
    seed: int = setting(0, "Seeds the head initialisation, dropout and batch order.", range=SEED)
