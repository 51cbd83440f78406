"""The call every head shares: shapes, padding never matters, gradients reach every
parameter, pooled keywords are accepted, bad inputs are refused up front."""
from __future__ import annotations

import pytest
import torch

from heads import HEAD_NAMES, build_head

N, M, D, B = 3, 5, 8, 6
ONE_OUTPUT_ONLY = {"de-cos", "pooled-cos"}
SHAPE_CASES = [(name, k) for name in HEAD_NAMES for k in (1, 3) if not (name in ONE_OUTPUT_ONLY and k != 1)]


def make_inputs(seed: int = 0, batch: int = B, pooled: int = 7):
    """Random tokens and masks (position 0 always real; row 1 has only its first tokens real)."""
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(batch, N, D, generator=generator)
    right = torch.randn(batch, M, D, generator=generator)
    left_mask = torch.rand(batch, N, generator=generator) > 0.4
    right_mask = torch.rand(batch, M, generator=generator) > 0.4
    left_mask[:, 0] = right_mask[:, 0] = True
    if batch > 1:
        left_mask[1, 1:] = right_mask[1, 1:] = False
    return dict(left=left, left_mask=left_mask, right=right, right_mask=right_mask,
                left_pooled=torch.randn(batch, pooled, generator=generator),
                right_pooled=torch.randn(batch, pooled, generator=generator))


def call(head, inputs, **overrides):
    inputs = {**inputs, **overrides}
    return head(inputs["left"], inputs["left_mask"], inputs["right"], inputs["right_mask"],
                left_pooled=inputs["left_pooled"], right_pooled=inputs["right_pooled"])


def build(name: str, num_outputs: int = 1, **options):
    torch.manual_seed(0)
    return build_head(name, dim=D, left_tokens=N, right_tokens=M, num_outputs=num_outputs, **options)


@pytest.mark.parametrize("name,num_outputs", SHAPE_CASES)
def test_logits_shape_and_dtype(name, num_outputs):
    head = build(name, num_outputs).eval()
    with torch.no_grad():
        logits = call(head, make_inputs())
    assert logits.shape == (B, num_outputs)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("batch", [0, 1])
def test_batch_of_zero_and_one(name, batch):
    head = build(name).eval()
    with torch.no_grad():
        assert call(head, make_inputs(batch=batch)).shape == (batch, 1)


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("garbage", [1e4, -3e4, 0.0, float("nan"), float("inf")])
def test_padded_values_do_not_change_logits(name, garbage):
    head = build(name, 1 if name in ONE_OUTPUT_ONLY else 3).eval()
    inputs = make_inputs()
    noise = garbage * torch.randn(B, max(N, M), D).abs()
    noisy_left = torch.where(inputs["left_mask"].unsqueeze(-1), inputs["left"], noise[:, :N])
    noisy_right = torch.where(inputs["right_mask"].unsqueeze(-1), inputs["right"], -noise[:, :M])
    with torch.no_grad():
        clean = call(head, inputs)
        noisy = call(head, inputs, left=noisy_left, right=noisy_right)
    torch.testing.assert_close(noisy, clean, rtol=0, atol=0)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_each_pair_is_scored_on_its_own(name):
    """Row i's logits depend only on row i (no leak across the batch, e.g. through chunking)."""
    head = build(name).eval()
    inputs = make_inputs()
    with torch.no_grad():
        together = call(head, inputs)
        alone = torch.cat([call(head, {k: v[i:i + 1] for k, v in inputs.items()}) for i in range(B)])
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in HEAD_NAMES if n != "pooled-cos"])
def test_gradients_reach_every_parameter(name):
    head = build(name, 1 if name in ONE_OUTPUT_ONLY else 3).train()
    logits = call(head, make_inputs())
    logits.square().sum().backward()
    for parameter_name, parameter in head.named_parameters():
        assert parameter.grad is not None, f"{name}: no gradient for {parameter_name}"
        assert torch.isfinite(parameter.grad).all(), f"{name}: non-finite gradient for {parameter_name}"
        assert parameter.grad.abs().sum() > 0, f"{name}: zero gradient for {parameter_name}"


def test_pooled_cos_has_no_parameters():
    assert list(build("pooled-cos").parameters()) == []


@pytest.mark.parametrize("name", [n for n in HEAD_NAMES if n != "pooled-cos"])
def test_pooled_embeddings_are_optional_and_ignored(name):
    head = build(name).eval()
    inputs = make_inputs()
    with torch.no_grad():
        with_pooled = call(head, inputs)
        without = head(inputs["left"], inputs["left_mask"], inputs["right"], inputs["right_mask"])
    torch.testing.assert_close(without, with_pooled, rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in HEAD_NAMES if n != "pooled-cos"])
def test_dropout_only_in_training(name):
    head = build(name, dropout=0.5) if name != "de-cos" else build(name)
    inputs = make_inputs()
    head.eval()
    with torch.no_grad():
        assert torch.equal(call(head, inputs), call(head, inputs))


@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("argument,bad,message", [
    ("left", torch.zeros(B, N + 1, D), r"left has shape \(6, 4, 8\)"),
    ("right", torch.zeros(B, M, D + 1), r"right has shape \(6, 5, 9\)"),
    ("right", torch.zeros(B + 1, M, D), r"right has shape \(7, 5, 8\)"),
    ("left", torch.zeros(B, N, D, dtype=torch.long), "floating point"),
    ("left_mask", torch.ones(B, N), "torch.bool"),
    ("right_mask", torch.ones(B, M + 1, dtype=torch.bool), r"right_mask has shape \(6, 6\)"),
    ("right_mask", torch.arange(B * M).reshape(B, M) % 7 != 0, r"right_mask\[:, 0\] is False for some pairs"),
])
def test_bad_inputs_are_refused(name, argument, bad, message):
    head = build(name).eval()
    with pytest.raises(ValueError, match=message):
        call(head, make_inputs(), **{argument: bad})


def test_pooled_cos_needs_pooled_embeddings():
    head = build("pooled-cos")
    inputs = make_inputs()
    with pytest.raises(ValueError, match="needs left_pooled and right_pooled"):
        head(inputs["left"], inputs["left_mask"], inputs["right"], inputs["right_mask"])
    with pytest.raises(ValueError, match="must have the same shape"):
        call(head, inputs, right_pooled=torch.zeros(B, 9))
    with pytest.raises(ValueError, match=r"left_pooled has shape \(3, 7\)"):
        call(head, inputs, left_pooled=torch.zeros(3, 7))
