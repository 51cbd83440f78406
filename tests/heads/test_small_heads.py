"""Known values for the baseline heads: each equals its formula computed by hand with the
head's own weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from heads import build_head

N, M, D, B = 3, 4, 8, 5


def inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(B, N, D, generator=generator)
    right = torch.randn(B, M, D, generator=generator)
    left_mask = torch.rand(B, N, generator=generator) > 0.3
    right_mask = torch.rand(B, M, generator=generator) > 0.3
    left_mask[:, 0] = right_mask[:, 0] = True
    return left, left_mask, right, right_mask


def build(name: str, num_outputs: int = 1, **options):
    torch.manual_seed(0)
    return build_head(name, dim=D, left_tokens=N, right_tokens=M, num_outputs=num_outputs, **options).eval()


def test_de_cos_is_scale_times_cosine_plus_bias():
    head = build("de-cos")
    assert head.scale.item() == 10.0 and head.bias.item() == -5.0
    with torch.no_grad():
        head.scale.fill_(7.0)
        head.bias.fill_(-2.5)
    left, left_mask, right, right_mask = inputs()
    u, v = left[:, 0], right[:, 0]
    cosine = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    with torch.no_grad():
        torch.testing.assert_close(head(left, left_mask, right, right_mask), (7.0 * cosine - 2.5).unsqueeze(-1))


def test_de_cos_values_at_the_extremes():
    head = build("de-cos")
    left, left_mask, right, right_mask = inputs()
    with torch.no_grad():
        same = head(left, left_mask, left[:, :1].expand(B, M, D).clone(), right_mask)
        opposite = head(left, left_mask, -left[:, :1].expand(B, M, D), right_mask)
    torch.testing.assert_close(same, torch.full((B, 1), 5.0))
    torch.testing.assert_close(opposite, torch.full((B, 1), -15.0))


def test_pooled_cos_is_the_cosine_of_the_pooled_embeddings():
    head = build("pooled-cos")
    assert head.score_kind == "cosine"
    left, left_mask, right, right_mask = inputs()
    left_pooled = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    right_pooled = torch.tensor([[2.0, 0.0], [-1.0, -1.0], [4.0, 3.0], [1.0, 0.0], [1.0, math.sqrt(3.0)]])
    expected = torch.tensor([[1.0], [-1.0], [24.0 / 25.0], [0.0], [0.5]])
    torch.testing.assert_close(head(left, left_mask, right, right_mask,
                                    left_pooled=left_pooled, right_pooled=right_pooled), expected)


def test_de_ffnn_reads_u_v_difference_and_product():
    head = build("de-ffnn", num_outputs=3)
    left, left_mask, right, right_mask = inputs()
    u, v = left[:, 0], right[:, 0]
    features = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
    first, _, _, second, _, _, last = head.ffnn
    expected = last(torch.relu(second(torch.relu(first(features)))))
    with torch.no_grad():
        torch.testing.assert_close(head(left, left_mask, right, right_mask), expected)


def test_dipair_ffnn_flattens_the_tokens_with_padding_zeroed():
    head = build("dipair-ffnn", hidden=[16])
    left, left_mask, right, right_mask = inputs()
    flat = torch.cat([left * left_mask.unsqueeze(-1), right * right_mask.unsqueeze(-1)], dim=1).reshape(B, -1)
    hidden, _, _, out = head.ffnn
    assert hidden.in_features == (N + M) * D
    with torch.no_grad():
        torch.testing.assert_close(head(left, left_mask, right, right_mask), out(torch.relu(hidden(flat))))


def _attend(attention: torch.nn.MultiheadAttention, query, tokens, mask):
    """Multi-head attention by hand: query (B, D) over tokens (B, T, D), padded keys masked."""
    heads, head_dim = attention.num_heads, D // attention.num_heads
    w_q, w_k, w_v = attention.in_proj_weight.split(D)
    b_q, b_k, b_v = attention.in_proj_bias.split(D)
    q = (query @ w_q.T + b_q).view(B, heads, 1, head_dim)
    k = (tokens @ w_k.T + b_k).view(B, -1, heads, head_dim).transpose(1, 2)
    v = (tokens @ w_v.T + b_v).view(B, -1, heads, head_dim).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).masked_fill(~mask[:, None, None, :], float("-inf"))
    context = (scores.softmax(-1) @ v).reshape(B, D)
    return attention.out_proj(context)


@pytest.mark.parametrize("heads", [1, 4])
def test_late_interaction_attends_each_side_with_the_other_first_token(heads):
    head = build("li", heads=heads, hidden=[16])
    left, left_mask, right, right_mask = inputs()
    u, v = left[:, 0], right[:, 0]
    with torch.no_grad():
        left_attended = _attend(head.left_attention, v, left, left_mask)
        right_attended = _attend(head.right_attention, u, right, right_mask)
        hidden, _, _, out = head.ffnn
        expected = out(torch.relu(hidden(torch.cat([u, v, left_attended, right_attended], dim=-1))))
        torch.testing.assert_close(head(left, left_mask, right, right_mask), expected, rtol=1e-5, atol=1e-5)


def test_late_interaction_with_one_real_token_attends_to_it_alone():
    """With only [CLS] real, the attended vector is that token's value, whatever the query."""
    head = build("li")
    left, left_mask, right, right_mask = inputs()
    left_mask[:, 1:] = False
    attention = head.left_attention
    value = left[:, 0] @ attention.in_proj_weight[2 * D:].T + attention.in_proj_bias[2 * D:]
    with torch.no_grad():
        expected = attention.out_proj(value)
        actual, _ = attention(right[:, :1], left, left, key_padding_mask=~left_mask, need_weights=False)
    torch.testing.assert_close(actual.squeeze(1), expected, rtol=1e-5, atol=1e-6)
    assert F.cosine_similarity(expected, expected).min() > 0.99  # sanity: finite, non-zero
