"""pooled-cos: the zero-training baseline, cosine of the two pooled sentence embeddings.

    score = cos(left_pooled, right_pooled)                    (B, 1)

It has no parameters and reads neither the token embeddings nor the masks: the pooled
embeddings (e.g. all-MiniLM-L6-v2's mean-pooled, L2-normalised sentence embeddings, which
stage one keeps when the student's ``pooled`` option is on) must be passed as keywords.

The result is a cosine in [-1, 1], not a logit (``score_kind = "cosine"``): the scoring job
reports it as it is instead of applying a sigmoid. Ranking metrics (AUC) are the same either
way, since sigmoid is monotone; a probability-like threshold has to be chosen on a dev set
(QQP: about 0.83).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from heads._common import PairHead


@dataclass(frozen=True)
class PooledCosConfig:
    """No options."""


class PooledCosHead(PairHead):
    """pooled-cos head. Call: see heads/_common.py, with ``left_pooled`` and ``right_pooled``
    required; returns (B, 1) cosines."""

    name = "pooled-cos"
    config_class = PooledCosConfig
    score_kind = "cosine"
    reads_tokens = False  # scoring may pass placeholder tokens (pipeline/scoring_core.py skips gathering them)

    def __init__(self, config: PooledCosConfig = PooledCosConfig(), *, dim: int, left_tokens: int,
                 right_tokens: int, num_outputs: int = 1):
        super().__init__(config, dim=dim, left_tokens=left_tokens, right_tokens=right_tokens,
                         num_outputs=num_outputs)
        if num_outputs != 1:
            raise ValueError(f"num_outputs={num_outputs!r} is not allowed for head {self.name!r}: "
                             f"a cosine gives one score, use num_outputs=1")

    def forward(self, left: torch.Tensor, left_mask: torch.Tensor, right: torch.Tensor,
                right_mask: torch.Tensor, *, left_pooled: torch.Tensor | None = None,
                right_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """left_pooled (B, H), right_pooled (B, H) -> cosines (B, 1). The token arguments are
        checked like every head's but otherwise unused."""
        self.check_inputs(left, left_mask, right, right_mask)
        if left_pooled is None or right_pooled is None:
            raise ValueError(f"head {self.name!r} needs left_pooled and right_pooled (B, H) sentence "
                             f"embeddings; build the student with pooled=True so stage one keeps them")
        batch = left.shape[0]
        for side, pooled in (("left_pooled", left_pooled), ("right_pooled", right_pooled)):
            if pooled.dim() != 2 or pooled.shape[0] != batch:
                raise ValueError(f"{side} has shape {tuple(pooled.shape)}; expected (B, H) with B={batch}")
        if left_pooled.shape != right_pooled.shape:
            raise ValueError(f"left_pooled {tuple(left_pooled.shape)} and right_pooled "
                             f"{tuple(right_pooled.shape)} must have the same shape")
        # F.cosine_similarity's formula, x.y / max(|x| |y|, eps), in three plain ops: 5x faster on CPU.
        dot = (left_pooled * right_pooled).sum(dim=-1)
        norms = left_pooled.norm(dim=-1) * right_pooled.norm(dim=-1)
        return (dot / norms.clamp_min(1e-8)).unsqueeze(-1)
