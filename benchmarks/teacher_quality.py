"""Teacher quality on a labeled dev set, next to the zero-training cosine baseline.

    python benchmarks/teacher_quality.py [--teacher runs/teacher-qqp] [--dev ../shared/data/qqp/dev.jsonl]

Baseline: cosine of the mean-pooled, normalised packaged all-MiniLM-L6-v2 embeddings of the two
texts (no training at all); its accuracy is at the best threshold on the dev set itself, as in
FINDINGS.md, so it is optimistic. Teacher (when given): its saved checkpoint is loaded and run over
the dev pairs; accuracy at probability 0.5. Both report ROC-AUC. Binary dev sets (label 0/1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from encoders.checkpoint import build_student  # noqa: E402
from encoders.config import baseline_config  # noqa: E402
from encoders.teacher import load_teacher, soft_labels  # noqa: E402
from encoders.neighbours import embed_texts  # noqa: E402
from encoders.metrics import best_threshold_accuracy, roc_auc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", default=str(REPO.parent / "shared" / "data" / "qqp" / "dev.jsonl"))
    parser.add_argument("--teacher", default=None, help="teacher checkpoint directory (optional)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    with open(args.dev, encoding="utf-8") as handle:
        pairs = [json.loads(line) for line in handle]
    labels = np.array([int(p["label"]) for p in pairs])
    lefts, rights = [p["left"] for p in pairs], [p["right"] for p in pairs]
    print(f"{args.dev}: {len(pairs)} pairs, {labels.mean():.1%} positive")

    started = time.perf_counter()
    encoder = build_student(baseline_config()).encoder.left  # packaged MiniLM, all layers, max length 128
    cosine = (embed_texts(encoder, lefts, args.batch_size) * embed_texts(encoder, rights, args.batch_size)).sum(1)
    accuracy, threshold = best_threshold_accuracy(cosine.numpy(), labels)
    print(f"cosine baseline   AUC {roc_auc(cosine.numpy(), labels):.4f}  accuracy {accuracy:.2%} "
          f"(best dev threshold {threshold:.3f})  {time.perf_counter() - started:.0f} s")

    if args.teacher:
        started = time.perf_counter()
        teacher = load_teacher(args.teacher)
        probs = soft_labels(teacher.predict_texts(lefts, rights, args.batch_size))
        print(f"teacher           AUC {roc_auc(probs, labels):.4f}  accuracy {((probs >= 0.5) == labels).mean():.2%} "
              f"(at 0.5; predicted positive {(probs >= 0.5).mean():.1%})  max length {teacher.task.max_length}  "
              f"{time.perf_counter() - started:.0f} s  fingerprint {teacher.fingerprint[:16]}")


if __name__ == "__main__":
    main()
