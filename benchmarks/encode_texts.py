"""Stage one throughput: ``encode_texts`` end to end vs a plain transformers loop.

    python benchmarks/encode_texts.py [--texts 1500] [--repeats 3] [--batch-size 128]

Both sides encode the same unique texts with the same encoder (the packaged all-MiniLM-L6-v2,
all 6 layers) and the same batch size. The plain loop tokenizes and runs the model in input
order and keeps nothing; ``encode_texts`` runs the whole job on the in-process DirectRunner
(read, dedupe, sort by length, encode, project, write the zstd store, manifest, summary), so
its time includes pipeline start-up and model loading. Two corpora from ../shared/data:
short texts (QQP questions) and mixed lengths (TrecQA questions plus answer sentences).
Prints medians of ``--repeats`` runs and their ratio, and store bytes per text.
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

from encoders.checkpoint import build_student, save_student  # noqa: E402
from encoders.config import StudentConfig  # noqa: E402
from jobs.encode_texts import EncodeTextsJob, run  # noqa: E402
from pipeline.store import store_files  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"


def load_texts(corpus: str, limit: int) -> list[str]:
    """Texts in file order (duplicates kept, as a real input has them), until ``limit`` unique."""
    files = {"short": [SHARED_DATA / "qqp" / "train.jsonl"],
             "mixed": [SHARED_DATA / "trecqa" / "train.jsonl", SHARED_DATA / "trecqa" / "dev.jsonl"]}[corpus]
    texts, unique = [], set()
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                pair = json.loads(line)
                for text in (pair["left"], pair["right"]):
                    if len(unique) >= limit:
                        return texts
                    if text.strip():
                        texts.append(text)
                        unique.add(text)
    return texts


def plain_loop(side, texts: list[str], batch_size: int) -> float:
    """Seconds for tokenizer + model over ``texts`` in order, batch by batch (the baseline)."""
    tokenizer, model = side.tokenizer, side.transformer
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                              max_length=side.max_length, return_tensors="pt")
            model(**batch).last_hidden_state
    return time.perf_counter() - started


def pipeline_run(model_dir: str, source: Path, side: str, batch_size: int, workdir: Path) -> tuple[float, int, int]:
    """Seconds for the whole job, store bytes, store rows."""
    output = workdir / f"store-{time.monotonic_ns()}"
    started = time.perf_counter()
    summary = run(EncodeTextsJob(inputs=(str(source),), output=str(output), model_dir=model_dir, side=side,
                                 batch_size=batch_size), [], argv=[])
    seconds = time.perf_counter() - started
    size = sum(os.path.getsize(p) for p in store_files(str(output)))
    return seconds, size, summary.counts["store_rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1500, help="unique texts per corpus")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        sys.exit(f"shared data not found at {SHARED_DATA}")

    # DiPair's product x term shape (N=4, M=12, D=128) on the default encoder, all 6 layers;
    # max length 128 on both sides so that long texts are really encoded long.
    config = StudentConfig(left_tokens=4, right_tokens=12, left_max_length=128, right_max_length=128, dim=128)
    student = build_student(config)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = str(save_student(student, workdir / "student"))
        print(f"torch threads: {torch.get_num_threads()}, batch size {args.batch_size}, "
              f"repeats {args.repeats}, encoder {config.encoder}")
        print(f"{'corpus':<7} {'unique':>6} {'rows':>6} {'plain texts/s':>14} {'job texts/s':>12} "
              f"{'ratio':>6} {'target':>7} {'store B/text':>12} {'N*D*2':>6}")
        for corpus, side, target in (("short", "left", 0.9), ("mixed", "right", 1.3)):
            texts = load_texts(corpus, args.texts)
            unique = list(dict.fromkeys(texts))
            source = workdir / f"{corpus}.jsonl"
            source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
            encoder = student.encoder.side(side)
            plain_times, job_times = [], []
            for _ in range(args.repeats):  # interleaved, so drift on a noisy machine hits both
                plain_times.append(plain_loop(encoder, unique, args.batch_size))
                seconds, size, rows = pipeline_run(model_dir, source, side, args.batch_size, workdir)
                job_times.append(seconds)
            plain_rate = len(unique) / statistics.median(plain_times)
            job_rate = rows / statistics.median(job_times)
            print(f"{corpus:<7} {len(unique):>6} {len(texts):>6} {plain_rate:>14.1f} {job_rate:>12.1f} "
                  f"{job_rate / plain_rate:>6.2f} {'>= ' + str(target):>7} {size / rows:>12.0f} "
                  f"{encoder.num_tokens * encoder.output_dim * 2:>6}", flush=True)


if __name__ == "__main__":
    main()
