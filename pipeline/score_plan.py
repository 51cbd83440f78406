"""Stage two's plan, the same for every engine: each side's store (what ``--store`` holds, what
is added), the join (broadcast or shuffle) and its buckets, and the scores table's schema and
meaning. Decided before anything is written; Beam (pipeline/beam/score.py) and Spark
(pipeline/spark/score.py) then run the plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    import pyarrow as pa
    from pipeline.models import ModelFacts
    from pipeline.readers import InputFile
    from pipeline.store import PartPin, StoreLayout

# Python overhead per row of a store held in memory (dict entry, id string, arrays' share).
LOOKUP_OVERHEAD_BYTES = 200


@dataclass(frozen=True)
class SidePlan:
    """One side's store: its layout, the files it starts from, where it is written (staged)."""
    side: str
    layout: StoreLayout
    existing_parts: tuple[PartPin, ...]   # the --store side's part files, pinned (empty without --store)
    existing_rows: int
    text_files: tuple[InputFile, ...]
    output: str   # relative to --output, e.g. store/left


def existing_store(store: str | None, student: ModelFacts, side: str,
                   dtype: str) -> tuple[tuple[PartPin, ...], int, str]:
    """(part files pinned, rows, dtype) of ``--store``'s ``side``, checked against the model;
    empty, with ``dtype`` (``--dtype``), without a store."""
    from pipeline.store import StoreWanted, open_store_side

    if store is None:
        return (), 0, dtype
    layout = student.layout(side, dtype)
    opened = open_store_side(store, side, StoreWanted(
        student.fingerprint, student.config.encoder, layout.tokens_kept, layout.dim, layout.pooled_dim,
        student.config.token_selection, student.config.max_length(side)))
    return opened.parts, opened.manifest.rows, opened.manifest.dtype


def store_bytes_bound(plans: Mapping[str, SidePlan], pair_rows: int) -> int:
    """Both stores' size, bounded before the run (their final size is known only after it): rows
    of the existing store plus every row that could add a text (the text tables in id mode, two
    per pair in text mode)."""
    from pipeline.readers import count_input_rows

    estimate = 0
    for plan in plans.values():
        new_rows = count_input_rows(plan.text_files) if plan.text_files else pair_rows
        # Pooled embeddings are held as stored, float16 (pipeline.scoring_core.StoreLookup).
        row_bytes = plan.layout.token_bytes + 2 * (plan.layout.pooled_dim or 0) + LOOKUP_OVERHEAD_BYTES
        estimate += (plan.existing_rows + new_rows) * row_bytes
    return estimate


def choose_join(join: str, limit_mb: int, estimate: int) -> tuple[str, str]:
    """(join, why) for ``--join`` ``join``: auto is broadcast when both stores (``estimate``
    bytes, :func:`store_bytes_bound`) fit ``--broadcast-limit-mb`` in a worker's memory."""
    if join != "auto":
        return join, f"--join {join}"
    chosen = "broadcast" if estimate <= limit_mb * 2 ** 20 else "shuffle"
    return chosen, f"auto: stores bounded by {estimate / 2 ** 20:,.0f} MB vs --broadcast-limit-mb {limit_mb}"


def shuffle_buckets(store_bytes: int, pair_rows: int, minimum: int = 64) -> int:
    """Partitions of the shuffle join and of ``--dedupe-pairs``: enough that one bucket's store
    rows (about 256 MiB) and pairs (about 2M) fit a worker, and never fewer than ``minimum`` so
    that many workers share the work (Beam: 64; Spark: twice its task slots, each bucket a task)."""
    return max(minimum, -(-store_bytes // (256 << 20)), -(-pair_rows // (2 << 20)))


def score_meaning(model_dir: str | None, student: ModelFacts) -> str:
    """What the scores table's ``score`` means (its ``pairscore.score`` metadata)."""
    from pipeline.provenance import CLASS_PROBABILITY_SCORE, COSINE_SCORE, PROBABILITY_SCORE

    if model_dir is None:
        return COSINE_SCORE
    return CLASS_PROBABILITY_SCORE if student.config.num_outputs > 1 else PROBABILITY_SCORE


def scores_schema(student: ModelFacts, kept: Sequence[pa.Field]) -> pa.Schema:
    """left_id, right_id, score (+ probs for k classes) and the kept columns, typed by
    :func:`pipeline.pairs.kept_fields` (Parquet keeps its types, JSONL JSON's, CSV/TSV strings)."""
    import pyarrow as pa

    fields = [pa.field("left_id", pa.string()), pa.field("right_id", pa.string()), pa.field("score", pa.float32())]
    if student.config.num_outputs > 1:
        fields.append(pa.field("probs", pa.list_(pa.float32())))
    return pa.schema(fields + list(kept))


def score_counts(id_mode: bool, pairs: Mapping[str, int], pair_dead: Mapping[str, int], rows_written: int,
                 sides: Mapping[str, tuple[Mapping[str, int], Mapping[str, int], Mapping[str, int]]],
                 ) -> tuple[dict[str, int], dict[str, int]]:
    """The summary's counts and dead letters by reason (a text table's as ``left_texts:REASON``),
    from either engine's counters: ``pairs`` read, scored and duplicate, the scores table's
    ``rows_written``, and per side (text-table rows read, kept, duplicate and unused in id mode;
    their dead letters; texts encoded, reused from the store and truncated)."""
    counts = {"pairs_read": pairs.get("read", 0), "pairs_scored": pairs.get("scored", 0),
              "pairs_duplicate": pairs.get("duplicate", 0), "pairs_dead_lettered": sum(pair_dead.values()),
              "rows_written": rows_written}
    dead = dict(pair_dead)
    for side, (rows, side_dead, texts) in sides.items():
        if id_mode:
            counts.update({f"{side}_text_rows_{name}": rows.get(name, 0)
                           for name in ("read", "kept", "duplicate", "unused")})
            counts[f"{side}_text_rows_dead_lettered"] = sum(side_dead.values())
        counts.update({f"{side}_{name}": texts.get(name, 0)
                       for name in ("texts_encoded", "texts_reused", "texts_truncated")})
        dead.update({f"{side}_texts:{reason}": count for reason, count in side_dead.items()})
    return counts, dead
