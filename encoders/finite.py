"""Weights that are not finite numbers: what a training run must not commit and a load must refuse.

A NaN or an infinity in one weight makes every score it touches NaN, and nothing downstream
notices (a NaN sorts, stores and averages like a number): a scores table of NaNs, a NaN store
reused by every later run. Checking costs one pass over the weights (milliseconds for MiniLM).
"""
from __future__ import annotations

import torch
from torch import nn

from encoders.errors import ModelError


def non_finite_weights(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``module`` holding a NaN or an infinity (floating
    point ones only), in the module's order."""
    named = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, tensor in named
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all())]


def describe_non_finite(names: list[str]) -> str:
    """``"3 tensors (head.out.weight, head.out.bias, ...)"``, for a one-line message."""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} tensor{'s' if len(names) != 1 else ''} ({shown})"


def check_finite_weights(module: nn.Module, what: str) -> None:
    """ValueError (one line naming ``what``) when a weight of ``module`` is NaN or infinite."""
    bad = non_finite_weights(module)
    if bad:
        raise ModelError(f"{what} has weights that are not finite numbers (NaN or infinity) in "
                         f"{describe_non_finite(bad)}: it cannot score; retrain it (a lower --lr, "
                         "--max-grad-norm) or use another checkpoint")
