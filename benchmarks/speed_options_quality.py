"""The opt-in speed options of stage two against the fp32 head: quality and speed, side by side.

    python benchmarks/speed_options_quality.py --student RUN/student-dipair --pairs RUN/data/dev.jsonl \\
        --work /tmp/speed-options [--group-col qid] [--limit N] [--repeats 3] \\
        [--results benchmarks/results/speed-options-wikiqa.json]

Four ways to score the same labeled pairs with one student, every text already in a ``--store``:

* ``fp32``: the default (float16 store, fp32 head);
* ``int8 head``: ``--head-quantize int8`` (the head's linear layers dynamically quantized);
* ``int8 store``: the store written with ``--dtype int8`` (per-row scale), fp32 head;
* ``compile``: ``--compile`` (torch.compile of the head), scored in this process by the scoring
  core's ``HeadScorer`` on the float16 store's rows (what a ``--compile`` worker runs): every
  ``score_pairs --compile`` process compiles afresh, which took 20 minutes on a saturated 2-core
  machine, so it is not run as a job here; ``--no-compile`` leaves it out.

For each: MRR@10, MAP, nDCG@10 over the questions with a positive and a negative (``--group-col``),
AUC over all pairs, and each one's difference from ``fp32`` with a 95% paired bootstrap interval
over questions (2,000 resamples: the same resampled questions score both sides, AUC included, so
that the hard questions cancel); the largest |score difference| from ``fp32``; the head's pairs/s
(``HeadScorer.score_rows`` on the stored rows, in this process, after a warm-up call: compilation
and quantization are not counted, the warm-up's seconds are reported) and the whole ``score_pairs``
process's seconds (``--run-repeats`` runs, default ``--repeats``), each the median of runs
interleaved over the options (a busy moment of a shared machine spreads over all of them); and the
stores' bytes on disk.

Everything is written under ``--work`` (outside the repository: the data and models stay out of
it) and reused when the script is run again: night-one runs (``night-float16``, ``night-int8``,
which encode the texts), then ``runs/<option>-<k>``. ``--results`` writes the figures (no rows of
data) as JSON. The load average is printed with every timed figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.reproduction import inside_repo, job_env  # noqa: E402

# The options run as score_pairs jobs (their flags), and where their stores come from.
JOB_OPTIONS = {"fp32": [], "int8 head": ["--head-quantize", "int8"], "int8 store": []}
STORE_OF = {"fp32": "float16", "int8 head": "float16", "int8 store": "int8", "compile": "float16"}
RANKING = ("mrr@10", "map", "ndcg@10")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def score_pairs(args: list[str], output: Path) -> float:
    """``python -m jobs.score_pairs ARGS --output OUTPUT`` under ``nice``; its wall seconds.
    An output already committed (``_SUCCESS``) is kept and not run again (-1 returned)."""
    if (output / "_SUCCESS").exists():
        return -1.0
    command = ["nice", "-n", "10", sys.executable, "-m", "jobs.score_pairs", *args, "--output", str(output),
               "--overwrite", "--quiet", "--device", "cpu"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=job_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def read_scores(output: Path, key: str) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(output / "scores")
    return dict(zip(table.column(key).to_pylist(), table.column("score").to_numpy()))


def query_auc_difference(a: np.ndarray, b: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                         resamples: int, seed: int = 0) -> dict:
    """AUC(a) - AUC(b) over all pairs, with a 95% paired bootstrap over questions: each resample
    draws the questions with replacement and scores both sides on all their pairs."""
    from encoders.metrics import roc_auc
    from encoders.ranking_metrics import query_index

    _, query = query_index(groups)
    order = np.argsort(query, kind="stable")
    bounds = np.r_[0, np.flatnonzero(np.diff(query[order])) + 1, len(order)]
    members = [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
    positive = labels >= 0.5
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    for r in range(resamples):
        index = np.concatenate([members[q] for q in rng.integers(0, len(members), len(members))])
        differences[r] = roc_auc(a[index], positive[index]) - roc_auc(b[index], positive[index])
    low, high = np.nanpercentile(differences, [2.5, 97.5])
    return {"difference": float(roc_auc(a, positive) - roc_auc(b, positive)), "low": float(low),
            "high": float(high), "resamples": resamples, "unit": "questions", "count": len(members)}


def head_speed(student: str, work: Path, pairs: list[dict], options: list[str], repeats: int,
               batch_size: int) -> tuple[dict[str, list[float]], dict[str, float], dict[str, np.ndarray]]:
    """Per option: pairs/s of the head alone (``repeats`` interleaved timings after a warm-up),
    the warm-up's seconds, and the scores (in ``pairs`` order)."""
    import torch

    from encoders.checkpoint import load_head
    from pipeline.head_feed import HeadScorer
    from pipeline.store import read_store
    from pipeline.store_codec import side_arrays
    from pipeline.text_ids import text_id

    stores = {}
    for dtype in ("float16", "int8"):
        sides = []
        for side, column in (("left", "left"), ("right", "right")):
            manifest, table = read_store(str(work / f"night-{dtype}" / "store" / side))
            row_of = {id_: i for i, id_ in enumerate(table.column("id").to_pylist())}
            rows = np.array([row_of[text_id(p[column])] for p in pairs], dtype=np.int64)
            sides += [side_arrays(table, manifest.layout), rows]
        stores[dtype] = sides
    scorers, warm_up, scores = {}, {}, {}
    for option in options:
        scorer = HeadScorer(load_head(student), "cpu", batch_size, compile=option == "compile",
                            quantize="int8" if option == "int8 head" else None)
        started = time.perf_counter()
        with torch.inference_mode():
            scores[option] = scorer.score_rows(*stores[STORE_OF[option]])[0]   # warm-up (compiles once)
        warm_up[option] = time.perf_counter() - started
        print(f"  head warm-up {option}: {warm_up[option]:.1f} s, load {load()}", flush=True)
        scorers[option] = scorer
    rates: dict[str, list[float]] = {option: [] for option in options}
    for _ in range(repeats):
        for option, scorer in scorers.items():
            started = time.perf_counter()
            with torch.inference_mode():
                scorer.score_rows(*stores[STORE_OF[option]])
            rates[option].append(len(pairs) / (time.perf_counter() - started))
    return rates, warm_up, scores


def store_bytes(store: Path) -> int:
    return sum(path.stat().st_size for path in store.rglob("*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True)
    parser.add_argument("--pairs", required=True, help="labeled pairs (JSONL: left, right, label, the group column)")
    parser.add_argument("--work", required=True, help="where the runs go (outside the repository)")
    parser.add_argument("--group-col", default="qid")
    parser.add_argument("--id-col", default="id", help="a column naming each pair uniquely (joins the runs' scores)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N pairs only")
    parser.add_argument("--repeats", type=int, default=3, help="timings of the head alone, per option")
    parser.add_argument("--run-repeats", type=int, default=None,
                        help="score_pairs runs per option (default: --repeats); the first gives the scores")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--results", default=None, help="write the figures (no data) to this JSON file")
    parser.add_argument("--no-compile", action="store_true", help="leave --compile out (its compilation is slow)")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    if inside_repo(work, "the pairs, the stores and the scores"):
        raise SystemExit(2)
    work.mkdir(parents=True, exist_ok=True)
    run_repeats = args.run_repeats or args.repeats
    os.environ.update(job_env())
    torch_threads = os.cpu_count()

    pairs_file = work / "pairs.jsonl"
    if not pairs_file.exists():
        lines = Path(args.pairs).read_text(encoding="utf-8").splitlines()[:args.limit]
        pairs_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines()]
    keep = ["--keep-cols", f"{args.id_col},{args.group_col},label"]
    common = ["--pairs", str(pairs_file), "--model", args.student, *keep, "--batch-size", str(args.batch_size)]
    print(f"{len(pairs):,} pairs; load {load()} at the start", flush=True)
    for dtype in ("float16", "int8"):
        seconds = score_pairs([*common, "--dtype", dtype], work / f"night-{dtype}")
        if seconds >= 0:
            print(f"night-{dtype} (encodes the texts): {seconds:.1f} s, load {load()}", flush=True)

    timings_file = work / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for k in range(1, run_repeats + 1):
        for option, flags in JOB_OPTIONS.items():
            name = f"{option.replace(' ', '-')}-{k}"
            if name in timings:
                continue
            store = work / f"night-{STORE_OF[option]}" / "store"
            seconds = score_pairs([*common, "--store", str(store), *flags], work / "runs" / name)
            timings[name] = {"seconds": seconds, "load": os.getloadavg()[0]}
            timings_file.write_text(json.dumps(timings, indent=1))
            print(f"{name}: {seconds:.1f} s, load {load()}", flush=True)

    options = [*JOB_OPTIONS, *([] if args.no_compile else ["compile"])]
    rates, warm_up, in_process = head_speed(args.student, work, pairs, options, args.repeats, args.batch_size)
    print(f"head timings done, load {load()}", flush=True)

    by_id = {p[args.id_col]: p for p in pairs}
    ids = sorted(by_id)
    labels = np.array([float(by_id[i]["label"]) for i in ids])
    groups = np.array([str(by_id[i][args.group_col]) for i in ids])
    scores = {}
    for option in JOB_OPTIONS:
        got = read_scores(work / "runs" / f"{option.replace(' ', '-')}-1", args.id_col)
        scores[option] = np.array([got[i] for i in ids], dtype=np.float64)
        again = read_scores(work / "runs" / f"{option.replace(' ', '-')}-{run_repeats}", args.id_col)
        if not np.array_equal(np.array([again[i] for i in ids]), scores[option].astype(np.float32)):
            print(f"note: {option}: run 1 and run {run_repeats} differ in their scores")
    position = {p[args.id_col]: i for i, p in enumerate(pairs)}
    order = np.array([position[i] for i in ids])
    # The in-process fp32 head against the job's: the same scores, or the comparison below is off.
    fp32_gap = float(np.abs(in_process["fp32"][order] - scores["fp32"]).max())
    print(f"in-process fp32 vs score_pairs fp32: max |difference| {fp32_gap:.2e}")
    if "compile" in options:
        scores["compile"] = in_process["compile"][order].astype(np.float64)

    from encoders.evaluation import ranking
    from encoders.metrics import roc_auc
    from encoders.ranking_metrics import query_difference, rank_queries

    ranked = {option: rank_queries(scores[option], labels, groups) for option in options}
    results = {"pairs": len(pairs), "questions": int(len(np.unique(groups))),
               "ranked_questions": int(len(ranked["fp32"].queries)), "repeats": args.repeats,
               "run_repeats": run_repeats,
               "torch_threads": torch_threads, "cpus": os.cpu_count(), "in_process_fp32_gap": fp32_gap,
               "options": {}}
    for option in options:
        metrics = {**ranking(scores[option], labels, groups), "auc": roc_auc(scores[option], labels >= 0.5)}
        entry = {"metrics": metrics, "head_pairs_per_s": statistics.median(rates[option]),
                 "head_pairs_per_s_runs": rates[option], "head_warm_up_seconds": warm_up[option]}
        if option in JOB_OPTIONS:
            runs = [timings[f"{option.replace(' ', '-')}-{k}"] for k in range(1, run_repeats + 1)]
            entry.update(run_seconds=statistics.median(r["seconds"] for r in runs), run_loads=[r["load"] for r in runs])
        if option != "fp32":
            entry["max_abs_score_difference"] = float(np.abs(scores[option] - scores["fp32"]).max())
            entry["differences"] = {m: query_difference(ranked[option].values[m], ranked["fp32"].values[m],
                                                        resamples=args.resamples).to_dict() for m in RANKING}
            entry["differences"]["auc"] = query_auc_difference(scores[option], scores["fp32"], labels, groups,
                                                               args.resamples)
        results["options"][option] = entry
    results["store_bytes"] = {dtype: store_bytes(work / f"night-{dtype}" / "store") for dtype in ("float16", "int8")}
    results["load_at_end"] = os.getloadavg()

    print(table(results))
    if args.results:
        Path(args.results).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.results}")


def table(results: dict) -> str:
    """The markdown table of the figures."""
    fp32 = results["options"]["fp32"]
    lines = ["| option | MRR@10 | MAP | AUC | Δ MRR@10 [95%] | Δ MAP [95%] | Δ AUC [95%] | max abs Δ score | "
             "head pairs/s (× fp32) | head warm-up, s | score_pairs run, s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for option, entry in results["options"].items():
        m = entry["metrics"]
        cells = [option, f"{m['mrr@10']:.4f}", f"{m['map']:.4f}", f"{m['auc']:.4f}"]
        if option == "fp32":
            cells += ["—", "—", "—", "—"]
        else:
            for metric in ("mrr@10", "map", "auc"):
                d = entry["differences"][metric]
                cells.append(f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
            cells.append(f"{entry['max_abs_score_difference']:.2e}")
        ratio = entry["head_pairs_per_s"] / fp32["head_pairs_per_s"]
        cells.append(f"{entry['head_pairs_per_s']:,.0f} ({ratio:.2f}×)")
        cells.append(f"{entry['head_warm_up_seconds']:.1f}")
        cells.append(f"{entry['run_seconds']:.1f}" if "run_seconds" in entry else "not run (see above)")
        lines.append("| " + " | ".join(cells) + " |")
    sizes = results["store_bytes"]
    lines.append("")
    lines.append(f"Stores on disk (both sides, Parquet zstd): float16 {sizes['float16']:,} bytes, int8 "
                 f"{sizes['int8']:,} bytes ({sizes['int8'] / sizes['float16']:.2f}×). {results['pairs']:,} pairs, "
                 f"{results['ranked_questions']:,} of {results['questions']:,} questions ranked; head pairs/s: "
                 f"medians of {results['repeats']} interleaved timings; score_pairs runs: medians of "
                 f"{results['run_repeats']} interleaved runs; load averages (1 min) at the runs: "
                 + ", ".join(f"{o} {min(e['run_loads']):.1f}–{max(e['run_loads']):.1f}"
                             for o, e in results["options"].items() if "run_loads" in e)
                 + f"; at the end {results['load_at_end'][0]:.1f}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
