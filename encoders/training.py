"""What the teacher's and the student's training share: AdamW as BERT sets it up, length-grouped
batches, one optimizer step with mixed precision and clipping, and an epoch's loss, speed and
progress bar. (Loss scaling is decided with the precision: ``encoders.device.grad_scaler``.)"""
from __future__ import annotations

import math
import random
import time
from typing import Any, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from encoders.errors import FlagError

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


def check_optimizer_settings(rates: Mapping[str, float], warmup: float, warmup_of: str, weight_decay: float,
                             max_grad_norm: float) -> None:
    """The optimizer numbers both training jobs take: each learning rate (``rates``: flag ->
    value) > 0, the warmup a fraction 0 <= WARMUP < 1 of ``warmup_of`` (which steps it counts),
    weight decay >= 0 and the clipping norm > 0. ValueError naming the flag otherwise."""
    for flag, value in rates.items():
        if not (math.isfinite(value) and value > 0):
            raise FlagError(f"{flag} {value!r} is not allowed: give a learning rate > 0")
    if not 0 <= warmup < 1:
        raise FlagError(f"--warmup {warmup!r} is not allowed: give the fraction of {warmup_of} spent warming up, "
                        "0 <= WARMUP < 1")
    # NaN passes every comparison's negation, and an infinite norm clips nothing: both said here.
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise FlagError(f"--weight-decay {weight_decay!r} is not allowed: give a finite number >= 0")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise FlagError(f"--max-grad-norm {max_grad_norm!r} is not allowed: give a finite number > 0")


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
    ``bar_options``: the tqdm options the job draws bars with; None: no bar."""

    def __init__(self, total: int, description: str, bar_options: Mapping[str, Any] | None):
        self.total_loss, self.seen, self.smoothed = 0.0, 0, None
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, desc=description, unit="pair", disable=bar_options is None,
                        **(bar_options or {}))

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
