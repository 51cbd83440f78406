"""What the teacher's and the student's training share: AdamW as BERT sets it up, length-grouped
batches, one optimizer step with mixed precision and clipping, and an epoch's loss, speed and
progress bar. (Loss scaling is decided with the precision: ``encoders.device.grad_scaler``.)"""
from __future__ import annotations

import random
import time
from typing import Iterable, Sequence

import torch

from encoders.progress import Bars, open_bar


NamedParameters = Sequence[tuple[str, torch.nn.Parameter]]
# Length grouping: examples are sorted by length within windows of this many batches, so a batch
# pads little while batch order stays random (sorting the whole set would put every long pair
# in the last steps of the epoch).
GROUP_BATCHES = 64


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


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators from one seed: a training run's
    initialisation, dropout and batch order repeat."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_adamw(groups: Iterable[tuple[NamedParameters, float]], weight_decay: float) -> torch.optim.Optimizer:
    """AdamW as in BERT (DiPair 4.4): eps 1e-6, no weight decay on biases and LayerNorm weights
    (parameters of fewer than 2 dimensions); one learning rate per group of (name, parameter)s.
    Parameters that do not require gradients are left out."""
    param_groups = []
    for named, lr in groups:
        trainable = [p for _, p in named if p.requires_grad]
        param_groups += [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay, "lr": lr},
                         {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([g for g in param_groups if g["params"]], eps=1e-6)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
                   parameters: Iterable[torch.nn.Parameter], max_grad_norm: float) -> None:
    """Backward, clip the gradients to ``max_grad_norm``, step the optimizer and the schedule.
    With float16 loss scaling the true (unscaled) gradients are clipped."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


class EpochProgress:
    """An epoch's running loss and speed, shown on a progress bar (smoothed loss, learning rate,
    pairs/s); ``close`` gives {train_loss (mean over the epoch), pairs, seconds, pairs_per_second}.
    ``bars``: the job's progress callback (encoders/progress.py); None: no bar."""

    def __init__(self, total: int, description: str, bars: Bars):
        self.total_loss, self.seen, self.smoothed = 0.0, 0, None
        self.started = time.perf_counter()
        self.bar = open_bar(bars, total, description, "pair")

    def update(self, loss: torch.Tensor, pairs: int, lr: float) -> None:
        value = float(loss.detach())
        self.total_loss += value * pairs
        self.seen += pairs
        self.smoothed = value if self.smoothed is None else 0.98 * self.smoothed + 0.02 * value
        self.bar.update(pairs)
        self.bar.set_postfix(loss=f"{self.smoothed:.4f}", lr=f"{lr:.2e}", refresh=False)

    def close(self) -> dict[str, float]:
        self.bar.close()
        seconds = time.perf_counter() - self.started
        return {"train_loss": self.total_loss / max(self.seen, 1), "pairs": self.seen, "seconds": round(seconds, 1),
                "pairs_per_second": round(self.seen / seconds, 1) if seconds else 0.0}
