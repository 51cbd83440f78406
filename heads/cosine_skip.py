"""A cosine skip path around any head: the head learns what to add to the zero-shot score.

    logits = head(left, left_mask, right, right_mask)                       (B, C)
             + scale * cos(left_pooled, right_pooled)[:, None] + bias       scale, bias: (C,)

Why: on small distillation sets a head trained from random weights starts far below what the
pretrained sentence embedding already knows (FINDINGS.md: a naive DiPair student lost to the
zero-shot cosine of the same encoder). With the skip, the pooled-embedding cosine -- the
zero-training baseline -- is part of every logit, ``fit_to`` sets ``scale`` and ``bias`` to the
best logistic fit of the teacher's soft labels on the cosine before training starts, and the
head only has to learn the residual. The student's pooled embeddings (``pooled`` in the
StudentConfig) must be passed: stage one keeps them in the store next to the tokens.

The cost in stage two is one dot product of the two (H,) pooled embeddings per pair; in the
store, H float16 values per text.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from heads._common import PairHead

# Newton steps of the two-parameter logistic fit; it converges in a handful.
FIT_STEPS = 25


class CosineSkip(nn.Module):
    """``inner`` head + learned affine function of the pooled-embedding cosine.

    Same call as every head (heads/_common.py), but ``left_pooled`` / ``right_pooled`` (B, H) are
    required. ``scale`` and ``bias`` start at 0 (the inner head alone) until ``fit_to`` is called.
    """

    score_kind = "logits"

    def __init__(self, inner: PairHead):
        super().__init__()
        if getattr(inner, "score_kind", "logits") != "logits":
            raise ValueError(f"head {inner.name!r} reports a similarity, not logits: a cosine skip cannot be "
                             "added to it")
        self.inner = inner
        self.scale = nn.Parameter(torch.zeros(inner.num_outputs))
        self.bias = nn.Parameter(torch.zeros(inner.num_outputs))

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def num_outputs(self) -> int:
        return self.inner.num_outputs

    def forward(self, left: torch.Tensor, left_mask: torch.Tensor, right: torch.Tensor,
                right_mask: torch.Tensor, *, left_pooled: torch.Tensor | None = None,
                right_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens and masks as every head; left_pooled, right_pooled (B, H) -> logits (B, C)."""
        logits = self.inner(left, left_mask, right, right_mask)
        return logits + self.skip(left_pooled, right_pooled, batch=logits.shape[0]).to(logits.dtype)

    def skip(self, left_pooled: torch.Tensor | None, right_pooled: torch.Tensor | None,
             batch: int | None = None) -> torch.Tensor:
        """The skip path alone: (B, H), (B, H) -> scale * cos + bias, (B, C)."""
        if left_pooled is None or right_pooled is None:
            raise ValueError("a student with a cosine skip needs left_pooled and right_pooled (B, H) sentence "
                             "embeddings: build it with pooled=True so stage one keeps them")
        if left_pooled.shape != right_pooled.shape or left_pooled.dim() != 2 or (
                batch is not None and left_pooled.shape[0] != batch):
            raise ValueError(f"left_pooled {tuple(left_pooled.shape)} and right_pooled {tuple(right_pooled.shape)} "
                             f"must both be (B, H) with B = {batch if batch is not None else 'the batch size'}")
        cosine = F.cosine_similarity(left_pooled.float(), right_pooled.float(), dim=-1)     # (B,)
        return cosine[:, None] * self.scale + self.bias

    @torch.no_grad()
    def fit_to(self, cosine: torch.Tensor, soft: torch.Tensor) -> None:
        """Set ``scale`` and ``bias`` to the maximum-likelihood fit of the teacher's soft labels on
        the cosine, so training starts from the zero-shot score, calibrated to the teacher.

        cosine (P,) pooled-embedding cosines of training pairs; soft (P, C) soft labels. One output:
        logistic regression of p on the cosine (Newton's method). C classes: per class, the same
        fit of that class's probability (one-vs-rest), a reasonable start for the softmax.
        """
        x = torch.stack([cosine.double(), torch.ones_like(cosine, dtype=torch.float64)], dim=1)   # (P, 2)
        for column in range(soft.shape[1]):
            target = soft[:, column].double()
            weights = torch.zeros(2, dtype=torch.float64)
            for _ in range(FIT_STEPS):
                p = torch.sigmoid(x @ weights)
                gradient = x.T @ (p - target)
                # A tiny ridge keeps the Hessian invertible when every cosine is equal.
                hessian = (x.T * (p * (1 - p))) @ x + 1e-6 * torch.eye(2, dtype=torch.float64)
                weights = weights - torch.linalg.solve(hessian, gradient)
            self.scale[column] = float(weights[0])
            self.bias[column] = float(weights[1])
