"""score_pairs' opt-in speed options end to end, on a tiny random student: the scores they give
stay within stated bounds of the default run's (a float16 store, the fp32 head). Their quality on
real dev sets is measured by benchmarks/speed_options_quality.py (docs/benchmarks.md).

Bounds, in score units (probabilities here):
* ``--head-quantize int8``: |difference| <= 0.02 (int8 weights per tensor, activations per batch:
  about 1% of each layer's range; the heads' own bound is in tests/heads/test_compile_quantize.py);
* ``--dtype int8`` (the store): |difference| <= 0.02 (each row's tokens rounded to 1/254 of its
  largest magnitude).
Neither may equal the default exactly (then the option would not have been applied).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.score_pairs import ScorePairsJob, run

PAIRS = [{"pair": f"p{i}", "left": f"question {i} about {i % 5}", "right": f"answer {i % 7} to it"}
         for i in range(40)]
BOUND = 0.02


@pytest.fixture(scope="module")
def nights(tmp_path_factory, tiny_checkpoint) -> Path:
    """pairs.jsonl and two night-one runs over it: night-float16/store and night-int8/store."""
    tmp = tmp_path_factory.mktemp("speed-options")
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    for dtype in ("float16", "int8"):
        run(ScorePairsJob(pairs=(str(tmp / "pairs.jsonl"),), output=str(tmp / f"night-{dtype}"),
                          model_dir=tiny_checkpoint, keep_cols=("pair",), dtype=dtype, device="cpu"), [], argv=[])
    return tmp


def scores(output: Path) -> np.ndarray:
    table = pq.read_table(output / "scores")
    by_pair = dict(zip(table.column("pair").to_pylist(), table.column("score").to_numpy()))
    return np.array([by_pair[p["pair"]] for p in PAIRS], dtype=np.float64)


def test_an_int8_head_stays_within_its_bound_of_the_fp32_head(tmp_path, nights, tiny_checkpoint):
    run(ScorePairsJob(pairs=(str(nights / "pairs.jsonl"),), output=str(tmp_path / "int8"), model_dir=tiny_checkpoint,
                      keep_cols=("pair",), store=str(nights / "night-float16" / "store"), head_quantize="int8",
                      device="cpu"), [], argv=[])
    fp32, int8 = scores(nights / "night-float16"), scores(tmp_path / "int8")
    assert not np.array_equal(int8, fp32)
    assert np.abs(int8 - fp32).max() <= BOUND


def test_an_int8_store_stays_within_its_bound_of_the_float16_store(nights):
    """Both night-one runs encoded the same texts with the same student; only the stored dtype
    differs (and the int8 one scored from its own int8 rows)."""
    float16, int8 = scores(nights / "night-float16"), scores(nights / "night-int8")
    assert not np.array_equal(int8, float16)
    assert np.abs(int8 - float16).max() <= BOUND
