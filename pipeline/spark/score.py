"""Stage two on Spark: the same output directory as the Beam engine, from ordered Spark steps.

1. **Texts** (``stores.py``): id mode reads the text tables; text mode reads the pair slices and
   keeps each distinct text once.
2. **Stores** (``stores.py``): the texts not stored yet are encoded, the existing store's files
   rewritten without the ids re-encoded.
3. **Scores** (broadcast join; the bucketed join for stores past a slot's memory is ``join.py``):
   one task per pair slice (a text file, or a run of Parquet row groups) reads it with
   pairscore's readers, scores it through the core with both stores held in the worker (loaded
   from the part files of step 2 by their paths, once per Python worker: never collected to the
   driver nor broadcast), and writes a scores part file and its dead letters.

Every step's tasks write into the run's staging directory under attempt-unique names and return a
row per file (``tasks.RESULT_SCHEMA``); the driver keeps the files of the rows it received (the
successful attempts) and deletes every other part file a step left in staging, so the commit
(``pipeline/output/commit.py``, by the job) moves exactly one copy of every row. Rows written and dead
letters are counted from the kept files (footers, reason columns); rows read, texts encoded and
reused from the successful attempts' result rows, never from accumulators, which a retried task
counts twice.

Spark does not run speculative copies in ``local`` mode; on a cluster with
``spark.speculation=true`` a losing copy's files are deleted like a failed attempt's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa

from encoders.threads import ThreadPlan
from pipeline.readers import InputFile, read_slices
from pipeline.scoring_core import PairColumns
from pipeline.spark import tasks
from pipeline.spark.batches import arrow_batch_bytes
from pipeline.spark.join import score_bucketed
from pipeline.spark.steps import SparkRun, collect, items
from pipeline.spark.stores import SparkSide, encode_stores, text_table_texts
from pipeline.text_checks import TextColumns

__all__ = ["SparkRun", "SparkScoreSettings", "SparkSide", "execute_score"]


@dataclass(frozen=True)
class SparkScoreSettings:
    """Everything the Spark steps need, decided by the job before any task starts."""
    pair_files: tuple[InputFile, ...]
    columns: PairColumns
    kept: tuple[pa.Field, ...]
    schema: pa.Schema
    provenance: dict
    sides: dict[str, SparkSide]
    texts: TextColumns | dict[str, TextColumns]   # the text tables' columns, by side (or one pair for both)
    scores_dir: str
    dead_letter_dir: str
    model_dir: str | None = None
    device: str = "cpu"
    batch_size: int = 8192
    encode_batch_size: int = 128
    threads: ThreadPlan = ThreadPlan()     # the workers' torch threads (pipeline/spark/session.thread_plan)
    slice_rows: int = 1 << 14
    join: str = "broadcast"      # or "shuffle": the bucketed join (pipeline/spark/join.py)
    buckets: int = 64            # of the bucketed join (pipeline.score_plan.shuffle_buckets)
    batch_bytes: int | None = None   # of an Arrow batch; None: the session's (pipeline/spark/batches.py)


def execute_score(spark, settings: SparkScoreSettings) -> SparkRun:
    """Run steps 1-3 (module docstring); staging then holds only the successful attempts' files.
    Counts: ``pairs_read``, ``rows_written`` and those of :mod:`pipeline.spark.stores`."""
    if settings.batch_bytes is None:
        settings = replace(settings, batch_bytes=arrow_batch_bytes(spark))
    run = SparkRun()
    slices = tuple(piece for file in settings.pair_files for piece in read_slices(file, settings.slice_rows))
    if settings.columns.id_mode:
        unique = text_table_texts(spark, run, settings.sides, settings.texts, settings.dead_letter_dir,
                                  settings.provenance, settings.batch_bytes)
    else:
        unique = (items(spark, len(slices))
                  .mapInArrow(tasks.PairTexts(slices, settings.columns, settings.kept, settings.batch_size,
                                              settings.batch_bytes),
                              tasks.PAIR_TEXTS_DDL)
                  .dropDuplicates(["side", "id"]))
    encode_stores(spark, run, unique, settings.sides, settings.model_dir, settings.device, settings.provenance,
                  settings.encode_batch_size, settings.threads)
    stored = {side: run.paths("store", side) for side in settings.sides}
    if settings.join == "shuffle":
        scored = run.add(score_bucketed(spark, slices, settings, stored))
    else:
        scored = run.add(collect(items(spark, len(slices)).mapInArrow(tasks.ScoreSlices(
            slices, {f.path: i for i, f in enumerate(settings.pair_files)}, tuple(f.path for f in settings.pair_files),
            settings.columns, settings.kept, settings.schema, {side: s.layout for side, s in settings.sides.items()},
            stored, settings.model_dir, settings.device, settings.scores_dir, settings.dead_letter_dir,
            settings.provenance, settings.batch_size, settings.threads, settings.batch_bytes), tasks.RESULT_DDL)))
    run.counts["pairs_read"] = sum(r["info"]["rows_read"] for r in scored if r["kind"] == "scores")
    run.keep_only_results([settings.scores_dir, settings.dead_letter_dir,
                           *(s.staged_dir for s in settings.sides.values())])
    run.counts["rows_written"] = run.footer_rows("scores")
    return run
