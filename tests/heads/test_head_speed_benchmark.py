"""benchmarks/head_speed.py: the FLOP count matches the figures it is compared with, and the
measuring functions return what they promise (tiny sizes, well under a second)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from heads import build_head

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "head_speed.py"
_spec = importlib.util.spec_from_file_location("head_speed", _PATH)
head_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(head_speed)


def test_flops_of_the_dipair_default():
    full = head_speed.dipair_flops_per_pair(4, 12, 128, 2, 1024, variant="full")
    # 21.2 MFLOP per pair for the full computation (FINDINGS.md), plus the 128 -> 1 classifier.
    assert full == 21_233_664 + 256
    assert head_speed.dipair_flops_per_pair(4, 12, 128, 2, 1024) == 12_263_680   # shortcut, the default
    assert head_speed.dipair_flops_per_pair(4, 12, 128, 2, 1024, variant="executed") == 11_280_640


def test_flops_by_hand_for_one_layer():
    s, d, f = 5, 4, 6
    shortcut = 2 * (2 * s * d * d + d * d + s * d + s * d + d * d + 2 * d * f) + 2 * d
    assert head_speed.dipair_flops_per_pair(2, 3, d, 1, f) == shortcut
    assert head_speed.dipair_flops_per_pair(2, 3, d, 1, f, variant="full") == \
        2 * (3 * s * d * d + 2 * s * s * d + s * d * d + 2 * s * d * f) + 2 * d


def test_unknown_flop_variant():
    with pytest.raises(ValueError, match="variant='fast' is not allowed: choose one of full, shortcut, executed"):
        head_speed.dipair_flops_per_pair(4, 12, 128, 2, 1024, variant="fast")


def test_measure_head_throughput_returns_rates():
    head = build_head("dipair", dim=16, left_tokens=2, right_tokens=3, ffn=32)
    result = head_speed.measure_head_throughput(head, batch_size=8, n=2, m=3, dim=16, seconds=0.01)
    assert result["batch_size"] == 8
    for precision in ("fp32", "bf16"):
        assert result[f"{precision}_pairs_per_s"] > 0
        assert result[f"{precision}_repeats"] >= 1
        assert result[f"{precision}_seconds_per_batch"] > 0
    assert not head.training


def test_measure_gemm_gflops():
    assert head_speed.measure_gemm_gflops(torch.float32, size=64, seconds=0.01) > 0
