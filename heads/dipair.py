"""DiPair-TSF: a small transformer over the merged N + M token embeddings (DiPair §3.5).

    tokens (B, N+M, D) = [left ; right]
      + position embedding (N+M, D) + segment embedding (left = 0, right = 1)
      -> LayerNorm (post-LN only, as BERT's embeddings)
      -> L encoder layers (self-attention with padded keys masked, feed-forward, residuals)
      -> output at position 0 -> [final LayerNorm when pre-LN] -> Linear -> (B, num_outputs)

This is the hot path of the product (billions of pairs), so the forward is written for CPU
throughput at batch sizes of thousands. The function is the textbook one (post-LN layers as
BERT's, pre-LN as GPT-2's); tests/heads/test_dipair_head.py checks it against a plain
implementation. What differs is only how it is computed:

* Padded positions are dropped before the first layer. Their outputs are never used (they
  are masked as keys everywhere), so projections, LayerNorms and feed-forward run on the
  real tokens only (``TokenRows``); attention scatters them back into the padded layout.
  Whatever padded positions hold therefore never reaches the arithmetic.
* Only position 0 of the last layer's output is used, so the last layer computes its
  query, attention output and feed-forward for position 0 alone.
* In that last layer the key and value projections are not applied to all N+M positions
  either: the score q.(W_k x_j + b_k) equals (W_k^T q).x_j plus a term that is the same for
  every j (softmax ignores it), and the attention-weighted sum of values sum_j p_j (W_v x_j
  + b_v) equals W_v (sum_j p_j x_j) + (sum_j p_j) b_v. So the query is pulled back through
  W_k once, the layer input is attended directly, and W_v is applied once per pair.
* On CPU, large batches are scored (without gradients) in chunks of ``chunk_pairs`` pairs. The
  batch as a whole would create intermediates of hundreds of MB (B*(N+M) rows x 1024 feed-forward
  units); chunks keep them in cache and let the allocator reuse them, which measured about
  twice as fast on a 2-core CPU. Chunking changes nothing but floating-point rounding.
* Attention over all positions uses ``scaled_dot_product_attention`` with a boolean mask
  on q, k, v that are strided views of one fused QKV projection (no copies).

Position 0 must be real in every pair (it is the [CLS] token); the heads' input check
enforces it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from heads._common import PairHead, check_positive_int, check_probability, compiling, linear_parameters, zero_padding

ACTIVATIONS = ("gelu", "relu")


@dataclass(frozen=True)
class DiPairConfig:
    """DiPair-TSF defaults: 2 layers, 1 attention head, 1024 feed-forward (DiPair §4.2).

    layers:          L, transformer layers.
    heads:           attention heads; must divide the token dimension D.
    ffn:             feed-forward (intermediate) size.
    dropout:         dropout on embeddings, attention probabilities, sublayer outputs and
                     the feed-forward hidden layer (training only).
    norm_first:      False = post-LN (BERT, as DiPair), True = pre-LN (+ a final LayerNorm).
    activation:      feed-forward activation: "gelu" (exact erf GELU, as BERT) or "relu"
                     (cheaper on CPU).
    layer_norm_eps:  epsilon of every LayerNorm.
    """
    layers: int = 2
    heads: int = 1
    ffn: int = 1024
    dropout: float = 0.1
    norm_first: bool = False
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("layers", "heads", "ffn"):
            check_positive_int(name, getattr(self, name))
        check_probability("dropout", self.dropout)
        if not isinstance(self.norm_first, bool):
            raise ValueError(f"norm_first={self.norm_first!r} is not allowed: use true or false")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not allowed: choose one of {', '.join(ACTIVATIONS)}")
        if not isinstance(self.layer_norm_eps, (int, float)) or isinstance(self.layer_norm_eps, bool) \
                or not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps!r} is not allowed: use a positive number")


class TokenRows:
    """The real tokens of a batch as the rows of one (T, D) matrix, and back.

    Outputs at padded positions are never used (padded keys are masked in every layer), so the
    layers before the last run their projections, LayerNorms and feed-forward on the T real
    tokens only; with padding that skips real work. Attention needs the padded (B, S, .)
    layout: ``scatter`` puts rows back with zeros at padded positions. With no padding both
    directions are free reshapes.
    """

    def __init__(self, mask: torch.Tensor, dense: bool = False):
        """mask: (B, S) bool, True = real token. ``dense``: keep every position (T = B*S), as under
        ``torch.compile``, where choosing by the mask's values would break the graph; the caller
        then zeroes padded positions, whose outputs are never used."""
        self.batch, self.length = mask.shape
        self.index = None if dense or bool(mask.all()) else mask.flatten().nonzero().squeeze(1)   # (T,)

    def gather(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, S, F) -> (T, F), the real positions in batch-major order."""
        flat = padded.reshape(self.batch * self.length, padded.shape[-1])
        return flat if self.index is None else flat.index_select(0, self.index)

    def scatter(self, rows: torch.Tensor) -> torch.Tensor:
        """(T, F) -> (B, S, F), zeros at padded positions."""
        features = rows.shape[-1]
        if self.index is None:
            return rows.view(self.batch, self.length, features)
        padded = rows.new_zeros(self.batch * self.length, features).index_copy(0, self.index, rows)
        return padded.view(self.batch, self.length, features)


class DiPairLayer(nn.Module):
    """One transformer encoder layer (single fused QKV projection), post- or pre-LN.

    ``forward`` maps the real tokens' rows, (T, D) -> (T, D); ``forward_first`` computes the
    output at position 0 only, (B, S, D) -> (B, D), for the last layer.
    """

    def __init__(self, dim: int, config: DiPairConfig):
        super().__init__()
        self.heads = config.heads
        self.head_dim = dim // config.heads
        self.dropout = config.dropout
        self.norm_first = config.norm_first
        self.activation = config.activation
        self.qkv = nn.Linear(dim, 3 * dim)            # rows: [W_q; W_k; W_v]
        self.attention_out = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(dim, config.ffn)
        self.ffn_out = nn.Linear(config.ffn, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, rows: TokenRows, attend: torch.Tensor) -> torch.Tensor:
        """x: (T, D) real tokens' rows; attend: (B, 1, 1, S) bool, True = key may be attended.
        -> (T, D)."""
        attention_in = self.attention_norm(x) if self.norm_first else x
        x = x + F.dropout(self._attention(attention_in, rows, attend), self.dropout, self.training)
        if self.norm_first:
            return x + F.dropout(self._feed_forward(self.ffn_norm(x)), self.dropout, self.training)
        x = self.attention_norm(x)
        return self.ffn_norm(x + F.dropout(self._feed_forward(x), self.dropout, self.training))

    def _attention(self, attention_in: torch.Tensor, rows: TokenRows, attend: torch.Tensor) -> torch.Tensor:
        """Self-attention with output projection: rows (T, D) -> rows (T, D)."""
        dim = attention_in.shape[-1]
        dropout = self.dropout if self.training else 0.0
        qkv = rows.scatter(self.qkv(attention_in))                                 # (B, S, 3D)
        batch, length, _ = qkv.shape
        # (B, S, 3, H, Dh) -> three (B, H, S, Dh) strided views; SDPA takes them as they are.
        q, k, v = qkv.view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=dropout)
        return self.attention_out(rows.gather(context.transpose(1, 2).reshape(batch, length, dim)))

    def forward_first(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """The layer's output at position 0 only. x: (B, S, D), zeros at padded positions;
        key_mask: (B, S) bool. -> (B, D).

        Keys and values still come from every real position; see the module docstring for
        why W_k and W_v need not be applied to each of them.
        """
        batch, length, dim = x.shape
        heads, head_dim = self.heads, self.head_dim
        weight, bias = linear_parameters(self.qkv)       # nn.Linear or int8 (heads._common.quantize_int8)
        w_q, w_k, w_v = weight.split(dim)                # each (D, D), output features x input
        b_q, _, b_v = bias.split(dim)                    # b_k shifts all scores of a query equally
        attention_in = self.attention_norm(x) if self.norm_first else x           # (B, S, D)
        query = F.linear(attention_in[:, 0], w_q, b_q) * (head_dim ** -0.5)                   # (B, D)
        # Per head h: q_h . (W_k,h x_j) = (W_k,h^T q_h) . x_j, one (B x Dh) @ (Dh x D) product per head.
        query_heads = query.view(batch, heads, head_dim).transpose(0, 1)                        # (H, B, Dh)
        pulled_back = torch.bmm(query_heads, w_k.view(heads, head_dim, dim)).transpose(0, 1)    # (B, H, D)
        scores = torch.bmm(pulled_back, attention_in.transpose(1, 2))                           # (B, H, S)
        scores = scores.masked_fill(~key_mask.unsqueeze(1), float("-inf"))
        probs = F.dropout(scores.softmax(dim=-1), self.dropout, self.training)                  # (B, H, S)
        mixed_input = torch.bmm(probs, attention_in)                                            # (B, H, D)
        # sum_j p_j (W_v,h x_j + b_v,h) = W_v,h (sum_j p_j x_j) + (sum_j p_j) b_v,h; sum_j p_j is 1
        # except under attention dropout, so it is kept rather than assumed.
        values = torch.bmm(mixed_input.transpose(0, 1), w_v.view(heads, head_dim, dim).transpose(1, 2))  # (H, B, Dh)
        values = values.transpose(0, 1) + probs.sum(dim=-1, keepdim=True) * b_v.view(heads, head_dim)   # (B, H, Dh)
        attended = self.attention_out(values.reshape(batch, dim))                   # (B, D)
        first = x[:, 0] + F.dropout(attended, self.dropout, self.training)
        if self.norm_first:
            return first + F.dropout(self._feed_forward(self.ffn_norm(first)), self.dropout, self.training)
        first = self.attention_norm(first)
        return self.ffn_norm(first + F.dropout(self._feed_forward(first), self.dropout, self.training))

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.ffn_in(x)
        hidden = F.gelu(hidden) if self.activation == "gelu" else F.relu(hidden)
        return self.ffn_out(F.dropout(hidden, self.dropout, self.training))


class DiPairHead(PairHead):
    """DiPair-TSF head. Call: see heads/_common.py; returns (B, num_outputs) logits."""

    name = "dipair"
    config_class = DiPairConfig

    def __init__(self, config: DiPairConfig = DiPairConfig(), *, dim: int, left_tokens: int,
                 right_tokens: int, num_outputs: int = 1):
        super().__init__(config, dim=dim, left_tokens=left_tokens, right_tokens=right_tokens,
                         num_outputs=num_outputs)
        if dim % config.heads:
            raise ValueError(f"heads={config.heads} is not allowed: it must divide the token dimension "
                             f"dim={dim}")
        length = left_tokens + right_tokens
        self.position = nn.Parameter(torch.empty(length, dim))     # (N+M, D)
        self.segment = nn.Parameter(torch.empty(2, dim))           # (2, D): left, right
        self.embedding_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps) if not config.norm_first else None
        self.layers = nn.ModuleList(DiPairLayer(dim, config) for _ in range(config.layers))
        self.final_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps) if config.norm_first else None
        self.classifier = nn.Linear(dim, num_outputs)
        # Pairs per chunk of a large batch on CPU (an execution setting, not architecture:
        # results differ only by rounding). 128 pairs x 16 tokens x 1024 feed-forward units x
        # 4 bytes = 8 MiB of feed-forward activations, which stays in the L3 cache.
        self.chunk_pairs = 128
        self._init_weights()

    def _init_weights(self) -> None:
        """BERT's initialisation: N(0, 0.02) weights and embeddings, zero biases, unit LayerNorms."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.segment, std=0.02)

    def forward(self, left: torch.Tensor, left_mask: torch.Tensor, right: torch.Tensor,
                right_mask: torch.Tensor, *, left_pooled: torch.Tensor | None = None,
                right_pooled: torch.Tensor | None = None) -> torch.Tensor:
        """left (B, N, D), left_mask (B, N) bool, right (B, M, D), right_mask (B, M) bool
        -> logits (B, num_outputs). ``*_pooled`` are accepted and ignored."""
        self.check_inputs(left, left_mask, right, right_mask)
        chunk = self.chunk_pairs
        # GPUs want the whole batch at once; so does training, where the backward of many chunks
        # costs more than the cache saves (measured: about 1.5x slower at batch 256 on CPU).
        if left.shape[0] <= chunk or left.device.type != "cpu" or torch.is_grad_enabled():
            return self._forward_pairs(left, left_mask, right, right_mask)
        return torch.cat([self._forward_pairs(*parts) for parts in zip(
            left.split(chunk), left_mask.split(chunk), right.split(chunk), right_mask.split(chunk))])

    def _forward_pairs(self, left: torch.Tensor, left_mask: torch.Tensor, right: torch.Tensor,
                       right_mask: torch.Tensor) -> torch.Tensor:
        """The head on one chunk: same arguments and result as ``forward``."""
        mask = torch.cat([left_mask, right_mask], dim=1)                          # (B, S)
        dense = compiling()
        rows = TokenRows(mask, dense)
        n = self.left_tokens
        # Position and segment embeddings are both per position: add them as one (S, D).
        position_segment = torch.cat([self.position[:n] + self.segment[0], self.position[n:] + self.segment[1]])
        # The gather drops padded positions, so whatever they hold never reaches a layer.
        tokens = torch.cat([left, right], dim=1)
        if dense:   # padded positions are computed on (never used): zero, so no NaN or inf they hold spreads
            tokens = zero_padding(tokens, mask)
        x = rows.gather(tokens + position_segment)                                 # (T, D)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = F.dropout(x, self.config.dropout, self.training)
        attend = mask[:, None, None, :]                                           # (B, 1, 1, S)
        for layer in self.layers[:-1]:
            x = layer(x, rows, attend)
        first = self.layers[-1].forward_first(rows.scatter(x), mask)              # (B, D)
        if self.final_norm is not None:
            first = self.final_norm(first)
        return self.classifier(first)
