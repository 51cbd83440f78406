"""The scoring core's data path without Beam: pairs/s of ``pipeline.scoring_core.score_batch`` with
the free head (pooled cosine), and where the time goes.

    python benchmarks/core_path.py [--pairs 200000] [--rows 2000] [--profile] [--repo DIR]

Id pairs (``benchmarks/gpu_score.pairs_table``) over two float16 stores of ``--rows`` rows (N=4 and
M=12 tokens of D=128, pooled H=384), scored in Arrow batches of 8,192 pairs on one thread (timed in CPU seconds): validate,
look both ids up, gather, the head, the output table. ``--repo`` scores with another checkout's
``pipeline``/``heads`` (e.g. ``git archive COMMIT | tar -x -C DIR``), for a before/after in one
command each; ``--profile`` prints cProfile's top functions by own time.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--repo", default=str(HERE.parent), help="the checkout whose scoring core runs")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))   # gpu_score's helpers, from this checkout
    from gpu_score import HeadOnly, pairs_table   # (puts this checkout on sys.path: --repo goes before it)
    sys.path.insert(0, str(Path(args.repo).resolve()))

    import numpy as np
    import pyarrow as pa
    import torch

    from heads import build_head
    from pipeline.scoring_core import HeadScorer, PairColumns, StoreLookup, score_batch

    torch.set_num_threads(1)
    pooled_dim = 384
    generator = np.random.default_rng(0)

    def lookup(prefix: str, tokens: int) -> StoreLookup:
        pooled = generator.standard_normal((args.rows, pooled_dim)).astype("<f2")
        values = generator.standard_normal((args.rows, tokens * 128)).astype("<f2")
        table = pa.table({
            "id": pa.array([f"{prefix}{i}" for i in range(args.rows)]),
            "num_tokens": pa.array(np.full(args.rows, tokens, np.int32)),
            "tokens": pa.FixedSizeBinaryArray.from_buffers(pa.binary(tokens * 256), args.rows,
                                                           [None, pa.py_buffer(values.tobytes())]),
            "pooled": pa.FixedSizeBinaryArray.from_buffers(pa.binary(pooled_dim * 2), args.rows,
                                                           [None, pa.py_buffer(pooled.tobytes())])})
        return StoreLookup([table], SimpleNamespace(dtype="float16", tokens_kept=tokens, dim=128, pooled_dim=pooled_dim))

    left, right = lookup("l", 4), lookup("r", 12)
    student = HeadOnly(build_head("pooled-cos", dim=128, left_tokens=4, right_tokens=12).eval())
    student.scores_from_logits = lambda logits: (logits[:, 0].float(), None)   # a cosine is its own score
    scorer = HeadScorer(student, "cpu", 8192)
    schema = pa.schema([("left_id", pa.string()), ("right_id", pa.string()), ("score", pa.float32())])
    columns = PairColumns(left_id="q", right_id="p")
    batches = [pa.Table.from_batches([b]) for b in pairs_table(args.pairs, args.rows).to_batches(8192)]

    def run() -> None:
        for batch in batches:
            score_batch(batch, columns, [], left, right, scorer, schema)

    run()
    seconds = []
    for _ in range(args.repeats):
        started = time.process_time()   # CPU time: a busy shared machine inflates it far less than wall time
        run()
        seconds.append(time.process_time() - started)
    print(f"{args.repo}: {args.pairs / statistics.median(seconds):,.0f} pairs per CPU-second "
          f"(median of {args.repeats}, {args.pairs:,} pairs, stores of {args.rows:,} rows, 1 thread)")
    if args.profile:
        profile = cProfile.Profile(time.process_time)
        profile.runcall(run)
        pstats.Stats(profile).sort_stats("tottime").print_stats(10)


if __name__ == "__main__":
    main()
