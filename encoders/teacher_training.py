"""Fine-tuning a cross-encoder teacher, in plain PyTorch: tokenized pairs -> per epoch
length-grouped batches -> AdamW with linear warmup and decay, gradient clipping -> a dev
evaluation; the best epoch is handed to the caller to save. ``jobs.train_teacher`` reads the
data and runs :func:`fit_teacher` on its settings' training concern
(``encoders/teacher_config.py``); nothing here reads a job.

Shapes: P training examples, C outputs (1, or k classes).
"""
from __future__ import annotations

import random
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from encoders.device import autocast, grad_scaler
from encoders.metrics import selection_score, task_metrics
from encoders.progress import Bars
from encoders.teacher import CrossEncoder, TokenizedPair
from encoders.teacher_config import TeacherTraining
from encoders.training import EpochProgress, length_grouped_batches, make_adamw, optimizer_step


def train_epoch(teacher: CrossEncoder, examples: Sequence[TokenizedPair], targets: torch.Tensor,
                batches: list[list[int]], optimizer, scheduler, scaler, max_grad_norm: float, description: str,
                bars: Bars) -> dict[str, float]:
    """One pass over ``batches`` (``targets``: (P,) or (P, C) float32) -> {train_loss (mean over
    the epoch), pairs, seconds, pairs_per_second}."""
    teacher.train()
    device = teacher.device
    progress = EpochProgress(len(examples), description, bars)
    for index in batches:
        batch = {k: v.to(device) for k, v in teacher.collate([examples[i] for i in index]).items()}
        with autocast(device):
            logits = teacher(batch)                                   # (B, C)
        loss = teacher.task.loss_value(logits, targets[index].to(device))
        optimizer_step(loss, optimizer, scheduler, scaler, teacher.parameters(), max_grad_norm)
        progress.update(loss, len(index), scheduler.get_last_lr()[0])
    return progress.close()


def fit_teacher(teacher: CrossEncoder, examples: Sequence[TokenizedPair], targets: torch.Tensor,
                dev_examples: Sequence[TokenizedPair], dev_targets: np.ndarray, config: TeacherTraining,
                save_best: Callable[[], None], bars: Bars = None) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Train ``config.epochs`` epochs, evaluating dev after each; ``save_best`` is called whenever
    an epoch beats every earlier one (AdamW as in BERT: one learning rate for the whole model).
    Returns (the epoch records, the best record, the optimizer steps taken)."""
    rng = random.Random(config.seed)
    lengths = [e.num_tokens for e in examples]
    total_steps = -(-len(examples) // config.batch_size) * config.epochs
    optimizer = make_adamw([(list(teacher.named_parameters()), config.lr)], config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup * total_steps), total_steps)
    scaler = grad_scaler(teacher.device.type)
    epochs, best, best_score = [], None, None
    for epoch in range(1, config.epochs + 1):
        batches = length_grouped_batches(lengths, config.batch_size, rng)
        record = {"epoch": epoch, **train_epoch(teacher, examples, targets, batches, optimizer, scheduler, scaler,
                                                 config.max_grad_norm, f"epoch {epoch}/{config.epochs}", bars)}
        evaluated = time.perf_counter()
        dev_logits = teacher.predict(dev_examples, batch_size=2 * config.batch_size)
        record["dev"] = task_metrics(teacher.task, dev_logits, dev_targets)
        record["dev_seconds"] = round(time.perf_counter() - evaluated, 1)
        score = selection_score(teacher.task, record["dev"])
        if best is None or score > best_score:
            best, best_score = record, score
            save_best()
        record["best_so_far"] = best is record
        epochs.append(record)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in record["dev"].items())
        tqdm.write(f"epoch {epoch}: train loss {record['train_loss']:.4f} ({record['pairs_per_second']:.1f} "
                   f"pairs/s); dev {shown}{' (best, saved)' if best is record else ''}", file=sys.stderr)
    return epochs, best, total_steps
