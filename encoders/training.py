"""What the training recipes (``train_teacher``, ``train_student``) share: AdamW as BERT sets it up,
one optimizer step with mixed precision and clipping, and an epoch's loss, speed and progress bar."""
from __future__ import annotations

import time
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from pipeline.progress import bar_options

NamedParameters = Sequence[tuple[str, torch.nn.Parameter]]


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


def grad_scaler(device: str) -> torch.amp.GradScaler:
    """Loss scaling only for float16 autocast on GPU; bfloat16 and CPU float32 need none."""
    return torch.amp.GradScaler("cuda", enabled=device == "cuda" and torch.cuda.is_available()
                                and not torch.cuda.is_bf16_supported())


class EpochProgress:
    """An epoch's running loss and speed, shown on a progress bar (smoothed loss, learning rate,
    pairs/s); ``close`` gives {train_loss (mean over the epoch), pairs, seconds, pairs_per_second}."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.total_loss, self.seen, self.smoothed = 0.0, 0, None
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, desc=description, unit="pair", disable=not enabled,
                        **bar_options())

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
