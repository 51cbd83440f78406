#!/usr/bin/env bash
# The whole distillation chain on the example data (about 5 minutes on a busy 2-core CPU): teacher,
# labels, student, scores. The figures mean nothing at this size (36 labeled pairs); the point is
# that every step runs and hands the next one what it needs. Outputs go to runs/smoke-*/.
set -euo pipefail
cd "$(dirname "$0")/.."
# 1. a cross-encoder teacher from the labeled pairs (1 epoch on at most 24 pairs)
pairscore train-teacher --train examples/train/labeled.jsonl --dev examples/train/dev.jsonl \
    --task binary --epochs 1 --max-length 64 --limit 24 --output runs/smoke-teacher --overwrite
# 2. the teacher labels unlabeled pairs: the distillation set
pairscore label-pairs --pairs examples/pairs.jsonl --teacher runs/smoke-teacher --max-length 64 \
    --output runs/smoke-distill --overwrite
# 3. a student distilled from it (de-cos head, both stages, one epoch each, at most 200 pairs)
pairscore train-student --distill runs/smoke-distill --dev examples/train/dev.jsonl --head de-cos \
    --stage1-epochs 1 --stage2-epochs 1 --limit 200 --output runs/smoke-student --overwrite
# 4. the student scores pairs
pairscore score-pairs --pairs examples/pairs.jsonl --keep-cols pair_id --model runs/smoke-student \
    --output runs/smoke-scores --overwrite
