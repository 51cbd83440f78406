"""Stage two on a GPU: the head alone and the scoring core end to end, pairs/s, fp32 and bf16, over
a batch-size sweep. Without CUDA it prints "not measured" and exits 0.

    python benchmarks/gpu_score.py [--seconds 1.0] [--batch-sizes 4096,16384,65536] [--rows 100000]

Runs from a checkout without installing it (the repository root goes on ``sys.path``), without
Beam and without transformers: it imports ``pipeline.scoring_core`` (pyarrow, numpy, torch) and
``heads``, with any torch 2.x. Finishes in about 2-4 minutes on one GPU.

The model is the default student head (``dipair``, N=4, M=12, D=128, L=2, 1 attention head, FFN
1024), random weights; each store holds ``--rows`` float16 rows, every one of them real tokens.
Figures:

* ``head``: the head alone on tensors already on the device (``encoders.device.run_head``): the
  ceiling;
* ``end to end``: ``pipeline.scoring_core.score_batch`` on an Arrow batch of id pairs: validate,
  look both ids up, gather the rows, feed the head, build the output table. ``resident`` keeps
  both stores on the device (only row indices cross the bus); ``host`` gathers into the pinned
  buffer pool and copies each batch (overlapped with the head on a second stream).

Targets (issue 28, an H100-class GPU at N = 4, M = 12): head >= 5M pairs/s, end to end >= 50% of it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

N, M, D = 4, 12, 128


class HeadOnly(torch.nn.Module):
    """What ``HeadScorer`` needs of a student (``encoders.checkpoint.Student``, which imports
    transformers): the head, its number of outputs, and logits -> scores."""

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head
        self.config = SimpleNamespace(num_outputs=head.num_outputs)

    def score_tokens(self, left, left_mask, right, right_mask, left_pooled=None, right_pooled=None):
        return self.head(left, left_mask, right, right_mask, left_pooled=left_pooled, right_pooled=right_pooled)

    def scores_from_logits(self, logits):
        return torch.sigmoid(logits.float()[:, 0]), None


def store_table(prefix: str, rows: int, tokens: int, seed: int) -> pa.Table:
    """A float16 store of ``rows`` random rows with ids ``{prefix}{i}``, every token real."""
    generator = np.random.default_rng(seed)
    values = (generator.standard_normal((rows, tokens * D), dtype=np.float32) * 0.5).astype("<f2")
    return pa.table({"id": pa.array([f"{prefix}{i}" for i in range(rows)]),
                     "num_tokens": pa.array(np.full(rows, tokens, np.int32)),
                     "tokens": pa.FixedSizeBinaryArray.from_buffers(pa.binary(tokens * D * 2), rows,
                                                                    [None, pa.py_buffer(values.tobytes())])})


def pairs_table(pairs: int, rows: int, seed: int = 1) -> pa.Table:
    """``pairs`` id pairs over stores of ``rows`` rows a side (columns ``q``, ``p``)."""
    generator = np.random.default_rng(seed)
    left, right = generator.integers(0, rows, pairs), generator.integers(0, rows, pairs)
    return pa.table({"q": pa.array(np.char.add("l", left.astype(str))),
                     "p": pa.array(np.char.add("r", right.astype(str)))})


def write_pairs_file(path: Path, pairs: int, rows: int) -> None:
    pq.write_table(pairs_table(pairs, rows), path, row_group_size=65536)


class Core:
    """The scoring core, set up as a worker sets it up: both stores' lookups, the head's scorer."""

    def __init__(self, device: str, batch_size: int, rows: int, **scorer_options):
        from heads import build_head
        from pipeline.scoring_core import HeadScorer, PairColumns, StoreLookup

        torch.manual_seed(0)
        head = build_head("dipair", dim=D, left_tokens=N, right_tokens=M, num_outputs=1).eval()
        self.student = HeadOnly(head).to(device).eval()
        self.left = StoreLookup([store_table("l", rows, N, 1)], SimpleNamespace(dtype="float16", tokens_kept=N, dim=D,
                                                                                   pooled_dim=None))
        self.right = StoreLookup([store_table("r", rows, M, 2)], SimpleNamespace(dtype="float16", tokens_kept=M,
                                                                                    dim=D, pooled_dim=None))
        self.scorer = HeadScorer(self.student, device, batch_size, **scorer_options)
        self.columns = PairColumns(left_id="q", right_id="p")
        self.schema = pa.schema([("left_id", pa.string()), ("right_id", pa.string()), ("score", pa.float32())])

    def score_batch(self, table: pa.Table) -> pa.Table:
        from pipeline.scoring_core import score_batch
        scores, letters = score_batch(table, self.columns, [], self.left, self.right, self.scorer, self.schema)
        assert not letters
        return scores


def build_core(device: str, batch_size: int, rows: int, **scorer_options) -> Core:
    return Core(device, batch_size, rows, **scorer_options)


def rate(call, pairs: int, seconds: float, device: str) -> float:
    """Median pairs/s over repeats of ``call`` (which handles ``pairs`` pairs), after a warm-up."""
    call()
    if device == "cuda":
        torch.cuda.synchronize()
    runs, spent = [], 0.0
    while spent < seconds or len(runs) < 3:
        start = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        runs.append(time.perf_counter() - start)
        spent += runs[-1]
    return pairs / statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per figure")
    parser.add_argument("--batch-sizes", default="4096,16384,65536", help="pairs per head call, comma-separated")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of each store")
    parser.add_argument("--pairs", type=int, default=262_144, help="pairs of the end-to-end table")
    parser.add_argument("--cpu", action="store_true",
                        help="run the same measurements on the CPU (checks the script; not a GPU figure)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}; dipair N={N} M={M} D={D} L=2 FFN 1024")
    if args.cpu:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
        print(f"device: {torch.cuda.get_device_name(0)}")
    else:
        print("GPU scoring: not measured (torch sees no CUDA device)")
        return
    from encoders.device import run_head

    sizes = [int(s) for s in args.batch_sizes.split(",")]
    table = pairs_table(args.pairs, args.rows)
    print(f"{'precision':<9} {'batch':>7} {'head':>12} {'e2e resident':>13} {'e2e host':>12} "
          f"{'resident/head':>14} {'host/head':>10}")
    for precision in ("fp32", "bf16"):
        mixed = precision == "bf16"
        if mixed and device == "cpu":
            continue   # autocast is CUDA's only (encoders/device.py)
        for size in sizes:
            resident = build_core(device, size, args.rows, mixed_precision=mixed, resident=True)
            host = build_core(device, size, args.rows, mixed_precision=mixed, resident=False)
            generator = torch.Generator(device=device).manual_seed(0)
            left = (torch.randn(size, N, D, device=device, generator=generator),
                    torch.ones(size, N, dtype=torch.bool, device=device), None)
            right = (torch.randn(size, M, D, device=device, generator=generator),
                     torch.ones(size, M, dtype=torch.bool, device=device), None)
            head = rate(lambda: run_head(resident.student, left, right, device, mixed_precision=mixed),
                        size, args.seconds, device)
            on_device = rate(lambda: resident.score_batch(table), table.num_rows, args.seconds, device)
            copied = rate(lambda: host.score_batch(table), table.num_rows, args.seconds, device)
            print(f"{precision:<9} {size:>7} {head:>12,.0f} {on_device:>13,.0f} {copied:>12,.0f} "
                  f"{on_device / head:>13.2f}x {copied / head:>9.2f}x", flush=True)
            resident = host = None     # free both cores' device memory before the next size
            if device == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
