"""DE-FFNN: dual-encoder baseline, an FFNN over the two first ([CLS]) tokens (DiPair §4.2).

    u = left[:, 0], v = right[:, 0]                          (B, D) each
    features = [u, v, |u - v|, u * v]                        (B, 4D)
      -> (Linear -> ReLU -> Dropout) per hidden size -> Linear -> (B, num_outputs)

DiPair feeds the FFNN only [u, v]; the difference and product features (as in
Sentence-BERT's classifier) add no cost worth mentioning and give an FFNN a direct handle on
similarity, which plain concatenation makes it learn from scratch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from heads._common import PairHead, check_hidden_sizes, check_probability, ffnn


@dataclass(frozen=True)
class DEFFNNConfig:
    """hidden: FFNN hidden sizes (DiPair: x128x128). dropout: after each hidden ReLU."""
    hidden: tuple[int, ...] = (128, 128)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", check_hidden_sizes("hidden", self.hidden))
        check_probability("dropout", self.dropout)


class DEFFNNHead(PairHead):
    """DE-FFNN head. Call: see heads/_common.py; returns (B, num_outputs) logits."""

    name = "de-ffnn"
    config_class = DEFFNNConfig

    def __init__(self, config: DEFFNNConfig = DEFFNNConfig(), *, dim: int, left_tokens: int,
                 right_tokens: int, num_outputs: int = 1):
        super().__init__(config, dim=dim, left_tokens=left_tokens, right_tokens=right_tokens,
                         num_outputs=num_outputs)
        self.ffnn = ffnn(4 * dim, config.hidden, num_outputs, config.dropout)

    def forward(self, left: torch.Tensor, left_mask: torch.Tensor, right: torch.Tensor,
                right_mask: torch.Tensor, *, left_pooled: torch.Tensor | None = None,
                right_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """left (B, N, D), left_mask (B, N) bool, right (B, M, D), right_mask (B, M) bool
        -> logits (B, num_outputs). Only the first tokens (always real) are read."""
        self.check_inputs(left, left_mask, right, right_mask)
        u, v = left[:, 0], right[:, 0]                                            # (B, D)
        return self.ffnn(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))         # (B, 4D) -> (B, K)
