"""What Spark tasks run: pairscore's readers, the scoring core and pairscore's writers, inside
``DataFrame.mapInArrow``. Driver-side wiring is in ``score.py``.

Every function here is a *task body*: ``(settings) -> (iterator of Arrow record batches ->
iterator of record batches)``. Work items (a pair slice, a text table, a store file) travel as
their index into the settings' lists, one item per partition, so the reading itself happens in
the tasks and Spark's scheduling, retries and placement apply to it.

Files a task writes go into the run's staging directory under names unique to the task *attempt*
(``part-<step>-<partition>-<attempt>-<random>.parquet``); the task returns one row per file
(:data:`RESULT_SCHEMA`). Spark hands the driver the rows of successful attempts only, so the driver
keeps exactly those files and deletes the rest (a failed attempt's, a speculative loser's) before
the commit: a retried task never duplicates or loses a row.

What a Python worker loads (the head, an encoder, a store's lookup) is kept for the next task in
the same worker (:func:`loaded`), keyed by what it was built from (the model path and device; a
store's file paths with their sizes and modification times, so a store rewritten in place is
never served stale).
"""
from __future__ import annotations

import json
import os
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from encoders.threads import ThreadPlan
from pipeline import files
from pipeline.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter, count_reasons
from pipeline.models import EncoderHandler, HeadHandler, encode_unique_texts
from pipeline.pair_reading import read_prepared
from pipeline.provenance import stamped
from pipeline.readers import InputFile, ReadSlice, SourcedRow, read_rows
from pipeline.scoring_core import PairColumns, StoreLookup, score_pairs
from pipeline.spark.batches import DEFAULT_BATCH_BYTES, byte_slices, scored_rows
from pipeline.store import StoreLayout, check_finite
from pipeline.text_checks import TextColumns, TextRow, UniqueText, extract_text, resolve_id
from pipeline.text_ids import text_id
from pipeline.writers import COMPRESSION

# One row per file a task wrote (or per count it reports): kind ("scores", "store",
# "dead_letter", "counts"), side (a store's side; a dead letter file's counter prefix), path, rows,
# info (JSON: the task's counts).
RESULT_SCHEMA = pa.schema([("kind", pa.string()), ("side", pa.string()), ("path", pa.string()),
                           ("rows", pa.int64()), ("info", pa.string())])
RESULT_DDL = "kind string, side string, path string, rows long, info string"
ITEMS_DDL = "item int"
# Rows of text tables and their dead letters in one schema (dead letters travel as a reason).
TEXT_ROWS_DDL = "side string, id string, text string, source string, row string, reason string, detail string"
TEXT_ROWS_SCHEMA = pa.schema([(name, pa.string()) for name in
                              ("side", "id", "text", "source", "row", "reason", "detail")])
PAIR_TEXTS_DDL = "side string, id string, text string"
KNOWN_DDL = "side string, id string, known_hash string"
# Test hook: a task of partition 0 of the score or label step fails once, after writing its files, when
# this names a file that does not exist yet (the file is created, so the retry succeeds).
FAIL_ONCE_ENV = "PAIRSCORE_SPARK_FAIL_ONCE"

_LOADED: dict[tuple, Any] = {}


def loaded(key: tuple, build: Callable[[], Any]) -> Any:
    """What ``build`` makes, once per Python worker and ``key`` (Spark reuses its Python workers
    across tasks, ``spark.python.worker.reuse``, so a model loads once per worker)."""
    if key not in _LOADED:
        _LOADED[key] = build()
    return _LOADED[key]


def _pin(paths: Sequence[str]) -> tuple:
    """Store files with their size and modification time: the cache key of their lookup."""
    pinned = []
    for path in paths:
        fs, inner = files.resolve(path)
        info = fs.get_file_info(inner)
        pinned.append((path, info.size, info.mtime_ns))
    return tuple(pinned)


def store_lookup(paths: Sequence[str], layout: StoreLayout) -> StoreLookup:
    """A store's lookup from its part files, once per Python worker and version of the files."""
    def build() -> StoreLookup:
        tables = []
        for path in paths:
            with files.open_input(path) as handle:
                tables.append(pq.read_table(handle))
        return StoreLookup(tables, layout)
    return loaded(("lookup", layout, _pin(paths)), build)


def maybe_fail_once(marker: str | None) -> None:
    """The test hook (:data:`FAIL_ONCE_ENV`): partition 0's task fails, after writing its files,
    when ``marker`` names a file that does not exist yet; the file is created, so the retry succeeds."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if marker and ctx is not None and ctx.partitionId() == 0 and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise RuntimeError(f"injected fault ({FAIL_ONCE_ENV}): this attempt's files are left behind")


def attempt_name(step: str) -> str:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    partition, attempt = (ctx.partitionId(), ctx.attemptNumber()) if ctx else (0, 0)
    return f"part-{step}-{partition:05d}-{attempt}-{uuid.uuid4().hex[:8]}.parquet"


def result_batch(rows: list[tuple[str, str, str, int, dict]]) -> pa.RecordBatch:
    kinds, sides, paths, counts, infos = zip(*rows) if rows else ((), (), (), (), ())
    return pa.RecordBatch.from_arrays(
        [pa.array(kinds, pa.string()), pa.array(sides, pa.string()), pa.array(paths, pa.string()),
         pa.array(counts, pa.int64()), pa.array([json.dumps(i, sort_keys=True) for i in infos], pa.string())],
        schema=RESULT_SCHEMA)


def items_of(batches: Iterator[pa.RecordBatch]) -> Iterator[int]:
    for batch in batches:
        yield from batch.column(0).to_pylist()


def write_dead_letters(directory: str, step: str, prefix: str, letters: Sequence[DeadLetter],
                       provenance: dict) -> tuple:
    """Dead letters -> one part file in ``directory``; its result row (counts by reason)."""
    path = files.join(directory, attempt_name(step))
    table = pa.Table.from_pylist([letter.to_record() for letter in letters], schema=DEAD_LETTER_SCHEMA)
    write_table(path, stamped(DEAD_LETTER_SCHEMA, provenance), [table])
    return ("dead_letter", prefix, path, len(letters), count_reasons(letters))


def write_table(path: str, schema: pa.Schema, tables: Sequence[pa.Table]) -> None:
    """``tables`` -> one zstd Parquet part file at ``path`` (written even when there are none)."""
    from pipeline.writers import write_parquet_file

    write_parquet_file(path, schema, tables)


# --------------------------------------------------------------------------- stage one's inputs

@dataclass(frozen=True)
class PairTexts:
    """Text mode: every pair slice -> its distinct (side, id = text hash, text)."""
    slices: tuple[ReadSlice, ...]
    columns: PairColumns
    kept: tuple[pa.Field, ...]
    batch_rows: int
    batch_bytes: int = DEFAULT_BATCH_BYTES

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for item in items_of(batches):
            for _, prepared in read_prepared(self.slices[item], self.columns, self.kept, 0, self.batch_rows):
                if isinstance(prepared, DeadLetter):
                    continue   # the score step reads the same rows again and writes their dead letters
                for side, (ids, texts) in prepared.texts.items():
                    table = pa.table([pa.array([side] * len(ids), pa.string()), ids.cast(pa.string()),
                                      texts.cast(pa.string())], names=["side", "id", "text"])
                    for piece in byte_slices(table, self.batch_rows, self.batch_bytes):
                        yield from piece.to_batches()


def _json_row(fields: dict) -> str:
    return DeadLetter("", "", "", fields).to_record()["row"]


def _text_rows(rows: list[tuple]) -> pa.RecordBatch:
    columns = list(zip(*rows)) if rows else [()] * len(TEXT_ROWS_SCHEMA)
    return pa.RecordBatch.from_arrays([pa.array(c, pa.string()) for c in columns], schema=TEXT_ROWS_SCHEMA)


@dataclass(frozen=True)
class TextTableRows:
    """Id mode: every text table (side, file) -> its rows as (side, id, text, source, row) or,
    for a row that cannot be used, (side, source, row, reason, detail): dead letters travel as a
    reason column in the same rows."""
    tables: tuple[tuple[str, InputFile], ...]
    text_columns: dict[str, TextColumns]     # by side
    batch_rows: int = 4096
    batch_bytes: int = DEFAULT_BATCH_BYTES   # of texts (and dead letters' rows) per batch

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for item in items_of(batches):
            side, file = self.tables[item]
            rows, size = [], 0
            for read in read_rows(file):
                result = read if isinstance(read, DeadLetter) else extract_text(read, self.text_columns[side])
                if isinstance(result, DeadLetter):
                    rows.append((side, None, None, result.source, _json_row(result.row), result.reason, result.detail))
                else:
                    rows.append((side, result.id, result.text, result.row.source, _json_row(result.row.fields),
                                 None, None))
                size += sum(len(v) for v in rows[-1] if v is not None)
                if len(rows) >= self.batch_rows or size >= self.batch_bytes:
                    yield _text_rows(rows)
                    rows, size = [], 0
            if rows:
                yield _text_rows(rows)


def resolve_text_ids(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Good text rows, partitioned by (side, id) -> one row per usable id (its text), or every row
    of an id given with different texts as a ``conflicting_id`` dead letter (``resolve_id``)."""
    groups: dict[tuple[str, str], list[TextRow]] = defaultdict(list)
    for batch in batches:
        for row in batch.to_pylist():
            groups[(row["side"], row["id"])].append(
                TextRow(row["id"], row["text"], SourcedRow(row["source"], json.loads(row["row"]))))
    out = []
    for (side, id_), rows in groups.items():
        unique, _, rejected = resolve_id(id_, rows)
        if unique is not None:
            out.append((side, id_, unique.text, None, None, None, None))
        out += [(side, None, None, r.source, _json_row(r.row), r.reason, r.detail) for r in rejected]
    yield _text_rows(out)


@dataclass(frozen=True)
class KnownIds:
    """Existing store files (side, path) -> (side, id, known_hash): what is stored, by id."""
    stores: tuple[tuple[str, str], ...]

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for item in items_of(batches):
            side, path = self.stores[item]
            with files.open_input(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(columns=["id", "text_hash"]):
                    yield pa.RecordBatch.from_arrays(
                        [pa.array([side] * batch.num_rows, pa.string()), batch.column(0), batch.column(1)],
                        names=["side", "id", "known_hash"])


# --------------------------------------------------------------------------- stage one

@dataclass(frozen=True)
class EncodeNew:
    """(side, id, text, known_hash) partitioned by (side, text) -> store part files of the texts not
    yet stored with the same text, one per side and task; ids sharing a text are encoded once.
    Reports per side: texts encoded, truncated, ids reused."""
    model_dir: str | None
    device: str
    layouts: dict[str, StoreLayout]
    store_dirs: dict[str, str]
    provenance: dict
    batch_size: int = 128
    sort_window: int = 4096
    threads: ThreadPlan = ThreadPlan()

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        texts: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        reused: dict[str, int] = defaultdict(int)
        for batch in batches:
            for row in batch.to_pylist():
                if row["known_hash"] is not None and row["known_hash"] == text_id(row["text"]):
                    reused[row["side"]] += 1
                else:
                    texts[row["side"]][row["text"]].append(row["id"])
        results = []
        for side in sorted(set(texts) | set(reused)):
            uniques = [UniqueText(text, tuple(sorted(ids))) for text, ids in texts[side].items()]
            info = {"texts_reused": reused[side], "texts_encoded": 0, "texts_truncated": 0}
            if uniques:
                path, rows = self._encode(side, uniques, info)
                results.append(("store", side, path, rows, {}))
            results.append(("counts", side, "", 0, info))
        yield result_batch(results)

    def _encode(self, side: str, uniques: list[UniqueText], info: dict) -> tuple[str, int]:
        handler = EncoderHandler(self.model_dir, side, self.device, self.threads)
        model = loaded(("encoder", handler.tag), handler.load_model)
        layout = self.layouts[side]
        path = files.join(self.store_dirs[side], attempt_name("new"))
        rows = 0
        with files.create(path) as handle, pq.ParquetWriter(handle, stamped(layout.schema(), self.provenance),
                                                              compression=COMPRESSION) as out:
            for start in range(0, len(uniques), self.sort_window):
                encoded = encode_unique_texts(handler, model, uniques[start:start + self.sort_window], layout,
                                              self.batch_size)
                out.write_table(encoded.table)
                rows += encoded.table.num_rows
                info["texts_encoded"] += encoded.encoded
                info["texts_truncated"] += encoded.truncated
        return path, rows


@dataclass(frozen=True)
class KeepOld:
    """Existing store files (side, path) -> the same rows in this run's store, minus the ids just
    re-encoded (their text changed), read from the new part files' paths."""
    stores: tuple[tuple[str, str], ...]
    new_files: dict[str, tuple[str, ...]]
    layouts: dict[str, StoreLayout]
    store_dirs: dict[str, str]
    provenance: dict

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc

        results = []
        for item in items_of(batches):
            side, source = self.stores[item]
            new_ids = set()
            for path in self.new_files.get(side, ()):
                with files.open_input(path) as handle:
                    new_ids.update(pq.read_table(handle, columns=["id"]).column("id").to_pylist())
            with files.open_input(source) as handle:
                table = pq.read_table(handle)
            check_finite(table, source)
            if new_ids:
                table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=pa.array(sorted(new_ids)))))
            layout = self.layouts[side]
            path = files.join(self.store_dirs[side], attempt_name("kept"))
            write_table(path, stamped(layout.schema(), self.provenance), [table.cast(layout.schema())])
            results.append(("store", side, path, table.num_rows, {}))
        yield result_batch(results)


@dataclass(frozen=True)
class WriteTextDeadLetters:
    """Dead-letter rows of the text tables (side, source, row, reason, detail) -> part files, one
    per side and task, counted under ``<side>_texts.``."""
    directory: str
    provenance: dict

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        letters: dict[str, list[DeadLetter]] = defaultdict(list)
        for batch in batches:
            for row in batch.to_pylist():
                letters[row["side"]].append(DeadLetter(row["reason"], row["detail"], row["source"],
                                                       json.loads(row["row"])))
        yield result_batch([write_dead_letters(self.directory, "texts", f"{side}_texts.", found, self.provenance)
                        for side, found in sorted(letters.items())])


# --------------------------------------------------------------------------- stage two

@dataclass(frozen=True)
class ScoreSlices:
    """Pair slices -> a scores part file and, when there are any, a dead-letter part file per
    task; the scores file's result carries the rows the task read."""
    slices: tuple[ReadSlice, ...]
    file_index: dict[str, int]
    paths: tuple[str, ...]
    columns: PairColumns
    kept: tuple[pa.Field, ...]
    schema: pa.Schema
    layouts: dict[str, StoreLayout]
    store_files: dict[str, tuple[str, ...]]
    model_dir: str | None
    device: str
    scores_dir: str
    dead_letter_dir: str
    provenance: dict
    batch_size: int = 8192
    threads: ThreadPlan = ThreadPlan()
    batch_bytes: int = DEFAULT_BATCH_BYTES   # of the head's input per batch (batches.scored_rows)
    fail_once: str | None = field(default_factory=lambda: os.environ.get(FAIL_ONCE_ENV))

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        handler = HeadHandler(self.model_dir, self.device, self.batch_size, self.threads)
        scorer = loaded(("head", handler.tag), handler.load_model)
        left, right = (store_lookup(self.store_files[s], self.layouts[s]) for s in ("left", "right"))
        rows_per_batch = scored_rows(self.layouts, self.batch_size, self.batch_bytes)
        results = []
        for item in items_of(batches):
            piece = self.slices[item]
            letters: list[DeadLetter] = []
            read = scored = 0
            path = files.join(self.scores_dir, attempt_name("scores"))
            with files.create(path) as handle, pq.ParquetWriter(handle, stamped(self.schema, self.provenance),
                                                                  compression=COMPRESSION) as out:
                for rows, prepared in read_prepared(piece, self.columns, self.kept,
                                                    self.file_index[piece.file.path], rows_per_batch):
                    read += rows
                    if isinstance(prepared, DeadLetter):
                        letters.append(prepared)
                        continue
                    letters += prepared.dead_letters
                    if prepared.pairs.num_rows:
                        scores, missing = score_pairs(prepared.pairs, left, right, scorer, self.schema,
                                                      self.columns, self.paths)
                        letters += missing
                        out.write_table(scores)
                        scored += scores.num_rows
            results.append(("scores", "", path, scored, {"rows_read": read}))
            if letters:
                results.append(write_dead_letters(self.dead_letter_dir, "pairs", "pairs.", letters, self.provenance))
            maybe_fail_once(self.fail_once)
        yield result_batch(results)
