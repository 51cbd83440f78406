"""The path that feeds the head (pipeline/head_feed.py), run on CPU as the tests' device: the
reusable host buffers, store rows resident on the device, stores decoded once on the CPU, and
scores equal to the plain path (decode every row to float32, run the head once) within 1e-5."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from heads import build_head
from pipeline import head_feed
from pipeline.head_feed import HeadScorer, HostBuffers
from pipeline.store_codec import SideArrays, dequantize, token_mask

N, M, D, H = 3, 5, 16, 8


class _Student(nn.Module):
    """The parts of a Student a HeadScorer uses (the real Student needs an encoder)."""

    def __init__(self, num_outputs: int, seed: int = 0, head: str = "dipair"):
        super().__init__()
        torch.manual_seed(seed)
        self.head = build_head(head, dim=D, left_tokens=N, right_tokens=M, num_outputs=num_outputs).eval()
        with torch.no_grad():
            for parameter in self.head.parameters():
                parameter.copy_(torch.randn_like(parameter) * 0.3)
        self.config = type("Config", (), {"num_outputs": num_outputs})()

    def score_tokens(self, left, left_mask, right, right_mask, left_pooled=None, right_pooled=None):
        if getattr(self.head, "reads_tokens", True):
            return self.head(left, left_mask, right, right_mask)
        return self.head(left, left_mask, right, right_mask, left_pooled=left_pooled, right_pooled=right_pooled)

    def scores_from_logits(self, logits):
        if logits.shape[1] == 1:
            return torch.sigmoid(logits[:, 0]), None
        probs = torch.softmax(logits, 1)
        return probs[:, -1], probs


def store(rows: int, tokens: int, dtype: str, seed: int) -> SideArrays:
    """A store's arrays as a StoreLookup holds them (int8 with per-row scales; pooled float32)."""
    generator = np.random.default_rng(seed)
    values = generator.standard_normal((rows, tokens, D)).astype(np.float32)
    if dtype == "int8":
        scales = (np.abs(values).reshape(rows, -1).max(1) / 127).astype(np.float32)
        quantized = np.clip(np.rint(values / scales[:, None, None]), -127, 127).astype(np.int8)
    else:
        scales, quantized = None, values.astype("<f2")
    return SideArrays(quantized, scales, generator.integers(1, tokens + 1, rows).astype(np.int32),
                      generator.standard_normal((rows, H)).astype(np.float32))


def plain_scores(student, left: SideArrays, left_rows, right: SideArrays, right_rows):
    """Every pair's rows decoded to float32 on the host, the head run once over all of them."""
    def side(arrays, rows, tokens):
        values = torch.from_numpy(arrays.tokens[rows].astype(np.float32))
        scales = None if arrays.scales is None else torch.from_numpy(arrays.scales[rows])
        return dequantize(values, scales), token_mask(torch.from_numpy(arrays.num_tokens[rows]).long(), tokens)
    with torch.inference_mode():
        logits = student.score_tokens(*side(left, left_rows, N), *side(right, right_rows, M),
                                      left_pooled=torch.from_numpy(left.pooled[left_rows]),
                                      right_pooled=torch.from_numpy(right.pooled[right_rows]))
        score, probs = student.scores_from_logits(logits)
    return score.numpy(), None if probs is None else probs.numpy()


# How a scorer gets a broadcast store's rows: gathered per batch into the host buffers, held
# resident in the stored dtype (the CUDA path, run here on the CPU), or decoded once (the CPU path).
PATHS = {"host-buffers": {"resident": False, "decode_once": False},
         "resident": {"resident": True, "decode_once": False},
         "decoded": {"decode_once": True}}


@pytest.mark.parametrize("dtype", ["float16", "int8"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("num_outputs", [1, 3])
def test_scores_equal_the_plain_path(dtype, path, num_outputs):
    student = _Student(num_outputs)
    left, right = store(40, N, dtype, 1), store(30, M, dtype, 2)
    generator = np.random.default_rng(3)
    left_rows, right_rows = generator.integers(0, 40, 203), generator.integers(0, 30, 203)
    expected, expected_probs = plain_scores(student, left, left_rows, right, right_rows)
    scorer = HeadScorer(student, "cpu", batch_size=64, **PATHS[path])
    scores, probs = scorer.score_rows(left, left_rows, right, right_rows)
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    if num_outputs > 1:
        np.testing.assert_allclose(probs, expected_probs, atol=1e-5, rtol=0)
    # Rows already gathered (the shuffle join's path) score the same.
    gathered, _ = scorer.score(left.take(left_rows), right.take(right_rows))
    np.testing.assert_allclose(gathered, expected, atol=1e-5, rtol=0)


def test_the_host_buffers_are_reused_across_batches():
    """Gathering into the pool (pinning off, as on CPU): after the first two batches (one per
    slot) no batch allocates, and every batch is written into one of the same two buffers."""
    student = _Student(1)
    left, right = store(50, N, "float16", 1), store(50, M, "float16", 2)
    scorer = HeadScorer(student, "cpu", batch_size=16, resident=False, decode_once=False)
    assert not scorer.buffers.pin
    rows = np.arange(50)
    seen = set()
    original = np.take

    def recording_take(array, indices, axis=None, out=None, **kwargs):
        if out is not None:
            seen.add(out.__array_interface__["data"][0])
        return original(array, indices, axis=axis, out=out, **kwargs)

    scorer.score_rows(left, rows[:32], right, rows[:32])     # two batches: both slots filled
    made = scorer.buffers.allocations
    np.take = recording_take
    try:
        for _ in range(3):
            scorer.score_rows(left, rows[:48], right, rows[:48])
    finally:
        np.take = original
    assert scorer.buffers.allocations == made == 2 * 2 * 3   # 2 slots x 2 sides x (tokens, num_tokens, pooled) ...
    assert len(seen) == made                                  # ... and only those buffers are written


def test_a_buffer_grows_once_for_a_larger_batch_then_is_reused():
    buffers = HostBuffers(torch, pin=False, slots=2)
    like = np.zeros((10, N, D), "<f2")
    first, _ = buffers.buffer(0, "tokens", 4, like)
    again, tensor = buffers.buffer(0, "tokens", 3, like)
    assert buffers.allocations == 1 and again.ctypes.data == first.ctypes.data and tuple(tensor.shape) == (3, N, D)
    buffers.buffer(0, "tokens", 8, like)
    assert buffers.allocations == 2
    assert [buffers.next_slot() for _ in range(4)] == [0, 1, 0, 1]


def test_no_pairs_give_no_scores():
    scorer = HeadScorer(_Student(3), "cpu", batch_size=16)
    scores, probs = scorer.score_rows(store(4, N, "float16", 1), np.zeros(0, np.int64),
                                      store(4, M, "float16", 2), np.zeros(0, np.int64))
    assert scores.shape == (0,) and probs.shape == (0, 3)


@pytest.mark.parametrize("head", ["dipair", "pooled-cos"])
def test_a_store_is_decoded_once_and_its_rows_gathered_into_reused_buffers(head):
    """The CPU default for stores that fit: decoded on the first batch only, later batches (and
    later calls with the same stores) gather decoded rows into the pool, and score as the plain path."""
    student = _Student(1, head=head)
    left, right = store(50, N, "float16", 1), store(40, M, "float16", 2)
    generator = np.random.default_rng(4)
    left_rows, right_rows = generator.integers(0, 50, 150), generator.integers(0, 40, 150)
    expected, _ = plain_scores(student, left, left_rows, right, right_rows)
    scorer = HeadScorer(student, "cpu", batch_size=32)
    first, _ = scorer.score_rows(left, left_rows, right, right_rows)
    held = dict(scorer._decoded_stores)
    made = scorer.buffers.allocations
    again, _ = scorer.score_rows(left, left_rows, right, right_rows)
    np.testing.assert_allclose(first, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(again, first)
    assert len(held) == 2 and all(scorer._decoded_stores[key] is rows for key, rows in held.items())
    # 2 slots x 2 sides x (tokens, mask, pooled) for a head that reads tokens, pooled only for one that does not.
    assert scorer.buffers.allocations == made == 2 * 2 * (3 if head == "dipair" else 1)


def test_stores_whose_decoded_rows_do_not_fit_are_converted_per_batch(monkeypatch):
    monkeypatch.setattr(head_feed, "DECODED_LIMIT_BYTES", 0)
    student = _Student(1)
    left, right = store(20, N, "int8", 1), store(20, M, "int8", 2)
    rows = np.arange(20)
    scorer = HeadScorer(student, "cpu", batch_size=8)
    scores, _ = scorer.score_rows(left, rows, right, rows)
    assert scorer._decoded_stores == {}
    np.testing.assert_allclose(scores, plain_scores(student, left, rows, right, rows)[0], atol=1e-5, rtol=0)


def test_the_compiled_scorer_equals_the_plain_path():
    """``--compile`` as a run uses it: HeadScorer(compile=True) compiles the head with torch.compile's
    default backend (inductor, generated C++ on CPU) and dynamic shapes, and its scores equal the
    plain path within 1e-5 over batches of two sizes (16 and the last 2 of 50 pairs). Skipped where
    torch.compile is not supported (the scorer refuses it in one line there)."""
    from pipeline.head_feed import head_option_refused

    if head_option_refused("cpu", True, None):
        pytest.skip(head_option_refused("cpu", True, None))
    torch._dynamo.reset()
    left, right = store(20, N, "float16", 1), store(30, M, "float16", 2)
    generator = np.random.default_rng(3)
    left_rows, right_rows = generator.integers(0, 20, 50), generator.integers(0, 30, 50)
    expected, _ = plain_scores(_Student(1), left, left_rows, right, right_rows)
    scorer = HeadScorer(_Student(1), "cpu", 16, compile=True)
    with torch.inference_mode():
        scores, _ = scorer.score_rows(left, left_rows, right, right_rows)
    assert type(scorer.student.head).__name__ == "OptimizedModule"    # it really ran compiled
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
