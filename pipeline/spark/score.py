"""Stage two on Spark: the same output directory as the Beam engine, from ordered Spark steps.

1. **Texts** (only for texts not stored yet): id mode reads the text tables in tasks (one per
   file) into rows carrying a ``reason`` column for the unusable ones, resolves each id (a shuffle
   by side and id) and writes the text tables' dead letters; text mode reads the pair slices and
   keeps each distinct text once.
2. **Stores**: the texts are joined to the ids of ``--store`` (read by tasks from its files),
   shuffled by text so ids sharing a text are encoded once, and the texts not stored with the same
   text are encoded by tasks that write the new part files; then every existing part file is
   rewritten without the ids just re-encoded (its text changed).
3. **Scores**: one task per pair slice (a text file, or a run of Parquet row groups) reads it with
   pairscore's readers, scores it through the core with both stores held in the worker (loaded
   from the files of step 2, once per Python worker), and writes a scores part file and its dead
   letters.

Every step's tasks write into the run's staging directory under attempt-unique names and return a
row per file (``tasks.RESULT_SCHEMA``); the driver keeps the files of the rows it received (the
successful attempts) and deletes every other file a step left in staging, so the commit
(``pipeline/outputs.py``, by the job) moves exactly one copy of every row. Rows written and dead
letters are counted from the kept files' footers; rows read, texts encoded and reused from the
successful attempts' result rows (never from accumulators, which a retried task counts twice).

Spark does not run speculative copies in ``local`` mode; on a cluster with
``spark.speculation=true`` a losing copy's files are deleted like a failed attempt's.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import files
from pipeline.readers import InputFile, read_slices
from pipeline.scoring_core import PairColumns
from pipeline.spark import tasks
from pipeline.spark.session import task_slots
from pipeline.store import StoreLayout
from pipeline.text_checks import TextColumns


@dataclass(frozen=True)
class SparkSide:
    """One side's store: its layout, the files of ``--store`` it starts from, its text tables (id
    mode) and where the run stages it."""
    layout: StoreLayout
    existing_files: tuple[str, ...]
    text_files: tuple[InputFile, ...]
    staged_dir: str


@dataclass(frozen=True)
class SparkScoreSettings:
    """Everything the Spark steps need, decided by the job before any task starts."""
    pair_files: tuple[InputFile, ...]
    columns: PairColumns
    kept: tuple[pa.Field, ...]
    schema: pa.Schema
    provenance: dict
    sides: dict[str, SparkSide]
    texts: TextColumns
    scores_dir: str
    dead_letter_dir: str
    model_dir: str | None = None
    device: str = "cpu"
    batch_size: int = 8192
    encode_batch_size: int = 128
    threads: int | None = None
    slice_rows: int = 1 << 14


@dataclass
class SparkRun:
    """What the steps produced: the files kept, and the counts the summary reconciles."""
    files: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, dict[str, int]] = field(default_factory=dict)   # prefix -> reason -> count


def _items(spark, count: int):
    """A DataFrame of ``count`` work items (their indices), one per partition."""
    return spark.sparkContext.parallelize([(i,) for i in range(count)], max(1, count)).toDF(tasks.ITEMS_DDL)


def _collect(frame) -> list[dict]:
    return [{**row.asDict(), "info": json.loads(row["info"])} for row in frame.collect()]


class _Kept:
    """The result rows of successful attempts: the files to keep, and the counts they report."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, rows: list[dict]) -> list[dict]:
        self.rows += rows
        return rows

    def paths(self, kind: str, side: str | None = None) -> tuple[str, ...]:
        return tuple(sorted(r["path"] for r in self.rows if r["kind"] == kind and (side is None or r["side"] == side)))


def execute_score(spark, settings: SparkScoreSettings) -> SparkRun:
    """Run steps 1-3 (module docstring) and clean staging down to the successful attempts' files."""
    kept = _Kept()
    run = SparkRun()
    partitions = max(2, task_slots(spark))
    layouts = {side: s.layout for side, s in settings.sides.items()}
    store_dirs = {side: s.staged_dir for side, s in settings.sides.items()}
    slices = tuple(piece for file in settings.pair_files for piece in read_slices(file, settings.slice_rows))

    # 1. texts
    if settings.columns.id_mode:
        tables = tuple((side, f) for side, s in settings.sides.items() for f in s.text_files)
        rows = _items(spark, len(tables)).mapInArrow(tasks.TextTableRows(tables, settings.texts),
                                                     tasks.TEXT_ROWS_DDL).persist()
        for row in rows.groupBy("side").count().collect():
            run.counts[f"{row['side']}_text_rows_read"] = row["count"]
        resolved = (rows.filter("reason is null").repartition(partitions, "side", "id")
                    .mapInArrow(tasks.resolve_text_ids, tasks.TEXT_ROWS_DDL).persist())
        letters = rows.filter("reason is not null").unionByName(resolved.filter("reason is not null"))
        kept.add(_collect(letters.repartition(1).mapInArrow(
            tasks.WriteTextDeadLetters(settings.dead_letter_dir, settings.provenance), tasks.RESULT_DDL)))
        unique = resolved.filter("reason is null").select("side", "id", "text")
    else:
        unique = (_items(spark, len(slices))
                  .mapInArrow(tasks.PairTexts(slices, settings.columns, settings.kept, settings.batch_size),
                              tasks.PAIR_TEXTS_DDL)
                  .dropDuplicates(["side", "id"]))

    # 2. stores
    stores = tuple((side, path) for side, s in settings.sides.items() for path in s.existing_files)
    known = _items(spark, len(stores)).mapInArrow(tasks.KnownIds(stores), tasks.KNOWN_DDL)
    to_encode = unique.join(known, ["side", "id"], "left").repartition(partitions, "side", "text")
    encoded = kept.add(_collect(to_encode.mapInArrow(
        tasks.EncodeNew(settings.model_dir, settings.device, layouts, store_dirs, settings.provenance,
                        settings.encode_batch_size), tasks.RESULT_DDL)))
    new_files = {side: kept.paths("store", side) for side in settings.sides}
    if stores:
        kept.add(_collect(_items(spark, len(stores)).mapInArrow(
            tasks.KeepOld(stores, new_files, layouts, store_dirs, settings.provenance), tasks.RESULT_DDL)))
    for side in settings.sides:
        counts = [r["info"] for r in encoded if r["kind"] == "counts" and r["side"] == side]
        for name in ("texts_encoded", "texts_reused", "texts_truncated"):
            run.counts[f"{side}_{name}"] = sum(c[name] for c in counts)
    if settings.columns.id_mode:
        rows.unpersist()
        resolved.unpersist()

    # 3. scores
    scored = kept.add(_collect(_items(spark, len(slices)).mapInArrow(tasks.ScoreSlices(
        slices, {f.path: i for i, f in enumerate(settings.pair_files)}, tuple(f.path for f in settings.pair_files),
        settings.columns, settings.kept, settings.schema, layouts,
        {side: kept.paths("store", side) for side in settings.sides}, settings.model_dir, settings.device,
        settings.scores_dir, settings.dead_letter_dir, settings.provenance, settings.batch_size, settings.threads),
        tasks.RESULT_DDL)))
    run.counts["pairs_read"] = sum(r["info"]["rows_read"] for r in scored if r["kind"] == "scores")

    run.files = _keep_only(kept, [settings.scores_dir, settings.dead_letter_dir, *store_dirs.values()])
    _count_from_footers(run, kept)
    return run


def _keep_only(kept: _Kept, directories: Sequence[str]) -> list[str]:
    """Delete every file in ``directories`` that no successful attempt reported; return the kept ones."""
    wanted = {r["path"] for r in kept.rows if r["path"]}
    for directory in directories:
        for path in files.list_files(directory):
            if path not in wanted:
                files.delete(path)
    return sorted(wanted)


def _count_from_footers(run: SparkRun, kept: _Kept) -> None:
    """Rows written and dead letters by reason, from the kept files themselves."""
    run.counts["rows_written"] = _footer_rows(kept.paths("scores"))
    letters: dict[str, dict[str, int]] = defaultdict(dict)
    for row in kept.rows:
        if row["kind"] != "dead_letter":
            continue
        with files.open_input(row["path"]) as handle:
            reasons = pq.read_table(handle, columns=["reason"]).column("reason").to_pylist()
        for reason in reasons:
            letters[row["side"]][reason] = letters[row["side"]].get(reason, 0) + 1
    run.dead_letters = {prefix: dict(sorted(found.items())) for prefix, found in letters.items()}


def _footer_rows(paths: Sequence[str]) -> int:
    total = 0
    for path in paths:
        with files.open_input(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total
