"""The bucketed join on Spark (``--join shuffle``, or ``auto`` when the stores do not fit
``--broadcast-limit-mb``): for stores larger than a task slot's memory.

1. **Read**: one task per pair slice reads it with pairscore's readers into rows of prepared pairs
   (ids, kept columns, where each came from) and, in the same schema, the dead letters (a
   ``reason`` column); each pair carries the bucket of its left and of its right id (FNV-1a of the
   id modulo the job's bucket count, ``pipeline.scoring_core.id_hashes``: the same in every process).
2. **Attach left, then right**: the pairs are shuffled by their side's bucket; each task reads from
   the store's files only the rows whose id falls in its buckets (so it holds its buckets' share of
   the store, never the whole store), looks its pairs up and attaches their store columns
   (``_left_tokens`` ...); pairs whose id is not stored become ``left_text_missing`` dead letters.
3. **Score and write**: the head scores the joined rows (tokens cast back to the store's
   fixed-width binary, which Spark carries as variable-width) and each task writes a scores part
   file and its dead letters under attempt-unique names, as the broadcast path does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from encoders.threads import ThreadPlan
from pipeline import files
from pipeline.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter
from pipeline.models import HeadHandler
from pipeline.pair_reading import read_prepared
from pipeline.provenance import stamped
from pipeline.readers import ReadSlice
from pipeline.scoring_core import (FILE_COLUMN, POSITION_COLUMN, PairColumns, StoreLookup, id_hashes,
                                   missing_letters, score_table, store_columns)
from pipeline.spark import tasks
from pipeline.spark.batches import DEFAULT_BATCH_BYTES, byte_slices, scored_rows
from pipeline.spark.steps import narrow
from pipeline.store import StoreLayout
from pipeline.store_codec import side_arrays
from pipeline.writers import COMPRESSION

LETTERS = tuple(DEAD_LETTER_SCHEMA.names)   # reason, detail, source, row


def _bucket(ids: pa.ChunkedArray | pa.Array, buckets: int) -> pa.Array:
    return pa.array((id_hashes(ids) % np.uint64(buckets)).astype(np.int32))


def _letter_rows(letters: Sequence[DeadLetter], schema: pa.Schema) -> pa.Table:
    """Dead letters as rows of ``schema``: every other column null."""
    records = [letter.to_record() for letter in letters]
    arrays = [pa.array([r[f.name] for r in records], pa.string()) if f.name in LETTERS else pa.nulls(len(records), f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _with_nulls(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table``'s columns in ``schema``'s order, the columns it lacks null."""
    arrays = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _batches(table: pa.Table, max_rows: int, max_bytes: int) -> Iterator[pa.RecordBatch]:
    """``table`` as record batches of at most ``max_rows`` rows and ``max_bytes`` bytes: what a
    task hands Spark (a batch of pairs with their store columns can be large)."""
    for piece in byte_slices(table, max_rows, max_bytes):
        yield from piece.combine_chunks().to_batches()


def _letters_of(table: pa.Table) -> list[DeadLetter]:
    return [DeadLetter(r["reason"], r["detail"], r["source"], json.loads(r["row"]))
            for r in table.select(list(LETTERS)).to_pylist()]


def _partition_table(batches: Iterator[pa.RecordBatch]) -> pa.Table:
    tables = [pa.Table.from_batches([b]) for b in batches]
    table = pa.concat_tables(tables) if tables else None
    return table.cast(pa.schema([f.with_type(narrow(f.type)) for f in table.schema])) if table is not None else None


def read_schema(kept: Sequence[pa.Field]) -> pa.Schema:
    """Prepared pairs and dead letters in one schema (step 1)."""
    return pa.schema([pa.field("left_id", pa.string()), pa.field("right_id", pa.string()), *kept,
                      pa.field(FILE_COLUMN, pa.int32()), pa.field(POSITION_COLUMN, pa.int64()),
                      pa.field("_left_bucket", pa.int32()), pa.field("_right_bucket", pa.int32()),
                      *[pa.field(name, pa.string()) for name in LETTERS]])


def attached_schema(schema: pa.Schema, side: str, layout: StoreLayout) -> pa.Schema:
    """``schema`` plus ``side``'s store columns, binary of variable width as Spark carries them."""
    store = layout.schema()
    extra = [pa.field(f"_{side}_{name}", pa.binary() if pa.types.is_fixed_size_binary(store.field(name).type)
                      else store.field(name).type) for name in store_columns(layout)]
    return pa.schema(list(schema) + extra)


@dataclass(frozen=True)
class ReadBucketed:
    """Step 1's task body: pair slices -> prepared pairs with their buckets, and dead letters."""
    slices: tuple[ReadSlice, ...]
    file_index: dict[str, int]
    columns: PairColumns
    kept: tuple[pa.Field, ...]
    batch_rows: int
    buckets: int
    batch_bytes: int = DEFAULT_BATCH_BYTES

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        schema = read_schema(self.kept)
        for item in tasks.items_of(batches):
            piece = self.slices[item]
            for _, prepared in read_prepared(piece, self.columns, self.kept, self.file_index[piece.file.path],
                                             self.batch_rows):
                letters = [prepared] if isinstance(prepared, DeadLetter) else prepared.dead_letters
                if letters:
                    yield from _batches(_letter_rows(letters, schema), self.batch_rows, self.batch_bytes)
                if isinstance(prepared, DeadLetter) or not prepared.pairs.num_rows:
                    continue
                pairs = prepared.pairs
                pairs = pairs.append_column("_left_bucket", _bucket(pairs.column("left_id"), self.buckets))
                pairs = pairs.append_column("_right_bucket", _bucket(pairs.column("right_id"), self.buckets))
                yield from _batches(_with_nulls(pairs, schema), self.batch_rows, self.batch_bytes)


@dataclass(frozen=True)
class AttachBucketed:
    """Step 2's task body: the pairs of some buckets of ``side`` -> with that side's store columns."""
    side: str
    layout: StoreLayout
    store_files: tuple[str, ...]
    buckets: int
    columns: PairColumns
    paths: tuple[str, ...]
    out_schema: pa.Schema
    batch_rows: int = 8192
    batch_bytes: int = DEFAULT_BATCH_BYTES

    def _store_rows(self, wanted: np.ndarray) -> StoreLookup:
        """Only the store rows whose id is in one of the ``wanted`` buckets, file by file."""
        tables = []
        for path in self.store_files:
            with files.open_input(path) as handle:
                parquet = pq.ParquetFile(handle)
                for group in range(parquet.metadata.num_row_groups):
                    table = parquet.read_row_group(group, columns=["id", *store_columns(self.layout)])
                    keep = np.isin(id_hashes(table.column("id")) % np.uint64(self.buckets), wanted)
                    if keep.any():
                        tables.append(table.filter(pa.array(keep)))
        return StoreLookup(tables, self.layout)

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = _partition_table(batches)
        if table is None:
            return
        letter = pc.is_valid(table.column("reason"))
        if pc.any(letter).as_py():
            yield from _batches(_with_nulls(table.filter(letter), self.out_schema), self.batch_rows, self.batch_bytes)
        pairs = table.filter(pc.invert(letter))
        if not pairs.num_rows:
            return
        side = self.side
        lookup = self._store_rows(np.unique(pairs.column(f"_{side}_bucket").to_numpy()).astype(np.uint64))
        rows = lookup.rows(pairs.column(f"{side}_id"))
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            # The letter's row holds what the pair carries: ids and kept columns (as on Beam).
            carried = pairs.drop_columns(list(LETTERS))
            yield from _batches(_letter_rows(missing_letters(carried, missing, side, self.columns, self.paths),
                                             self.out_schema), self.batch_rows, self.batch_bytes)
            found = np.flatnonzero(rows >= 0)
            pairs, rows = pairs.take(pa.array(found)), rows[found]
        stored = lookup.table.take(pa.array(rows))
        for name in store_columns(self.layout):
            pairs = pairs.append_column(f"_{side}_{name}", stored.column(name))
        yield from _batches(_with_nulls(pairs, self.out_schema), self.batch_rows, self.batch_bytes)


@dataclass(frozen=True)
class ScoreBucketed:
    """Step 3's task body: joined pairs and dead letters -> a scores part file and a dead-letter
    part file per task; the scores file's result carries the rows the task saw."""
    layouts: dict[str, StoreLayout]
    schema: pa.Schema
    model_dir: str | None
    device: str
    batch_size: int
    threads: ThreadPlan
    scores_dir: str
    dead_letter_dir: str
    provenance: dict
    batch_bytes: int = DEFAULT_BATCH_BYTES

    def _fixed(self, pairs: pa.Table) -> pa.Table:
        """Tokens and pooled columns back to the store's fixed-width binary (side_arrays views them)."""
        for side, layout in self.layouts.items():
            store = layout.schema()
            for name in store_columns(layout):
                column = f"_{side}_{name}"
                pairs = pairs.set_column(pairs.schema.get_field_index(column), column,
                                         pairs.column(column).cast(store.field(name).type))
        return pairs

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        handler = HeadHandler(self.model_dir, self.device, self.batch_size, self.threads)
        scorer = tasks.loaded(("head", handler.tag), handler.load_model)
        rows_per_batch = scored_rows(self.layouts, self.batch_size, self.batch_bytes)
        path = files.join(self.scores_dir, tasks.attempt_name("scores"))
        letters: list[DeadLetter] = []
        seen = scored = 0
        with files.create(path) as handle, pq.ParquetWriter(handle, stamped(self.schema, self.provenance),
                                                              compression=COMPRESSION) as out:
            for batch in batches:
                table = pa.Table.from_batches([batch])
                table = table.cast(pa.schema([f.with_type(narrow(f.type)) for f in table.schema]))
                seen += table.num_rows
                letter = pc.is_valid(table.column("reason"))
                letters += _letters_of(table.filter(letter))
                # Spark's batches are cut by its own conf; the head's input by pairscore's budget.
                for pairs in byte_slices(table.filter(pc.invert(letter)), rows_per_batch, self.batch_bytes):
                    pairs = self._fixed(pairs)
                    scores, probs = scorer.score(side_arrays(pairs, self.layouts["left"], "_left_"),
                                                 side_arrays(pairs, self.layouts["right"], "_right_"))
                    out.write_table(score_table(pairs, scores, probs, self.schema))
                    scored += pairs.num_rows
        results = [("scores", "", path, scored, {"rows_read": seen})]
        if letters:
            results.append(tasks.write_dead_letters(self.dead_letter_dir, "pairs", "pairs.", letters, self.provenance))
        yield tasks.result_batch(results)


def score_bucketed(spark, slices: tuple[ReadSlice, ...], settings, store_files: dict[str, tuple[str, ...]]) -> list:
    """Steps 1-3 -> the score step's result rows (``tasks.RESULT_SCHEMA``). ``settings``: a
    ``pipeline.spark.score.SparkScoreSettings``."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from pipeline.spark.steps import collect, items

    layouts = {side: s.layout for side, s in settings.sides.items()}
    schema = read_schema(settings.kept)
    frame = items(spark, len(slices)).mapInArrow(ReadBucketed(
        slices, {f.path: i for i, f in enumerate(settings.pair_files)}, settings.columns, settings.kept,
        settings.batch_size, settings.buckets, settings.batch_bytes), from_arrow_schema(schema))
    for side in ("left", "right"):
        out_schema = attached_schema(schema, side, layouts[side])
        frame = frame.repartition(settings.buckets, f"_{side}_bucket").mapInArrow(AttachBucketed(
            side, layouts[side], store_files[side], settings.buckets, settings.columns,
            tuple(f.path for f in settings.pair_files), out_schema, settings.batch_size, settings.batch_bytes),
            from_arrow_schema(out_schema))
        schema = out_schema
    return collect(frame.mapInArrow(ScoreBucketed(
        layouts, settings.schema, settings.model_dir, settings.device, settings.batch_size, settings.threads,
        settings.scores_dir, settings.dead_letter_dir, settings.provenance, settings.batch_bytes), tasks.RESULT_DDL))
