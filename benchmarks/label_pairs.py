"""Teacher labeling throughput: ``label_pairs`` end to end vs a plain PyTorch loop.

    python benchmarks/label_pairs.py [--pairs 1000] [--repeats 3] [--batch-size 64] [--max-length 128]

Both sides label the same QQP dev pairs (../shared/data) with the same teacher and batch size.
The teacher is the packaged all-MiniLM-L6-v2 with a fresh (untrained, seeded) one-logit head, saved
as a teacher checkpoint: its speed is a trained MiniLM cross-encoder's. The plain loop is
tokenizer(left, right, padding=True) + model in input order, batch by batch, with the model already
loaded, writing nothing. ``label_pairs`` is the whole job on the in-process DirectRunner: pipeline
start-up, teacher loading and fingerprinting (once to check, once on the worker), read, check,
tokenize, sort by length, label, soft labels, zstd Parquet, manifest and summary.
Runs are interleaved so drift on a shared machine hits both; prints medians and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from encoders.sources import DEFAULT_ENCODER  # noqa: E402
from encoders.teacher import CrossEncoder, TeacherTask, build_teacher, save_teacher  # noqa: E402
from jobs.label_pairs import LabelPairsJob, run  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"


def load_pairs(limit: int) -> list[dict]:
    with open(SHARED_DATA / "qqp" / "dev.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(limit), handle)]


def plain_loop(teacher: CrossEncoder, pairs: list[dict], batch_size: int) -> float:
    """Seconds for tokenizer + model over the pairs in input order (the baseline)."""
    tokenizer, model = teacher.tokenizer, teacher.model
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            part = pairs[start:start + batch_size]
            batch = tokenizer([p["left"] for p in part], [p["right"] for p in part], padding=True,
                              truncation="longest_first", max_length=teacher.task.max_length, return_tensors="pt")
            model(**batch).logits.float().numpy()
    return time.perf_counter() - started


def job_run(teacher_dir: str, source: Path, batch_size: int, workdir: Path) -> tuple[float, int]:
    """Seconds for the whole job, pairs labeled."""
    output = workdir / f"distill-{time.monotonic_ns()}"
    started = time.perf_counter()
    summary = run(LabelPairsJob(pairs=(str(source),), teacher=teacher_dir, output=str(output), batch_size=batch_size),
                  [], argv=[])
    return time.perf_counter() - started, summary.counts["pairs_labeled"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000, help="QQP dev pairs to label")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        sys.exit(f"shared data not found at {SHARED_DATA}")

    teacher = build_teacher(DEFAULT_ENCODER, TeacherTask("binary", max_length=args.max_length), seed=0).eval()
    pairs = load_pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        teacher_dir = str(save_teacher(teacher, workdir / "teacher"))
        source = workdir / "pairs.jsonl"
        source.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
        lengths = [t.num_tokens for t in teacher.tokenize([p["left"] for p in pairs], [p["right"] for p in pairs])]
        print(f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')!r}, "
              f"batch size {args.batch_size}, max length {args.max_length}, repeats {args.repeats}; "
              f"{len(pairs)} QQP dev pairs, tokens per pair median {statistics.median(lengths):.0f}, "
              f"max {max(lengths)}", flush=True)
        plain_times, job_times, labeled = [], [], 0
        for repeat in range(args.repeats):
            plain_times.append(plain_loop(teacher, pairs, args.batch_size))
            seconds, labeled = job_run(teacher_dir, source, args.batch_size, workdir)
            job_times.append(seconds)
            print(f"  repeat {repeat + 1}: plain {len(pairs) / plain_times[-1]:.1f} pairs/s, "
                  f"label_pairs {labeled / seconds:.1f} pairs/s", flush=True)
        plain_rate = len(pairs) / statistics.median(plain_times)
        job_rate = labeled / statistics.median(job_times)
        print(f"{'pairs':>6} {'plain pairs/s':>14} {'label_pairs pairs/s':>20} {'ratio':>6} {'target':>7}")
        print(f"{len(pairs):>6} {plain_rate:>14.1f} {job_rate:>20.1f} {job_rate / plain_rate:>6.2f} {'>= 0.9':>7}")


if __name__ == "__main__":
    main()
