"""DE-COS: dual-encoder baseline, the cosine of the two first ([CLS]) tokens (DiPair §4.2).

    logit = scale * cos(left[:, 0], right[:, 0]) + bias        (B, 1)

``scale`` and ``bias`` are learned scalars. A raw cosine in [-1, 1] is a poor logit
(sigmoid would squeeze every pair into [0.27, 0.73]); the default start, scale 10 and
bias -5, maps cosine 0.5 to probability 0.5 and cosines 0 / 1 to about 0.007 / 0.993, so
the head is usable from the first step and training only moves the threshold and slope.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from heads._common import PairHead


@dataclass(frozen=True)
class DECosConfig:
    """init_scale / init_bias: starting values of the learned scale and bias."""
    init_scale: float = 10.0
    init_bias: float = -5.0

    def __post_init__(self) -> None:
        for name in ("init_scale", "init_bias"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value \
                    or value in (float("inf"), float("-inf")):
                raise ValueError(f"{name}={value!r} is not allowed: use a finite number")


class DECosHead(PairHead):
    """DE-COS head. Call: see heads/_common.py; returns (B, 1) logits."""

    name = "de-cos"
    config_class = DECosConfig

    def __init__(self, config: DECosConfig = DECosConfig(), *, dim: int, left_tokens: int,
                 right_tokens: int, num_outputs: int = 1):
        super().__init__(config, dim=dim, left_tokens=left_tokens, right_tokens=right_tokens,
                         num_outputs=num_outputs)
        if num_outputs != 1:
            raise ValueError(f"num_outputs={num_outputs!r} is not allowed for head {self.name!r}: "
                             f"a cosine gives one score, use num_outputs=1")
        self.scale = nn.Parameter(torch.tensor(float(config.init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(config.init_bias)))

    def forward(self, left: torch.Tensor, left_mask: torch.Tensor, right: torch.Tensor,
                right_mask: torch.Tensor, *, left_pooled: torch.Tensor | None = None,
                right_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """left (B, N, D), left_mask (B, N) bool, right (B, M, D), right_mask (B, M) bool
        -> logits (B, 1). Only the first tokens (always real) are read."""
        self.check_inputs(left, left_mask, right, right_mask)
        cosine = F.cosine_similarity(left[:, 0], right[:, 0], dim=-1)            # (B,)
        return (self.scale * cosine + self.bias).unsqueeze(-1)
