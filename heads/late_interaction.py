"""LI: late interaction (late-interaction-ssm §2): each text's tokens are attended with the
*other* text's first ([CLS]) token as the query.

    u = left[:, 0], v = right[:, 0]                                    (B, D)
    left_attended  = MultiheadAttention(query = v, keys = values = left tokens,  left padding masked)
    right_attended = MultiheadAttention(query = u, keys = values = right tokens, right padding masked)
    [u, v, left_attended, right_attended]                              (B, 4D)
      -> (Linear -> ReLU -> Dropout) per hidden size -> Linear -> (B, num_outputs)

The paper classifies the two attended vectors alone with one layer; the first tokens are
added here so that LI contains DE-FFNN's inputs and can only add to them, and the
classifier is the same (128, 128) FFNN as DE-FFNN's, so the two compare like for like.
Each side has its own attention module: the two texts of a pair usually play different
roles (query x product), and the extra weights are a few D x D matrices.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from heads._common import PairHead, check_hidden_sizes, check_positive_int, check_probability, ffnn, zero_padding


@dataclass(frozen=True)
class LIConfig:
    """heads:   attention heads; None = 4 when 4 divides D, else 1 (the built head stores the
             number it chose, so its options rebuild it exactly).
    hidden:  classifier FFNN hidden sizes.
    dropout: on the attention probabilities and after each hidden ReLU."""
    heads: int | None = None
    hidden: tuple[int, ...] = (128, 128)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.heads is not None:
            check_positive_int("heads", self.heads)
        object.__setattr__(self, "hidden", check_hidden_sizes("hidden", self.hidden))
        check_probability("dropout", self.dropout)


class LateInteractionHead(PairHead):
    """LI head. Call: see heads/_common.py; returns (B, num_outputs) logits."""

    name = "li"
    config_class = LIConfig

    def __init__(self, config: LIConfig = LIConfig(), *, dim: int, left_tokens: int,
                 right_tokens: int, num_outputs: int = 1):
        if config.heads is None:
            config = dataclasses.replace(config, heads=4 if dim % 4 == 0 else 1)
        super().__init__(config, dim=dim, left_tokens=left_tokens, right_tokens=right_tokens,
                         num_outputs=num_outputs)
        if dim % config.heads:
            raise ValueError(f"heads={config.heads} is not allowed: it must divide the token dimension "
                             f"dim={dim}")
        self.left_attention = nn.MultiheadAttention(dim, config.heads, dropout=config.dropout, batch_first=True)
        self.right_attention = nn.MultiheadAttention(dim, config.heads, dropout=config.dropout, batch_first=True)
        self.ffnn = ffnn(4 * dim, config.hidden, num_outputs, config.dropout)

    def forward(self, left: torch.Tensor, left_mask: torch.Tensor, right: torch.Tensor,
                right_mask: torch.Tensor, *, left_pooled: torch.Tensor | None = None,
                right_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """left (B, N, D), left_mask (B, N) bool, right (B, M, D), right_mask (B, M) bool
        -> logits (B, num_outputs). ``*_pooled`` are accepted and ignored."""
        self.check_inputs(left, left_mask, right, right_mask)
        if left.shape[0] == 0:   # nn.MultiheadAttention cannot reshape an empty batch
            return left.new_zeros(0, self.num_outputs)
        left = zero_padding(left, left_mask)
        right = zero_padding(right, right_mask)
        u, v = left[:, :1], right[:, :1]                                          # (B, 1, D) queries
        # key_padding_mask: True = ignore, the opposite of our masks.
        left_attended, _ = self.left_attention(v, left, left, key_padding_mask=~left_mask, need_weights=False)
        right_attended, _ = self.right_attention(u, right, right, key_padding_mask=~right_mask, need_weights=False)
        features = torch.cat([u, v, left_attended, right_attended], dim=-1).squeeze(1)   # (B, 4D)
        return self.ffnn(features)
