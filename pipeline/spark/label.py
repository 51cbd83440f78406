"""Teacher labeling on Spark (``label_pairs --engine spark``): the distillation set the Beam engine
writes, from ordered Spark steps around the engine-free labeling (``pipeline/labeling.py``).

1. **Read**: one task per pair slice (a text file, or a run of Parquet row groups) reads it with
   pairscore's readers and checks each row as Beam's ``ExtractPairs`` does
   (:func:`pipeline.pair_checks.check_read_items`), into rows of pairs (``key`` = ``pair_key`` of the
   two texts, ids, texts, kept columns) and, in the same schema, the dead letters (a ``reason``
   column): so dead letters, their ``source`` and their ``row`` are Beam's.
2. **Skip labeled** (``--previous`` only): the pairs are joined with the previous set's keys (read
   by tasks from its part files; a shuffle join, so the previous set never has to fit in one
   worker), which marks the pairs already labeled; tasks copy the previous set's rows into this
   run's staging with soft labels at this run's temperature.
3. **Label and write**: the pairs are spread by their source over the task slots; each task labels
   its pairs by sort windows with the teacher (loaded once per Python worker) and writes one part
   file of distillation rows and one of its dead letters, under attempt-unique names.

As for stage two (``score.py``), the driver keeps only the files successful attempts reported and
counts from them: rows read, labeled, skipped and truncated from their result rows, output rows
from the kept files' footers, dead letters from the kept dead-letter files.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import files
from pipeline.datasets import pair_key
from pipeline.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter
from pipeline.labeling import LabelSettings, label_window, load_labeling_teacher, relabel
from pipeline.pair_checks import check_read_items
from pipeline.pairs import PairColumns, TextPair, kept_column_values
from pipeline.provenance import stamped
from pipeline.readers import InputError, InputFile, ReadSlice, SourcedRow, open_raw, parquet_file, read_rows, read_slices
from pipeline.spark import tasks
from pipeline.spark.batches import DEFAULT_BATCH_BYTES
from pipeline.spark.steps import SparkRun, collect, items, narrow
from pipeline.writers import COMPRESSION

LETTERS = tuple(DEAD_LETTER_SCHEMA.names)   # reason, detail, source, row
TEXTS = ("key", "left_id", "right_id", "left", "right")
LABELED = "_labeled"   # true on a pair the previous set holds (step 2)


def kept_name(position: int) -> str:
    """The kept column at ``position`` between the steps (by position: a kept column may be named
    like any of the steps' own columns, ``source`` or ``key``)."""
    return f"_kept{position}"


def read_schema(kept: Sequence[pa.Field]) -> pa.Schema:
    """Step 1's rows: pairs and dead letters in one schema (``source`` set on both)."""
    return pa.schema([*(pa.field(name, pa.string()) for name in TEXTS),
                      *(f.with_name(kept_name(i)) for i, f in enumerate(kept)),
                      *(pa.field(name, pa.string()) for name in LETTERS)])


def slice_rows(piece: ReadSlice) -> Iterator[SourcedRow | DeadLetter]:
    """Every row of a slice with every column, as :func:`pipeline.readers.read_rows` gives a whole
    file's (``path:ROWINDEX`` sources for Parquet, whose slices are runs of row groups)."""
    if piece.file.format != "parquet":
        yield from read_rows(piece.file)
        return
    path, index = piece.file.path, piece.first_row
    with open_raw(path) as raw:
        parquet = parquet_file(raw, path)
        for group in piece.row_groups:
            try:
                table = parquet.read_row_group(group)
            except (pa.ArrowException, OSError) as err:
                raise InputError(f"{path} is corrupt: reading Parquet row group {group} (rows from {index}) failed "
                                 f"({err}); the rest of the file cannot be read") from err
            for fields in table.to_pylist():
                yield SourcedRow(f"{path}:{index}", fields)
                index += 1


@dataclass(frozen=True)
class ReadPairs:
    """Step 1's task body: pair slices -> pairs and dead letters (:func:`read_schema`), in batches
    of at most ``batch_rows`` rows and about ``batch_bytes`` bytes of text (long texts make few
    rows a batch, so a worker's memory stays bounded whatever the texts' length)."""
    slices: tuple[ReadSlice, ...]
    columns: PairColumns
    kept: tuple[pa.Field, ...]
    batch_rows: int = 4096
    batch_bytes: int = DEFAULT_BATCH_BYTES

    def _batch(self, rows: list[dict]) -> pa.RecordBatch:
        kept = {kept_name(i): f for i, f in enumerate(self.kept)}
        return pa.RecordBatch.from_arrays(
            [pa.array(kept_column_values([r.get(f.name) for r in rows], kept[f.name]), f.type) if f.name in kept
             else pa.array([r.get(f.name) for r in rows], pa.string()) for f in read_schema(self.kept)],
            schema=read_schema(self.kept))

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rows, size = [], 0
        for item in tasks.items_of(batches):
            for read, checked in check_read_items(slice_rows(self.slices[item]), self.columns, self.kept,
                                                  self.batch_rows):
                result = read if checked is None else checked
                if isinstance(result, DeadLetter):
                    row = result.to_record()
                else:
                    row = {"key": pair_key(result.left, result.right), "left_id": result.left_id,
                           "right_id": result.right_id, "left": result.left, "right": result.right,
                           "source": result.source, **{kept_name(i): value for i, value in enumerate(result.kept)}}
                rows.append(row)
                # The texts (or a dead letter's whole row) dominate a row's size.
                size += sum(len(v) for v in row.values() if isinstance(v, str))
                if len(rows) >= self.batch_rows or size >= self.batch_bytes:
                    yield self._batch(rows)
                    rows, size = [], 0
        if rows:
            yield self._batch(rows)


@dataclass(frozen=True)
class PreviousKeys:
    """Step 2's task body: a previous set's part files -> the ``key`` of each of its rows."""
    paths: tuple[str, ...]

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for item in tasks.items_of(batches):
            with files.open_input(self.paths[item]) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(columns=["left", "right"]):
                    keys = [pair_key(left, right) for left, right in
                            zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())]
                    yield pa.RecordBatch.from_arrays([pa.array(keys, pa.string())], names=["key"])


@dataclass(frozen=True)
class CopyPrevious:
    """Step 2's task body: a previous set's part files -> part files of this run's set with soft
    labels at this run's temperature (:func:`pipeline.labeling.relabel`)."""
    paths: tuple[str, ...]
    schema: pa.Schema
    temperature: float
    directory: str
    provenance: dict

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        results = []
        for item in tasks.items_of(batches):
            with files.open_input(self.paths[item]) as handle:
                table = relabel(pq.read_table(handle), self.schema, self.temperature)
            path = files.join(self.directory, tasks.attempt_name("previous"))
            tasks.write_table(path, stamped(self.schema, self.provenance), [table])
            results.append(("labels", "previous", path, table.num_rows, {"previous_rows_copied": table.num_rows}))
        yield tasks.result_batch(results)


@dataclass(frozen=True)
class LabelAndWrite:
    """Step 3's task body: pairs (marked when already labeled) and dead letters -> a part file of
    distillation rows and, when there are any, a part file of dead letters. The distillation
    file's result row carries the task's counts."""
    settings: LabelSettings
    directory: str
    dead_letter_dir: str
    provenance: dict
    fail_once: str | None = field(default_factory=lambda: os.environ.get(tasks.FAIL_ONCE_ENV))

    def _teacher(self):
        from encoders.device import pick_device

        s = self.settings

        def build():
            return load_labeling_teacher(s).to(pick_device(s.device)).eval()
        return tasks.loaded(("teacher", s.teacher, s.fingerprint, s.max_length, s.device), build)

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        s = self.settings
        s.threads.apply()
        teacher = self._teacher()
        counts = {"rows_read": 0, "pairs_labeled": 0, "pairs_skipped_labeled": 0, "pairs_truncated": 0}
        letters: list[DeadLetter] = []
        window: list[TextPair] = []
        path = files.join(self.directory, tasks.attempt_name("labels"))

        def flush(out: pq.ParquetWriter) -> None:
            table, truncated = label_window(teacher, window, s)
            out.write_table(table)
            counts["pairs_labeled"] += table.num_rows
            counts["pairs_truncated"] += truncated
            window.clear()

        with files.create(path) as handle, pq.ParquetWriter(handle, stamped(s.schema, self.provenance),
                                                              compression=COMPRESSION) as out:
            for batch in batches:
                table = pa.Table.from_batches([batch])
                table = table.cast(pa.schema([f.with_type(narrow(f.type)) for f in table.schema]))
                counts["rows_read"] += table.num_rows
                letter = pc.is_valid(table.column("reason"))
                letters += [DeadLetter(r["reason"], r["detail"], r["source"], json.loads(r["row"]))
                            for r in table.filter(letter).select(list(LETTERS)).to_pylist()]
                pairs = table.filter(pc.invert(letter))
                if LABELED in pairs.column_names:
                    done = pc.fill_null(pairs.column(LABELED), False)
                    counts["pairs_skipped_labeled"] += pc.sum(done.cast(pa.int64())).as_py() or 0
                    pairs = pairs.filter(pc.invert(done))
                kept = [pairs.column(kept_name(i)).to_pylist() for i in range(len(s.keep))]
                for i, (left_id, right_id, left, right, source) in enumerate(zip(
                        *(pairs.column(name).to_pylist() for name in ("left_id", "right_id", "left", "right",
                                                                      "source")))):
                    window.append(TextPair(left_id, right_id, left, right, tuple(k[i] for k in kept), source))
                    if len(window) >= s.sort_window:
                        flush(out)
            if window:
                flush(out)
        results = [("labels", "", path, counts["pairs_labeled"], counts)]
        if letters:
            results.append(tasks.write_dead_letters(self.dead_letter_dir, "pairs", "", letters, self.provenance))
        tasks.maybe_fail_once(self.fail_once)
        yield tasks.result_batch(results)


@dataclass(frozen=True)
class SparkLabelSettings:
    """Everything the Spark steps need, decided by the job before any task starts."""
    pair_files: tuple[InputFile, ...]
    columns: PairColumns
    kept: tuple[pa.Field, ...]
    label: LabelSettings
    provenance: dict
    directory: str               # the output's staging directory: the set's part files
    dead_letter_dir: str
    previous_files: tuple[str, ...] = ()
    slice_rows: int = 1 << 14
    batch_bytes: int = DEFAULT_BATCH_BYTES


def execute_label(spark, settings: SparkLabelSettings) -> SparkRun:
    """Run steps 1-3 (module docstring); staging then holds only the successful attempts' files.
    Counts: ``pairs_read``, ``pairs_labeled``, ``pairs_skipped_labeled``, ``pairs_truncated``,
    ``previous_rows_copied``, ``output_rows``; ``run.dead_letters()[""]``: the dead letters by reason."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from pipeline.spark.session import task_slots

    run = SparkRun()
    slices = tuple(piece for file in settings.pair_files for piece in read_slices(file, settings.slice_rows))
    frame = items(spark, len(slices)).mapInArrow(
        ReadPairs(slices, settings.columns, settings.kept, batch_bytes=settings.batch_bytes),
        from_arrow_schema(read_schema(settings.kept)))
    previous = settings.previous_files
    if previous:
        keys = items(spark, len(previous)).mapInArrow(PreviousKeys(previous), "key string")
        frame = frame.join(keys.distinct().withColumn(LABELED, F.lit(True)), "key", "left")
        run.add(collect(items(spark, len(previous)).mapInArrow(CopyPrevious(
            previous, settings.label.schema, settings.label.temperature, settings.directory, settings.provenance),
            tasks.RESULT_DDL)))
    labeled = run.add(collect(frame.repartition(max(2, task_slots(spark)), "source").mapInArrow(
        LabelAndWrite(settings.label, settings.directory, settings.dead_letter_dir, settings.provenance),
        tasks.RESULT_DDL)))
    run.keep_only_results([settings.directory])
    for name in ("rows_read", "pairs_labeled", "pairs_skipped_labeled", "pairs_truncated"):
        run.counts[name] = sum(r["info"][name] for r in labeled if r["kind"] == "labels")
    run.counts["pairs_read"] = run.counts.pop("rows_read")
    run.counts["previous_rows_copied"] = sum(r["info"].get("previous_rows_copied", 0) for r in run.results
                                             if r["kind"] == "labels")
    run.counts["output_rows"] = run.footer_rows("labels")
    return run
