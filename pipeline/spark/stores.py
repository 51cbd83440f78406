"""Stage one on Spark: texts -> the rows of one or two stores, as ordered Spark steps.

* :func:`text_table_texts` (id/text tables): tasks read each table with pairscore's readers into
  rows that carry a ``reason`` column for the unusable ones, a shuffle by (side, id) resolves each
  id (duplicates kept once, ids given with different texts dead-lettered), and the dead letters
  are written.
* :func:`encode_stores`: texts are joined to the ids of an existing store (read by tasks from its
  files), shuffled by text so ids sharing a text are encoded once, and the texts not stored with
  the same text are encoded by tasks writing the new part files; every existing part file is then
  rewritten without the ids just re-encoded (their text changed).
"""
from __future__ import annotations

from dataclasses import dataclass

from encoders.threads import ThreadPlan
from pipeline.readers import InputFile
from pipeline.spark import tasks
from pipeline.spark.batches import DEFAULT_BATCH_BYTES
from pipeline.spark.steps import SparkRun, collect, items
from pipeline.spark.session import task_slots
from pipeline.store import StoreLayout
from pipeline.text_checks import TextColumns


@dataclass(frozen=True)
class SparkSide:
    """One side's store: its layout, the files of an existing store it starts from, its text
    tables (id/text tables) and where the run stages it."""
    layout: StoreLayout
    existing_files: tuple[str, ...]
    text_files: tuple[InputFile, ...]
    staged_dir: str


def text_table_texts(spark, run: SparkRun, sides: dict[str, SparkSide], columns: TextColumns | dict[str, TextColumns],
                     dead_letter_dir: str, provenance: dict, batch_bytes: int = DEFAULT_BATCH_BYTES):
    """Every side's text tables -> a DataFrame (side, id, text) of the usable ids, one row each.
    ``columns``: the tables' id and text columns, by side (``--left-texts-id-col`` ...) or one
    pair for every side.
    Counts ``<side>_text_rows_read``, ``<side>_text_rows_kept``, ``<side>_text_rows_duplicate``;
    the dead letters are written (prefix ``<side>_texts.``)."""
    tables = tuple((side, f) for side, s in sides.items() for f in s.text_files)
    by_side = columns if isinstance(columns, dict) else dict.fromkeys(sides, columns)
    rows = items(spark, len(tables)).mapInArrow(tasks.TextTableRows(tables, by_side, batch_bytes=batch_bytes),
                                                tasks.TEXT_ROWS_DDL).persist()
    good = rows.filter("reason is null")
    resolved = (good.repartition(max(2, task_slots(spark)), "side", "id")
                .mapInArrow(tasks.resolve_text_ids, tasks.TEXT_ROWS_DDL).persist())
    letters = rows.filter("reason is not null").unionByName(resolved.filter("reason is not null"))
    run.add(collect(letters.repartition(1).mapInArrow(tasks.WriteTextDeadLetters(dead_letter_dir, provenance),
                                                      tasks.RESULT_DDL)))
    for name, frame in (("read", rows), ("good", good), ("kept", resolved.filter("reason is null")),
                        ("conflicting", resolved.filter("reason is not null"))):
        for row in frame.groupBy("side").count().collect():
            run.counts[f"{row['side']}_text_rows_{name}"] = row["count"]
    for side in sides:
        count = lambda name: run.counts.get(f"{side}_text_rows_{name}", 0)  # noqa: E731
        run.counts[f"{side}_text_rows_duplicate"] = count("good") - count("kept") - count("conflicting")
    return resolved.filter("reason is null").select("side", "id", "text")


def encode_stores(spark, run: SparkRun, unique, sides: dict[str, SparkSide], model_dir: str | None, device: str,
                  provenance: dict, batch_size: int, threads: ThreadPlan = ThreadPlan()) -> None:
    """(side, id, text) -> every side's store files in its staging directory (new and kept part
    files, as :data:`tasks.RESULT_SCHEMA` rows in ``run``). Counts ``<side>_texts_encoded``,
    ``<side>_texts_reused`` (ids), ``<side>_texts_truncated``."""
    layouts = {side: s.layout for side, s in sides.items()}
    store_dirs = {side: s.staged_dir for side, s in sides.items()}
    stores = tuple((side, path) for side, s in sides.items() for path in s.existing_files)
    known = items(spark, len(stores)).mapInArrow(tasks.KnownIds(stores), tasks.KNOWN_DDL)
    to_encode = unique.join(known, ["side", "id"], "left").repartition(max(2, task_slots(spark)), "side", "text")
    encoded = run.add(collect(to_encode.mapInArrow(
        tasks.EncodeNew(model_dir, device, layouts, store_dirs, provenance, batch_size, threads=threads),
        tasks.RESULT_DDL)))
    if stores:
        new_files = {side: run.paths("store", side) for side in sides}
        run.add(collect(items(spark, len(stores)).mapInArrow(
            tasks.KeepOld(stores, new_files, layouts, store_dirs, provenance), tasks.RESULT_DDL)))
    for side in sides:
        reported = [r["info"] for r in encoded if r["kind"] == "counts" and r["side"] == side]
        for name in ("texts_encoded", "texts_reused", "texts_truncated"):
            run.counts[f"{side}_{name}"] = sum(c[name] for c in reported)
    # Results rows of kind "counts" name no file.
    run.results = [r for r in run.results if r["kind"] != "counts"]
