"""Stage two throughput, side by side in one run: head only, the whole job, and the teachers.

    python benchmarks/score_pairs.py [--unique 2000] [--pairs 1000000] [--seconds 6]

1. head only: the student's ``dipair`` head (N=4, M=12, D=128, L=2, 1 attention head, FFN
   1024) in a tight PyTorch loop over pre-gathered batches, fp32 and bf16, against this
   machine's GEMM roofline (fp32 and bf16 GFLOP/s measured here, now).
2. end to end: ``python -m jobs.score_pairs`` over every left x right pair of ``--unique``
   QQP questions (half left, half right: 1,000 x 1,000 = 1M pairs by default), pairs of ids
   with id/text tables, stores already written (``--store``, so no text is re-encoded), the
   in-process DirectRunner, broadcast join. Timed as a subprocess, start-up included; peak
   RSS of that process, also for a quarter of the pairs, to see whether memory grows with
   the number of pairs.
3. teachers: a BERT-base-size cross-encoder (random weights) and the MiniLM-L6 cross-encoder,
   pairs/s on real QQP pairs padded to max length 128 and 64.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

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


def write_inputs(workdir: Path, questions: list[str], pairs: int) -> dict[str, Path]:
    """Text tables (id, text) per side and pair tables of ids: all pairs and a quarter of them."""
    half = len(questions) // 2
    left, right = questions[:half], questions[half:2 * half]
    paths = {}
    for side, texts in (("left", left), ("right", right)):
        paths[side] = workdir / f"{side}_texts.jsonl"
        paths[side].write_text("".join(json.dumps({"id": f"{side[0]}{i}", "text": t}) + "\n"
                                       for i, t in enumerate(texts)), encoding="utf-8")
    per_left = max(1, pairs // len(left))
    for name, left_count in (("pairs_full", len(left)), ("pairs_quarter", len(left) // 4)):
        q = [f"l{i}" for i in range(left_count) for _ in range(per_left)]
        p = [f"r{j % len(right)}" for _ in range(left_count) for j in range(per_left)]
        paths[name] = workdir / f"{name}.parquet"
        pq.write_table(pa.table({"q": q, "p": p}), paths[name], compression="zstd")
    return paths


def run_job(module: str, args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of ``python -m module args`` in a fresh process."""
    code = ("import resource, runpy, sys\n"
            f"sys.argv = [{module!r}] + {args!r}\n"
            "try:\n"
            f"    runpy.run_module({module!r}, run_name='__main__')\n"
            "except SystemExit as exit:\n"
            "    if exit.code: raise\n"
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{module} failed:\n{done.stdout}\n{done.stderr}")
    peak = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KB")][0]
    return seconds, peak / 1024


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unique", type=int, default=2000, help="unique QQP questions (half left, half right)")
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=6.0, help="time per head-only measurement")
    parser.add_argument("--batch-size", type=int, default=8192, help="pairs per head batch, both measurements")
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        sys.exit(f"shared data not found at {SHARED_DATA}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    config = StudentConfig(left_tokens=N, right_tokens=M, dim=D, head="dipair",
                           head_options={"layers": LAYERS, "heads": HEADS, "ffn": FFN})
    student = build_student(config)

    # 1. head only
    gemm = {"fp32": measure_gemm_gflops(torch.float32), "bf16": measure_gemm_gflops(torch.bfloat16)}
    flops = dipair_flops_per_pair(N, M, D, LAYERS, FFN, variant="full")
    head = measure_head_throughput(student.head, args.batch_size, N, M, D, args.seconds)
    print(f"\n1. head only: dipair N={N} M={M} D={D} L={LAYERS} heads={HEADS} FFN={FFN}, batch {args.batch_size}")
    print(f"   GEMM 2048^3: fp32 {gemm['fp32']:.0f} GFLOP/s, bf16 {gemm['bf16']:.0f} GFLOP/s; "
          f"{flops / 1e6:.2f} MFLOP/pair (full layers, as DiPair counts it)")
    for precision in ("fp32", "bf16"):
        rate = head[f"{precision}_pairs_per_s"]
        roofline = gemm[precision] * 1e9 / flops
        print(f"   {precision}: {rate:,.0f} pairs/s = {rate / roofline:.0%} of the {precision} roofline "
              f"({roofline:,.0f} pairs/s)")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = save_student(student, workdir / "student")
        questions = unique_questions(args.unique)
        paths = write_inputs(workdir, questions, args.pairs)
        full_rows = pq.ParquetFile(paths["pairs_full"]).metadata.num_rows
        quarter_rows = pq.ParquetFile(paths["pairs_quarter"]).metadata.num_rows
        # Stage one, not timed here: the stores the nightly job starts from.
        for side in ("left", "right"):
            run_job("jobs.encode_texts", ["--input", str(paths[side]), "--id-col", "id", "--side", side,
                                          "--model", str(model_dir), "--output", str(workdir / "store" / side)])

        def score(pairs_path: Path, name: str) -> tuple[float, float, dict]:
            output = workdir / name
            seconds, peak = run_job("jobs.score_pairs", [
                "--pairs", str(pairs_path), "--left-id-col", "q", "--right-id-col", "p",
                "--left-texts", str(paths["left"]), "--right-texts", str(paths["right"]),
                "--model", str(model_dir), "--store", str(workdir / "store"), "--output", str(output),
                "--join", "broadcast", "--batch-size", str(args.batch_size)])
            return seconds, peak, json.loads((output / "_SUMMARY.json").read_text())

        quarter_seconds, quarter_peak, _ = score(paths["pairs_quarter"], "scores_quarter")
        seconds, peak, summary = score(paths["pairs_full"], "scores_full")
        counts = summary["counts"]
        assert counts["pairs_scored"] == full_rows and counts["left_texts_encoded"] == 0, counts
        rate = full_rows / seconds
        in_pipeline = full_rows / summary["wall_seconds"]
        print(f"\n2. end to end: score_pairs, {full_rows:,} pairs from {len(questions):,} unique questions "
              f"({full_rows / len(questions):,.0f} pairs per unique text), stores written, broadcast join")
        print(f"   {rate:,.0f} pairs/s including process start ({seconds:.1f} s); {in_pipeline:,.0f} pairs/s "
              f"inside the pipeline ({summary['wall_seconds']:.1f} s)")
        # Measured again right after, so that a machine that got busier or quieter in between
        # shows up as two different head-only figures instead of a skewed ratio.
        head_after = measure_head_throughput(student.head, args.batch_size, N, M, D, args.seconds,
                                             precisions=("fp32",))["fp32_pairs_per_s"]
        head_mean = (head["fp32_pairs_per_s"] + head_after) / 2
        print(f"   = {rate / head_mean:.2f}x head-only fp32 (target >= 0.6; head-only {head['fp32_pairs_per_s']:,.0f} "
              f"pairs/s before and {head_after:,.0f} after the end-to-end runs)")
        print(f"   peak RSS: {peak:,.0f} MiB for {full_rows:,} pairs vs {quarter_peak:,.0f} MiB for {quarter_rows:,} "
              f"({quarter_rows / quarter_seconds:,.0f} pairs/s)")

    # 3. teachers
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
    print("\n3. teachers, batch 32, pairs padded to max length")
    for name, model in teachers.items():
        for max_length in (128, 64):
            teacher = teacher_rate(model, tokenizer, lefts, rights, max_length)
            print(f"   {name}, len {max_length}: {teacher:,.1f} pairs/s; "
                  f"score_pairs end to end = {rate / teacher:,.0f}x" + (" (target >= 500x)" if "BERT" in name and
                                                                     max_length == 128 else ""))


if __name__ == "__main__":
    main()
