"""Stage two on Spark ``local[2]``, on Beam in-process and through the core called directly:
pairs/s side by side in one process, marginal (the same work at ``--small`` and ``--large`` pairs).

    python benchmarks/spark_score.py                                   # 50k vs 200k pairs, 1 repeat
    python benchmarks/spark_score.py --small 100000 --large 400000 --repeats 3
    python benchmarks/spark_score.py --profile     # also: one Spark task's body under cProfile

The pairs are ids over ``--unique`` QQP questions (half left, half right) in one Parquet file of
``--row-group`` rows per row group; the stores are written first (stage one, not timed), so every
run reuses every text (``--store``) and only scores. Model: ``dipair`` (N=4, M=12, D=128, 2 layers)
on the packaged MiniLM, random weights (speed does not depend on them).

* **core**: ``pipeline.scoring_core.score_batch`` over record batches of ``--batch-size`` pairs
  read with pyarrow, both stores' lookups and the head loaded once (not timed), scores written
  to Parquet: the floor the engines wrap, torch on 2 threads.
* **beam**: ``jobs.score_pairs.run`` on Beam's in-process DirectRunner (the default engine).
* **spark**: the same with ``engine="spark"`` in a ``local[2]`` session started once (two Python
  workers, one torch thread each, ``pipeline.spark.session.thread_plan``).

Each engine runs once at ``--small`` before the timed runs (Spark's Python workers start and load
the model and the stores once per session). Marginal rate = extra pairs / extra seconds, so fixed
costs (job start-up, Spark's steps for the texts, the store rewrite) cancel; they are reported
apart as "fixed". The engines' scores are compared with the core's.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from score_pairs import FFN, HEADS, LAYERS, SHARED_DATA, D, M, N, marginal, unique_questions, write_inputs  # noqa: E402

ENGINES = ("core", "beam", "spark")


def core_run(pairs: Path, output: Path, left, right, scorer, schema, batch_size: int) -> None:
    """Read -> score_batch -> write, the scoring core called directly."""
    from pipeline.scoring_core import PairColumns, score_batch

    columns = PairColumns(left_id="q", right_id="p")
    with pq.ParquetWriter(output, schema, compression="zstd") as out:
        for batch in pq.ParquetFile(pairs).iter_batches(batch_size=batch_size, columns=["q", "p"]):
            scores, letters = score_batch(pa.Table.from_batches([batch]), columns, [], left, right, scorer, schema)
            assert not letters
            out.write_table(scores)


def profile_one_task(pairs: Path, store: Path, model_dir: str, schema: pa.Schema, batch_size: int, row_group: int,
                     workdir: Path, top: int = 18) -> None:
    """One Spark score task's body (``pipeline.spark.tasks.ScoreSlices``) on the first slice of
    ``pairs``, run in this process under cProfile as a ``local[2]`` worker runs it (one torch
    thread), after an untimed call that loads the head and the stores: where a task's time goes,
    apart from Spark's own scheduling and its Arrow hand-over."""
    import cProfile
    import pstats

    from encoders.threads import ThreadPlan
    from pipeline.readers import expand_inputs, read_slices
    from pipeline.scoring_core import PairColumns
    from pipeline.spark import tasks
    from pipeline.store import read_manifest, store_files

    file = expand_inputs([str(pairs)])[0]
    first = read_slices(file, row_group)[:1]
    sides = ("left", "right")
    body = tasks.ScoreSlices(
        first, {file.path: 0}, (file.path,), PairColumns(left_id="q", right_id="p"), (), schema,
        {side: read_manifest(str(store / side)).layout for side in sides},
        {side: tuple(store_files(str(store / side))) for side in sides}, model_dir, "cpu",
        str(workdir / "profile" / "scores"), str(workdir / "profile" / "_dead_letter"), {}, batch_size,
        ThreadPlan(processes=2))
    item = pa.RecordBatch.from_arrays([pa.array([0], pa.int32())], names=["item"])
    list(body([item]))                      # loads the head and both stores' lookups (once per worker)
    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.enable()
    rows = list(body([item]))
    profiler.disable()
    seconds = time.perf_counter() - began
    scored = sum(r["rows"] for r in pa.Table.from_batches(rows).to_pylist() if r["kind"] == "scores")
    print(f"\none task, {scored:,} pairs (one slice), {seconds:.2f} s = {scored / seconds:,.0f} pairs/s "
          f"with {torch.get_num_threads()} torch thread(s); cumulative time by function:")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)


def scores_of(path: Path) -> np.ndarray:
    files = [path] if path.is_file() else sorted((path / "scores").glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(f, columns=["left_id", "right_id", "score"]) for f in files])
    table = table.sort_by([("left_id", "ascending"), ("right_id", "ascending")])
    return table.column("score").to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unique", type=int, default=400, help="unique QQP questions (half left, half right)")
    parser.add_argument("--small", type=int, default=50_000, help="pairs of the smaller run")
    parser.add_argument("--large", type=int, default=200_000, help="pairs of the larger run")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats per measurement (median)")
    parser.add_argument("--row-group", type=int, default=1 << 14, help="rows per Parquet row group (a Spark task each)")
    parser.add_argument("--batch-size", type=int, default=8192, help="pairs per head batch")
    parser.add_argument("--master", default="local[2]", help="Spark master")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one Spark score task's body in this process (cProfile)")
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        sys.exit(f"shared data not found at {SHARED_DATA}")
    from pyspark.sql import SparkSession

    from encoders.checkpoint import build_student, save_student
    from encoders.config import StudentConfig
    from encoders.threads import ThreadPlan
    from jobs.encode_texts import EncodeTextsJob, run as encode
    from jobs.score_pairs import ScorePairsJob, run as score
    from pipeline.models import HeadHandler
    from pipeline.scoring_core import StoreLookup
    from pipeline.spark.session import LOCAL_DEFAULTS
    from pipeline.store import read_store

    torch.set_num_threads(2)
    sizes = {"small": args.small, "large": args.large}
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; {args.small:,} vs {args.large:,} pairs, "
          f"{args.unique} unique questions, {args.repeats} repeat(s), median; Spark {args.master}")
    builder = SparkSession.builder.appName("pairscore-benchmark").master(args.master)
    for key, value in LOCAL_DEFAULTS.items():
        builder = builder.config(key, value)
    started = time.perf_counter()
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    print(f"Spark session started in {time.perf_counter() - started:.1f} s (not counted)")

    config = StudentConfig(left_tokens=N, right_tokens=M, dim=D, head="dipair",
                           head_options={"layers": LAYERS, "heads": HEADS, "ffn": FFN})
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = str(save_student(build_student(config), workdir / "student"))
        paths = write_inputs(workdir, unique_questions(args.unique), sizes, args.row_group)
        store = workdir / "store"
        for side in ("left", "right"):   # stage one, not timed
            encode(EncodeTextsJob(inputs=(str(paths[side]),), output=str(store / side), id_col="id", side=side,
                                  model_dir=model_dir), [], argv=[])
        lookups = {side: StoreLookup([read_store(str(store / side))[1]], read_store(str(store / side))[0].layout)
                   for side in ("left", "right")}
        scorer = HeadHandler(model_dir, "cpu", args.batch_size, ThreadPlan(explicit=2)).load_model()
        schema = pa.schema([("left_id", pa.string()), ("right_id", pa.string()), ("score", pa.float32())])

        def timed(engine: str, size: str) -> float:
            output = workdir / f"{engine}-{size}"
            shutil.rmtree(output, ignore_errors=True)
            began = time.perf_counter()
            if engine == "core":
                core_run(paths[size], output.with_suffix(".parquet"), lookups["left"], lookups["right"], scorer,
                         schema, args.batch_size)
            else:
                summary = score(ScorePairsJob(
                    pairs=(str(paths[size]),), output=str(output), left_id_col="q", right_id_col="p",
                    left_texts=(str(paths["left"]),), right_texts=(str(paths["right"]),), model_dir=model_dir,
                    store=str(store), join="broadcast", batch_size=args.batch_size, device="cpu", engine=engine),
                    [], argv=[])
                assert summary.counts["pairs_scored"] == sizes[size] and summary.counts["left_texts_encoded"] == 0
            return time.perf_counter() - began

        for engine in ENGINES:   # warm-up, not timed: Spark's Python workers start and load the model once
            timed(engine, "small")
        runs = {(engine, size): [] for engine in ENGINES for size in sizes}
        for _ in range(args.repeats):   # interleaved, so a machine getting busier hits all alike
            for size in sizes:
                for engine in ENGINES:
                    runs[engine, size].append(timed(engine, size))
                    print(f"  {engine} {sizes[size]:,} pairs: {runs[engine, size][-1]:.1f} s", flush=True)
        reference = scores_of(workdir / "core-large.parquet")
        rows, rates = [], {}
        for engine in ENGINES:
            small, large = (statistics.median(runs[engine, s]) for s in sizes)
            rates[engine], fixed = marginal(args.small, args.large, small, large)
            gap = 0.0 if engine == "core" else float(np.abs(scores_of(workdir / f"{engine}-large") - reference).max())
            rows.append((engine, small, large, rates[engine], fixed, gap))
        print(f"\n| engine | {args.small:,} pairs | {args.large:,} pairs | marginal pairs/s | fixed s "
              f"| vs core | max |score - core| |")
        print("|---|---|---|---|---|---|---|")
        for engine, small, large, rate, fixed, gap in rows:
            print(f"| {engine} | {small:.1f} s | {large:.1f} s | {rate:,.0f} | {fixed:.1f} | "
                  f"{rate / rates['core']:.2f}x | {gap:.1e} |")
        if args.profile:
            profile_one_task(paths["large"], store, model_dir, schema, args.batch_size, args.row_group, workdir)
    spark.stop()


if __name__ == "__main__":
    main()
