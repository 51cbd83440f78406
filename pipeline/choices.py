"""What the pipeline's settings allow, standard library only: the command line offers these
before Beam and pyarrow are imported, and the library checks against the same tuples
(``pipeline.readers``, ``pipeline.store`` import them)."""
from __future__ import annotations

# Input table formats; a text format may be followed by .zst or .gz (pipeline/readers.py).
FORMATS = ("parquet", "jsonl", "csv", "tsv")
# How a store keeps token embeddings (pipeline/store.py).
DTYPES = ("float16", "int8")
# The columns a job writes itself, which a --keep-cols column may not be named like: the scores
# table's (score_pairs) and the distillation set's (label_pairs, pipeline/datasets.py).
SCORES_COLUMNS = ("left_id", "right_id", "score", "probs")
DISTILLATION_COLUMNS = ("left_id", "right_id", "left", "right", "logit", "soft_label", "logits", "soft_labels",
                        "truncated")
