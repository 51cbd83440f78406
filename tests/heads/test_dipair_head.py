"""DiPair-TSF: the optimised forward (last layer at position 0 only, key/value projections
folded into the query and the attended input, chunked batches) equals a plain, textbook
computation with the same weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from heads import build_head
from heads.dipair import DiPairHead

N, M, D = 3, 5, 8


def reference_logits(head: DiPairHead, left, left_mask, right, right_mask) -> torch.Tensor:
    """DiPair-TSF computed the long way, eval mode: every layer at every position, explicit
    per-head attention with -inf on padded keys, first position at the end."""
    config = head.config
    x = torch.cat([left, right], dim=1)                                   # (B, S, D)
    mask = torch.cat([left_mask, right_mask], dim=1)                      # (B, S)
    x = x * mask.unsqueeze(-1)                                            # inputs here are finite
    segments = torch.tensor([0] * left.shape[1] + [1] * right.shape[1])
    x = x + head.position + head.segment[segments]
    if not config.norm_first:
        x = F.layer_norm(x, (D,), head.embedding_norm.weight, head.embedding_norm.bias, config.layer_norm_eps)
    batch, length, _ = x.shape
    heads, head_dim = config.heads, D // config.heads
    for layer in head.layers:
        def norm(t, module):
            return F.layer_norm(t, (D,), module.weight, module.bias, config.layer_norm_eps)

        attention_in = norm(x, layer.attention_norm) if config.norm_first else x
        qkv = attention_in @ layer.qkv.weight.T + layer.qkv.bias
        q, k, v = (t.reshape(batch, length, heads, head_dim).transpose(1, 2) for t in qkv.split(D, dim=-1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)            # (B, H, S, S)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, D)
        attended = context @ layer.attention_out.weight.T + layer.attention_out.bias

        def feed_forward(t):
            hidden = t @ layer.ffn_in.weight.T + layer.ffn_in.bias
            hidden = F.gelu(hidden) if config.activation == "gelu" else torch.relu(hidden)
            return hidden @ layer.ffn_out.weight.T + layer.ffn_out.bias

        if config.norm_first:
            x = x + attended
            x = x + feed_forward(norm(x, layer.ffn_norm))
        else:
            x = norm(x + attended, layer.attention_norm)
            x = norm(x + feed_forward(x), layer.ffn_norm)
    first = x[:, 0]
    if config.norm_first:
        first = F.layer_norm(first, (D,), head.final_norm.weight, head.final_norm.bias, config.layer_norm_eps)
    return first @ head.classifier.weight.T + head.classifier.bias


def random_inputs(batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(batch, N, D, generator=generator)
    right = torch.randn(batch, M, D, generator=generator)
    left_mask = torch.rand(batch, N, generator=generator) > 0.3
    right_mask = torch.rand(batch, M, generator=generator) > 0.3
    left_mask[:, 0] = right_mask[:, 0] = True
    return left, left_mask, right, right_mask


def randomised_head(seed: int = 0, num_outputs: int = 2, **options) -> DiPairHead:
    """A head whose every parameter (biases, LayerNorms, embeddings) is random and O(1), so a
    mistake in any of them shows; BERT's small initialisation would hide some."""
    torch.manual_seed(seed)
    head = build_head("dipair", dim=D, left_tokens=N, right_tokens=M, num_outputs=num_outputs, **options)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.5)
    return head.eval()


@pytest.mark.parametrize("options", [
    dict(),
    dict(norm_first=True),
    dict(heads=2),
    dict(heads=4, norm_first=True),
    dict(layers=1),
    dict(layers=1, norm_first=True, heads=2),
    dict(layers=3, activation="relu", ffn=12),
])
def test_equals_reference_computation(options):
    head = randomised_head(**options)
    inputs = random_inputs(batch=10)
    with torch.no_grad():
        expected = reference_logits(head, *inputs)
        actual = head(*inputs)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_equals_reference_when_training_without_dropout():
    head = randomised_head(dropout=0.0).train()
    inputs = random_inputs(batch=4)
    with torch.no_grad():
        torch.testing.assert_close(head(*inputs), reference_logits(head, *inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_pairs", [2, 7])
def test_chunking_changes_nothing(chunk_pairs):
    head = randomised_head()
    inputs = random_inputs(batch=17)
    with torch.no_grad():
        head.chunk_pairs = 1000
        whole = head(*inputs)
        head.chunk_pairs = chunk_pairs
        chunked = head(*inputs)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_chunking_keeps_gradients():
    inputs = random_inputs(batch=9)
    gradients = []
    for chunk_pairs in (1000, 4):
        head = randomised_head(dropout=0.0).train()
        head.chunk_pairs = chunk_pairs
        head(*inputs).sum().backward()
        gradients.append({name: p.grad for name, p in head.named_parameters()})
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-4, atol=1e-5, msg=name)


def test_fully_padded_sides_except_the_first_token():
    head = randomised_head()
    left, left_mask, right, right_mask = random_inputs(batch=3)
    left_mask[:, 1:] = False
    right_mask[:, 1:] = False
    with torch.no_grad():
        torch.testing.assert_close(head(left, left_mask, right, right_mask),
                                   reference_logits(head, left, left_mask, right, right_mask), rtol=1e-5, atol=1e-5)


def test_bf16_autocast_is_close_to_fp32():
    head = build_head("dipair", dim=32, left_tokens=N, right_tokens=M, ffn=64).eval()
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randn(8, N, 32, generator=generator), torch.randn(8, M, 32, generator=generator)
    left_mask, right_mask = torch.ones(8, N, dtype=torch.bool), torch.ones(8, M, dtype=torch.bool)
    with torch.inference_mode():
        fp32 = head(left, left_mask, right, right_mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = head(left, left_mask, right, right_mask)
    torch.testing.assert_close(bf16.float(), fp32, rtol=0.05, atol=0.05)


def test_dropout_makes_training_stochastic():
    head = randomised_head(dropout=0.3).train()
    inputs = random_inputs(batch=4)
    with torch.no_grad():
        assert not torch.equal(head(*inputs), head(*inputs))
