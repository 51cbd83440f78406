"""Stage two throughput, side by side in one run (the figures of docs/benchmarks.md).

    python benchmarks/score_pairs.py                       # 1M vs 4M pairs, 3 repeats (a quiet machine)
    python benchmarks/score_pairs.py --small 100000 --large 400000 --repeats 1 --unique 400   # a quick check

Every figure of the whole job is *marginal*: the same job runs at ``--small`` and ``--large``
pairs (medians of ``--repeats`` interleaved runs, each a fresh process) and the rate is the
extra pairs over the extra seconds; the fixed start-up (imports, model load, pipeline
construction) is reported apart, as the time left at zero pairs. The pairs are ids over
``--unique`` QQP questions (half left, half right), id/text tables, stores already written
(``--store``: nothing is re-encoded), broadcast join, the in-process DirectRunner; each pair
file is one Parquet file of ``--row-group`` rows per row group.

1. data path: ``score_pairs`` with no ``--model`` (the pooled-cosine baseline: the head costs
   almost nothing) against ``benchmarks/minimal_cosine.py``, plain pyarrow + numpy doing the
   same read -> map ids -> gather -> cosine -> write, both whole processes; their scores compared.
2. with the head: ``dipair`` (N=4, M=12, D=128, L=2) end to end against the head alone in a
   tight PyTorch loop over pre-gathered batches (fp32 and bf16), with this machine's GEMM roofline.
3. one big file: the ``--large`` file, no ``--model``, on the multi-process DirectRunner with
   1 and 2 workers: pairs/s of each and the rows each worker process read and scored.
4. peak memory (RSS) of the job at ``--small`` and ``--large`` pairs.
5. GPU: when CUDA is present, the head alone and end to end there (bf16 and fp32 autocast off).

``--teachers`` adds the cross-encoder teachers' pairs/s (BERT-base size and MiniLM-L6).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from encoders.checkpoint import build_student, save_student  # noqa: E402
from encoders.config import StudentConfig  # noqa: E402
from encoders.sources import DEFAULT_ENCODER, resolve_encoder  # noqa: E402
from head_speed import dipair_flops_per_pair, measure_gemm_gflops, measure_head_throughput  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
N, M, D, LAYERS, HEADS, FFN = 4, 12, 128, 2, 1, 1024


def unique_questions(count: int) -> list[str]:
    seen: dict[str, None] = {}
    with open(SHARED_DATA / "qqp" / "train.jsonl", encoding="utf-8") as handle:
        for line in handle:
            pair = json.loads(line)
            for text in (pair["left"], pair["right"]):
                if text.strip():
                    seen.setdefault(text)
                if len(seen) == count:
                    return list(seen)
    return list(seen)


def write_inputs(workdir: Path, questions: list[str], sizes: dict[str, int], row_group: int) -> dict[str, Path]:
    """Text tables (id, text) per side, and one Parquet file of pairs of ids per size: the
    left x right grid, cycled until it has that many rows."""
    half = len(questions) // 2
    left, right = questions[:half], questions[half:2 * half]
    paths = {}
    for side, texts in (("left", left), ("right", right)):
        paths[side] = workdir / f"{side}_texts.jsonl"
        paths[side].write_text("".join(json.dumps({"id": f"{side[0]}{i}", "text": t}) + "\n"
                                       for i, t in enumerate(texts)), encoding="utf-8")
    for name, count in sizes.items():
        index = np.arange(count)
        q = pa.array([f"l{i}" for i in range(len(left))]).take(pa.array(index // len(right) % len(left)))
        p = pa.array([f"r{j}" for j in range(len(right))]).take(pa.array(index % len(right)))
        paths[name] = workdir / f"pairs_{name}.parquet"
        pq.write_table(pa.table({"q": q, "p": p}), paths[name], compression="zstd", row_group_size=row_group)
    return paths


DRIVER = """
import json, resource, runpy, sys
import apache_beam as beam
results = []
original = beam.Pipeline.run
def capture(self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    results.append(result)
    return result
beam.Pipeline.run = capture
sys.argv = [MODULE] + ARGS
try:
    runpy.run_module(MODULE, run_name='__main__')
except SystemExit as exit:
    if exit.code: raise
from apache_beam.metrics.metric import MetricsFilter
workers = {}
for result in results:
    for metric in result.metrics().query(MetricsFilter().with_namespace('pairscore.workers'))['counters']:
        value = metric.committed if metric.committed is not None else metric.attempted
        workers[metric.key.metric.name] = workers.get(metric.key.metric.name, 0) + int(value or 0)
print('BENCH ' + json.dumps({'peak_rss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                             'children_peak_rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                             'workers': workers}))
"""


def run_process(argv: list[str], module: str | None = None) -> dict:
    """Run ``python -m module argv`` (or ``python argv``) in a fresh process -> {seconds,
    peak_rss_mib, workers (rows per worker process, jobs only)}."""
    if module is not None:
        command = [sys.executable, "-c", DRIVER.replace("MODULE", repr(module)).replace("ARGS", repr(argv))]
    else:
        command = [sys.executable, "-c", "import resource, runpy, sys\n"
                   f"sys.argv = {argv!r}\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
                   "print('BENCH {\"peak_rss_kb\": %d}' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"]
    started, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds (user + system) of the process and its children: less sensitive than wall time
    # to other processes sharing the cores (they wait for a core, they do not burn CPU time).
    cpu_seconds = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if done.returncode:
        raise SystemExit(f"{module or argv[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    report = json.loads([line for line in done.stdout.splitlines() if line.startswith("BENCH ")][-1][6:])
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mib": report["peak_rss_kb"] / 1024,
            "children_peak_rss_mib": report.get("children_peak_rss_kb", 0) / 1024,
            "workers": report.get("workers", {})}


def marginal(small: int, large: int, small_seconds: float, large_seconds: float) -> tuple[float, float]:
    """(pairs/s of the extra pairs, seconds left at zero pairs) of a job timed at two sizes; (nan,
    nan) when the larger run was not slower, i.e. the extra pairs cost less than the noise: use
    larger sizes then."""
    if large_seconds <= small_seconds:
        return float("nan"), float("nan")
    rate = (large - small) / (large_seconds - small_seconds)
    return rate, small_seconds - small / rate


def teacher_rate(model, tokenizer, lefts: list[str], rights: list[str], max_length: int,
                 batch_size: int = 32, min_seconds: float = 8.0) -> float:
    """Pairs/s of a cross-encoder on pairs padded to ``max_length`` (median of batches)."""
    import statistics
    times = []
    with torch.inference_mode():
        start = 0
        while sum(times) < min_seconds or len(times) < 2:
            batch = tokenizer(lefts[start:start + batch_size], rights[start:start + batch_size], padding="max_length",
                              truncation=True, max_length=max_length, return_tensors="pt")
            began = time.perf_counter()
            model(**batch)
            times.append(time.perf_counter() - began)
            start = (start + batch_size) % (len(lefts) - batch_size)
    return batch_size / statistics.median(times)


def read_output_scores(directory: Path) -> pa.Table:
    files = sorted(directory.glob("scores*.parquet")) + sorted(directory.glob("scores/*.parquet"))
    return pa.concat_tables([pq.read_table(f, columns=["left_id", "right_id", "score"]) for f in files])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unique", type=int, default=2000, help="unique QQP questions (half left, half right)")
    parser.add_argument("--small", type=int, default=1_000_000, help="pairs of the smaller run")
    parser.add_argument("--large", type=int, default=4_000_000, help="pairs of the larger run (and the big file)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per measurement (median)")
    parser.add_argument("--row-group", type=int, default=1 << 17, help="rows per Parquet row group of the pair files")
    parser.add_argument("--seconds", type=float, default=6.0, help="time per head-only measurement")
    parser.add_argument("--batch-size", type=int, default=8192, help="pairs per head batch, every measurement")
    parser.add_argument("--sections", default="data,head,bigfile", help="which of data,head,bigfile to run")
    parser.add_argument("--teachers", action="store_true", help="also time the cross-encoder teachers")
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        sys.exit(f"shared data not found at {SHARED_DATA}")
    sections = set(args.sections.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"{args.small:,} vs {args.large:,} pairs, {args.repeats} repeat(s), median")
    sizes = {"small": args.small, "large": args.large}

    config = StudentConfig(left_tokens=N, right_tokens=M, dim=D, head="dipair",
                           head_options={"layers": LAYERS, "heads": HEADS, "ffn": FFN})
    student = build_student(config)
    rate = None
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = save_student(student, workdir / "student")
        questions = unique_questions(args.unique)
        paths = write_inputs(workdir, questions, sizes, args.row_group)
        groups = pq.ParquetFile(paths["large"]).metadata.num_row_groups
        # Stage one, not timed: the stores the nightly job starts from, for both models.
        stores = {"baseline": workdir / "store-baseline", "dipair": workdir / "store-dipair"}
        for name, store in stores.items():
            for side in ("left", "right"):
                model = ["--model", str(model_dir)] if name == "dipair" else []
                run_process(["--input", str(paths[side]), "--id-col", "id", "--side", side, *model,
                             "--output", str(store / side)], module="jobs.encode_texts")

        def job(size: str, store: str, extra: list[str], name: str) -> dict:
            output = workdir / name
            if output.exists():
                shutil.rmtree(output)
            model = ["--model", str(model_dir)] if store == "dipair" else []
            measured = run_process([
                "--pairs", str(paths[size]), "--left-id-col", "q", "--right-id-col", "p",
                "--left-texts", str(paths["left"]), "--right-texts", str(paths["right"]), *model,
                "--store", str(stores[store]), "--output", str(output), "--join", "broadcast",
                "--batch-size", str(args.batch_size), *extra], module="jobs.score_pairs")
            summary = json.loads((output / "_SUMMARY.json").read_text())
            assert summary["counts"]["pairs_scored"] == sizes[size], summary["counts"]
            assert summary["counts"]["left_texts_encoded"] == 0, summary["counts"]
            measured["pipeline_seconds"] = summary["wall_seconds"]
            return measured

        def minimal(size: str) -> dict:
            return run_process([str(REPO / "benchmarks" / "minimal_cosine.py"), str(paths[size]), "q", "p",
                                str(stores["baseline"]), str(workdir / f"minimal-{size}.parquet")])

        def median(runs: list[dict], key: str = "seconds") -> float:
            return statistics.median(r[key] for r in runs)

        if "data" in sections:
            runs = {(kind, size): [] for kind in ("job", "minimal") for size in sizes}
            for _ in range(args.repeats):   # interleaved, so a machine getting busier hits both alike
                for size in sizes:
                    runs["job", size].append(job(size, "baseline", [], f"data-{size}"))
                    runs["minimal", size].append(minimal(size))
            job_rate, job_start = marginal(args.small, args.large, median(runs["job", "small"]),
                                           median(runs["job", "large"]))
            pipe_rate, _ = marginal(args.small, args.large, median(runs["job", "small"], "pipeline_seconds"),
                                    median(runs["job", "large"], "pipeline_seconds"))
            min_rate, min_start = marginal(args.small, args.large, median(runs["minimal", "small"]),
                                           median(runs["minimal", "large"]))
            ours = read_output_scores(workdir / "data-large")
            floor = pq.read_table(workdir / "minimal-large.parquet")
            key = lambda t: np.char.add(np.asarray(t.column("left_id").to_pylist(), dtype=str),  # noqa: E731
                                        np.asarray(t.column("right_id").to_pylist(), dtype=str))
            a, b = np.argsort(key(ours), kind="stable"), np.argsort(key(floor), kind="stable")
            gap = float(np.abs(ours.column("score").to_numpy()[a] - floor.column("score").to_numpy()[b]).max())
            print(f"\n1. data path (no --model: pooled cosine), {args.small:,} vs {args.large:,} pairs, "
                  f"{len(questions):,} unique questions, broadcast join, in-process DirectRunner")
            for kind in ("job", "minimal"):
                print(f"   {kind:8s} whole process: " + ", ".join(
                    f"{sizes[size]:,} pairs {median(runs[kind, size]):.1f} s" for size in sizes))
            print(f"   score_pairs marginal: {job_rate:,.0f} pairs/s (inside the pipeline {pipe_rate:,.0f}); "
                  f"start-up {job_start:.1f} s")
            print(f"   minimal script marginal: {min_rate:,.0f} pairs/s; start-up {min_start:.1f} s")
            job_cpu_rate, _ = marginal(args.small, args.large, median(runs["job", "small"], "cpu_seconds"),
                                       median(runs["job", "large"], "cpu_seconds"))
            min_cpu_rate, _ = marginal(args.small, args.large, median(runs["minimal", "small"], "cpu_seconds"),
                                       median(runs["minimal", "large"], "cpu_seconds"))
            print(f"   per CPU-second (user + system), marginal: score_pairs {job_cpu_rate:,.0f} pairs, minimal "
                  f"{min_cpu_rate:,.0f} pairs = {job_cpu_rate / min_cpu_rate:.2f}x")
            print(f"   = {job_rate / min_rate:.2f}x the minimal script's marginal throughput (target >= 0.9); "
                  f"whole process at {args.small:,}: {median(runs['minimal', 'small']) / median(runs['job', 'small']):.2f}x; "
                  f"scores agree to {gap:.1e}")
            print(f"4. peak RSS of score_pairs: {median(runs['job', 'small'], 'peak_rss_mib'):,.0f} MiB at "
                  f"{args.small:,} pairs, {median(runs['job', 'large'], 'peak_rss_mib'):,.0f} MiB at {args.large:,}")

        if "head" in sections:
            gemm = {"fp32": measure_gemm_gflops(torch.float32), "bf16": measure_gemm_gflops(torch.bfloat16)}
            flops = dipair_flops_per_pair(N, M, D, LAYERS, FFN, variant="full")
            head = measure_head_throughput(student.head, args.batch_size, N, M, D, args.seconds)
            runs = {size: [] for size in sizes}
            for _ in range(args.repeats):
                for size in sizes:
                    runs[size].append(job(size, "dipair", [], f"head-{size}"))
            head_after = measure_head_throughput(student.head, args.batch_size, N, M, D, args.seconds,
                                                 precisions=("fp32",))["fp32_pairs_per_s"]
            rate, start = marginal(args.small, args.large, median(runs["small"]), median(runs["large"]))
            head_mean = (head["fp32_pairs_per_s"] + head_after) / 2
            print(f"\n2. with the head: dipair N={N} M={M} D={D} L={LAYERS} heads={HEADS} FFN={FFN}, "
                  f"batch {args.batch_size}")
            print(f"   GEMM 2048^3: fp32 {gemm['fp32']:.0f} GFLOP/s, bf16 {gemm['bf16']:.0f} GFLOP/s; "
                  f"{flops / 1e6:.2f} MFLOP/pair")
            for precision in ("fp32", "bf16"):
                value = head[f"{precision}_pairs_per_s"]
                print(f"   head only {precision}: {value:,.0f} pairs/s = {value / (gemm[precision] * 1e9 / flops):.0%} "
                      "of the roofline")
            print("   end to end: " + ", ".join(f"{sizes[size]:,} pairs {median(runs[size]):.1f} s" for size in sizes)
                  + f"; marginal {rate:,.0f} pairs/s, start-up {start:.1f} s")
            print(f"   = {rate / head_mean:.2f}x head-only fp32 (target >= 0.9; head-only "
                  f"{head['fp32_pairs_per_s']:,.0f} before, {head_after:,.0f} after)")

        if "bigfile" in sections:
            print(f"\n3. one big file: {args.large:,} pairs in {groups} row groups, no --model, "
                  "multi-process DirectRunner")
            results = {}
            for workers in (1, 2):
                runs = [job("large", "baseline", [f"--direct_num_workers={workers}",
                                                   "--direct_running_mode=multi_processing"], f"big-{workers}")
                        for _ in range(args.repeats)]
                results[workers] = statistics.median(r["seconds"] for r in runs)
                pipeline = statistics.median(r["pipeline_seconds"] for r in runs)
                print(f"   {workers} worker(s): {args.large / results[workers]:,.0f} pairs/s whole process "
                      f"({results[workers]:.1f} s), {args.large / pipeline:,.0f} inside the pipeline; "
                      f"per worker process: {json.dumps(runs[-1]['workers'], sort_keys=True)}; "
                      f"peak RSS of the workers {runs[-1]['children_peak_rss_mib']:,.0f} MiB")
            print(f"   2 workers = {results[1] / results[2]:.2f}x one worker (target >= 1.6)")

        if torch.cuda.is_available():
            print("\n5. GPU: " + torch.cuda.get_device_name())
            gpu = measure_head_throughput(student.head.cuda(), args.batch_size, N, M, D, args.seconds)
            print(f"   head only: fp32 {gpu['fp32_pairs_per_s']:,.0f}, bf16 {gpu['bf16_pairs_per_s']:,.0f} pairs/s")
        else:
            print("\n5. GPU: none available here; head-only and end-to-end GPU figures not measured")

    if args.teachers:
        teachers_section(rate)


def teachers_section(rate: float | None) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification
    with open(SHARED_DATA / "qqp" / "dev.jsonl", encoding="utf-8") as handle:
        pairs = [json.loads(line) for _, line in zip(range(512), handle)]
    lefts, rights = [p["left"] for p in pairs], [p["right"] for p in pairs]
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(DEFAULT_ENCODER))
    torch.manual_seed(0)
    teachers = {
        "BERT-base-size cross-encoder (random weights)": BertForSequenceClassification(
            BertConfig(vocab_size=tokenizer.vocab_size, num_labels=1)).eval(),
        "MiniLM-L6 cross-encoder": AutoModelForSequenceClassification.from_pretrained(
            resolve_encoder(DEFAULT_ENCODER), num_labels=1, use_safetensors=True).eval(),
    }
    print("\nteachers, batch 32, pairs padded to max length")
    for name, model in teachers.items():
        for max_length in (128, 64):
            teacher = teacher_rate(model, tokenizer, lefts, rights, max_length)
            versus = f"; score_pairs (dipair, marginal) = {rate / teacher:,.0f}x" if rate else ""
            print(f"   {name}, len {max_length}: {teacher:,.1f} pairs/s{versus}")


if __name__ == "__main__":
    main()
