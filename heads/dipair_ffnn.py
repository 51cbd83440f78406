"""DiPair-FFNN: a feed-forward network over the flattened N + M token embeddings (DiPair §4.2).

    [left ; right] (B, N+M, D), padded positions zeroed -> flatten (B, (N+M)*D)
      -> (Linear -> ReLU -> Dropout) per hidden size -> Linear -> (B, num_outputs)

Cheaper than the transformer head but, in DiPair's experiments (§4.6), clearly worse, and
more parameters do not close the gap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from heads._common import PairHead, check_hidden_sizes, check_probability, ffnn, zero_padding


@dataclass(frozen=True)
class DiPairFFNNConfig:
    """hidden: FFNN hidden sizes (DiPair: x128x128). dropout: after each hidden ReLU."""
    hidden: tuple[int, ...] = (128, 128)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", check_hidden_sizes("hidden", self.hidden))
        check_probability("dropout", self.dropout)


class DiPairFFNNHead(PairHead):
    """DiPair-FFNN head. Call: see heads/_common.py; returns (B, num_outputs) logits."""

    name = "dipair-ffnn"
    config_class = DiPairFFNNConfig

    def __init__(self, config: DiPairFFNNConfig = DiPairFFNNConfig(), *, dim: int, left_tokens: int,
                 right_tokens: int, num_outputs: int = 1):
        super().__init__(config, dim=dim, left_tokens=left_tokens, right_tokens=right_tokens,
                         num_outputs=num_outputs)
        self.ffnn = ffnn((left_tokens + right_tokens) * dim, config.hidden, num_outputs, config.dropout)

    def forward(self, left: torch.Tensor, left_mask: torch.Tensor, right: torch.Tensor,
                right_mask: torch.Tensor, *, left_pooled: torch.Tensor | None = None,
                right_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """left (B, N, D), left_mask (B, N) bool, right (B, M, D), right_mask (B, M) bool
        -> logits (B, num_outputs). ``*_pooled`` are accepted and ignored."""
        self.check_inputs(left, left_mask, right, right_mask)
        tokens = zero_padding(torch.cat([left, right], dim=1), torch.cat([left_mask, right_mask], dim=1))
        return self.ffnn(tokens.flatten(1))                                       # (B, (N+M)*D) -> (B, K)
