"""Stage two as Beam transforms around the scoring core (``pipeline/scoring_core.py``).

Pairs travel as Arrow tables of a few thousand rows, so Beam's per-element cost is paid once
per batch and the head sees big batches:

- **read**: every pair file is cut into slices (runs of Parquet row groups; a text file is one
  slice), the slices are spread over workers, and each is read in record batches of only the
  columns the job needs; the core validates each batch (columnar; bad rows become dead letters)
  and keeps ids, kept columns and where each row came from. On a distributed runner the batches
  are then spread again (``Reshuffle``), so reading and scoring parallelise independently; the
  local runner skips that step, because it would hold every batch of the run in memory (the
  slices are already spread, so local workers still share one big file).
- **broadcast join**: each store is a side input held once per worker process
  (``shared.Shared``) as a :class:`~pipeline.scoring_core.StoreLookup`; the student is loaded
  once per worker process the same way.
- **shuffle join**: pairs and store rows are partitioned by a hash of the id into buckets and
  co-grouped per bucket, first by left id and then by right id; within a bucket the join is the
  core's lookup over Arrow tables. Only ids, kept columns and tokens move, never input rows.
- **scoring**: one DoFn (``_ScoreDoFn``) for both joins, driven by the model handler: the worker
  process's ``HeadHandler`` loads the head once and its ``run_inference`` scores each batch's
  ``HeadBatch``. The joins differ only in how a batch gets its store rows
  (``_StoreRowsFromSideInputs``: looked up in the side-input stores; ``_StoreRowsCarried``:
  attached by the shuffle join as columns).

The transforms give typed outputs (:class:`ReadPairsOutputs`, :class:`ScoreOutputs`), not dicts.
Every pair read ends as a scored row, a duplicate (``--dedupe-pairs``) or a dead letter,
counted under ``pairs.``.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.utils import shared

from encoders.threads import ThreadPlan
from pipeline.dead_letters import DeadLetter
from pipeline.beam.counters import counter, dead_letter_counter, report_threads, worker_counter
from pipeline.beam.encode import DEAD_LETTER_TAG, EncodeSettings, EncodeTexts
from pipeline.beam.models import HeadBatch, HeadHandler
from pipeline.pair_reading import read_prepared
from pipeline.readers import InputFile, ReadSlice, read_slices
from pipeline.scoring_core import (PairColumns, StoreLookup, find_pairs, id_hashes, missing_letters, partition,
                                   score_table, store_columns)
from pipeline.errors import InputChanged
from pipeline.stderr import quiet_refusal_logs
from pipeline.store import PartChanged, PartPin, StoreLayout, check_finite, read_pinned_part
from pipeline.store_codec import side_arrays
from pipeline.text_checks import UniqueText
from pipeline.text_ids import text_id

PAIRS = "pairs."   # the counters' prefix
# Beam output tags (internal to the transforms; what they give callers is a NamedTuple).
PAIRS_TAG, SCORES_TAG = "pairs", "scores"
TEXTS_TAGS = {"left": "left_texts", "right": "right_texts"}


# --------------------------------------------------------------------------- pairs


class _ReadPairBatchesDoFn(beam.DoFn):
    """ReadSlice -> prepared pair tables (main); malformed rows and bad pairs to ``dead_letter``;
    in text mode each batch's distinct texts to ``left_texts`` / ``right_texts`` as (id, text)."""

    def __init__(self, columns: PairColumns, kept: Sequence[pa.Field], paths: Sequence[str], batch_rows: int):
        self._columns = columns
        self._kept = list(kept)
        self._paths = list(paths)
        self._batch_rows = batch_rows
        self.rows_read = counter("rows_read", PAIRS)

    def setup(self):
        self._file_index = {path: index for index, path in enumerate(self._paths)}
        self._worker_read = worker_counter("read")

    def process(self, piece: ReadSlice) -> Iterator:
        index = self._file_index[piece.file.path]
        for rows, item in read_prepared(piece, self._columns, self._kept, index, self._batch_rows):
            self.rows_read.inc(rows)
            if isinstance(item, DeadLetter):
                dead_letter_counter(item.reason, PAIRS).inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, item)
                continue
            self._worker_read.inc(rows)
            yield from self._emit(item)

    @staticmethod
    def _emit(prepared) -> Iterator:
        for letter in prepared.dead_letters:
            dead_letter_counter(letter.reason, PAIRS).inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
        for side, (ids, texts) in prepared.texts.items():
            for id_, text in zip(ids.to_pylist(), texts.to_pylist()):
                yield beam.pvalue.TaggedOutput(TEXTS_TAGS[side], (id_, text))
        if prepared.pairs.num_rows:
            yield prepared.pairs


class ReadPairsOutputs(NamedTuple):
    """What :class:`ReadPairs` gives: ``pairs`` (prepared Arrow tables: ``left_id``, ``right_id``,
    kept columns, where each row came from; spread over workers), ``dead_letters``
    (:class:`DeadLetter`), ``left_texts`` and ``right_texts`` ((id, text), distinct within a batch;
    empty in id mode)."""
    pairs: beam.PCollection
    dead_letters: beam.PCollection
    left_texts: beam.PCollection
    right_texts: beam.PCollection

    def texts(self, side: str) -> beam.PCollection:
        return self.left_texts if side == "left" else self.right_texts


class ReadPairs(beam.PTransform):
    """Pair files -> :class:`ReadPairsOutputs`.

    ``kept``: the output fields of the kept columns (:func:`pipeline.pairs.kept_fields`).
    ``spread_batches``: reshuffle the read batches before scoring (distributed runners; see the
    module docstring for why the local runner does not).
    """

    def __init__(self, files: Sequence[InputFile], columns: PairColumns, chunk_size: int,
                 kept: Sequence[pa.Field] = (), slice_rows: int = 1 << 14, spread_batches: bool = True):
        super().__init__()
        self._spread_batches = spread_batches
        self._files = list(files)
        self._columns = columns
        self._chunk_size = chunk_size
        self._kept = list(kept) if kept else [pa.field(name, pa.string()) for name in columns.keep]
        self._slice_rows = slice_rows

    def expand(self, pbegin):
        slice_rows = self._slice_rows
        read = (pbegin
                | "ListPairFiles" >> beam.Create(self._files)
                # Footers are read where the files are sliced: many files, many workers.
                | "SpreadPairFiles" >> beam.Reshuffle()
                | "SlicePairFiles" >> beam.FlatMap(lambda file: read_slices(file, slice_rows))
                | "SpreadSlices" >> beam.Reshuffle()
                | "ReadPairBatches" >> beam.ParDo(_ReadPairBatchesDoFn(
                    self._columns, self._kept, [f.path for f in self._files], self._chunk_size)).with_outputs(
                    DEAD_LETTER_TAG, *TEXTS_TAGS.values(), main=PAIRS_TAG))
        # Reading and scoring parallelise independently: a file read by one worker is scored by many.
        pairs = read[PAIRS_TAG]
        pairs = (pairs | "SpreadPairBatches" >> beam.Reshuffle()) if self._spread_batches else pairs
        return ReadPairsOutputs(pairs, read[DEAD_LETTER_TAG], read[TEXTS_TAGS["left"]], read[TEXTS_TAGS["right"]])


def _first_text(element) -> UniqueText:
    id_, texts = element
    return UniqueText(next(iter(texts)), (id_,))


class DistinctPairTexts(beam.PTransform):
    """(id, text) pairs from every batch -> UniqueText, one per text (text mode: id = hash)."""

    def expand(self, id_texts):
        return (id_texts
                | "GroupTextById" >> beam.GroupByKey()
                | "OnePerId" >> beam.Map(_first_text))


def _pair_hashes(table: pa.Table) -> np.ndarray:
    with np.errstate(over="ignore"):
        return id_hashes(table.column("left_id")) * np.uint64(31) ^ id_hashes(table.column("right_id"))


def _rebatch(tables: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables -> tables of about ``rows`` rows (the last one smaller)."""
    held, count = [], 0
    for table in tables:
        held.append(table)
        count += table.num_rows
        if count >= rows:
            yield pa.concat_tables(held)
            held, count = [], 0
    if held:
        yield pa.concat_tables(held)


def dedupe_pair_chunks(pairs, chunk_size: int, buckets: int = 64):
    """Prepared pair tables -> tables with each (left_id, right_id) once; counts the repeats.

    Pairs are partitioned by a hash of both ids and each bucket is deduplicated in Arrow, so a
    bucket's pairs must fit a worker's memory (``buckets`` is sized from the input by the job).
    """
    duplicates = counter("rows_duplicate", PAIRS)

    def first_of_each(element) -> Iterator[pa.Table]:
        _, tables = element
        table = pa.concat_tables(list(tables))
        numbered = table.select(["left_id", "right_id"]).append_column("_row", pa.array(np.arange(table.num_rows)))
        firsts = numbered.group_by(["left_id", "right_id"], use_threads=False).aggregate([("_row", "min")])
        keep = np.sort(firsts.column("_row_min").to_numpy())
        duplicates.inc(table.num_rows - len(keep))
        unique = table.take(pa.array(keep))
        for start in range(0, unique.num_rows, chunk_size):
            yield unique.slice(start, chunk_size)

    return (pairs
            | "PartitionByPair" >> beam.FlatMap(lambda table: partition(table, _pair_hashes(table), buckets))
            | "GroupByPairBucket" >> beam.GroupByKey()
            | "FirstOfEachPair" >> beam.FlatMap(first_of_each))


# --------------------------------------------------------------------------- stores

def read_store_tables(pipeline_or_pbegin, parts: Sequence[PartPin], label: str, batch_rows: int = 65536):
    """An existing store's part files, pinned before the run -> pyarrow Tables of up to
    ``batch_rows`` rows. Each part is read only if it still holds the pinned bytes
    (:func:`pipeline.store.read_pinned_part`: InputChanged naming the file otherwise, exit 3), and
    each table is checked for non-finite embeddings as it is read (:func:`pipeline.store.check_finite`;
    the whole store, ids included, was checked before the run by :func:`pipeline.store.open_store_side`)."""
    def read(pin: PartPin) -> Iterator[pa.Table]:
        try:
            for table, first in read_pinned_part(pin, batch_rows=batch_rows):
                check_finite(table, pin.path, first)
                yield table
        except PartChanged as err:
            quiet_refusal_logs(raising=True)   # the launcher prints the one line; Beam need not log it too
            raise InputChanged(str(err)) from None

    return (pipeline_or_pbegin
            | f"List{label}" >> beam.Create(list(parts))
            | f"Read{label}" >> beam.FlatMap(read))


class _SplitKnownTextsDoFn(beam.DoFn):
    """UniqueText -> the ids still to encode; ids whose stored row holds the same text are reused.

    Side input: the existing store's tables (``id``, ``text_hash``), read once per worker.
    """

    def __init__(self, prefix: str):
        self.reused = counter("texts_reused", prefix)
        self._known: dict[str, str] | None = None
        self._known_source = None

    def process(self, unique: UniqueText, known_tables) -> Iterator[UniqueText]:
        if self._known is None or self._known_source is not known_tables:
            self._known = {}
            for table in known_tables:
                self._known.update(zip(table.column("id").to_pylist(), table.column("text_hash").to_pylist()))
            self._known_source = known_tables
        hashed = text_id(unique.text)
        missing = tuple(i for i in unique.ids if self._known.get(i) != hashed)
        self.reused.inc(len(unique.ids) - len(missing))
        if missing:
            yield UniqueText(unique.text, missing)


def _without_ids(table: pa.Table, ids: set[str]) -> pa.Table:
    if not ids:
        return table
    import pyarrow.compute as pc
    return table.filter(pc.invert(pc.is_in(table.column("id"), value_set=pa.array(sorted(ids)))))


class _DropSupersededDoFn(beam.DoFn):
    """Old store tables minus the ids that were just re-encoded (their text changed)."""

    def process(self, table: pa.Table, new_tables) -> Iterator[pa.Table]:
        new_ids = {i for t in new_tables for i in t.column("id").to_pylist()}
        kept = _without_ids(table, new_ids)
        if kept.num_rows:
            yield kept


class CompleteStore(beam.PTransform):
    """UniqueText of one side + the existing store's tables -> every store table this run uses.

    Texts already stored under the same id with the same text are reused; the others go
    through stage one (``EncodeTexts``); stored rows whose id was re-encoded are dropped.
    """

    def __init__(self, settings: EncodeSettings, layout: StoreLayout, old_tables, counter_prefix: str):
        super().__init__()
        self._settings = settings
        self._layout = layout
        self._old = old_tables
        self._prefix = counter_prefix

    def expand(self, unique_texts):
        # Only ids and text hashes are needed to tell what is stored: keep the side input small.
        known = self._old | "IdsAndHashes" >> beam.Map(lambda table: table.select(["id", "text_hash"]))
        to_encode = unique_texts | "SplitKnown" >> beam.ParDo(_SplitKnownTextsDoFn(self._prefix),
                                                               beam.pvalue.AsList(known))
        new = to_encode | "EncodeNew" >> EncodeTexts(self._settings, self._layout, counter_prefix=self._prefix)
        kept_old = self._old | "DropSuperseded" >> beam.ParDo(_DropSupersededDoFn(), beam.pvalue.AsList(new))
        return (kept_old, new) | "AllStoreTables" >> beam.Flatten()


# --------------------------------------------------------------------------- scoring

@dataclass(frozen=True)
class ScoreSettings:
    """How the head runs. ``model_dir`` None = the zero-training baseline.

    columns / pair_paths: what the pairs are and the files they came from (dead letters' sources);
    threads: how a worker process sizes its torch threads (encoders/threads.py); compile / quantize:
    the head's opt-in speed-ups (HeadScorer); buckets: partitions of the
    shuffle join; run_token: tells this pipeline's per-process objects from another run's.
    """
    model_dir: str | None
    left_layout: StoreLayout
    right_layout: StoreLayout
    output_schema: pa.Schema
    keep: tuple[str, ...]
    batch_size: int = 8192
    device: str = "auto"
    columns: PairColumns = PairColumns()
    pair_paths: tuple[str, ...] = ()
    threads: ThreadPlan = ThreadPlan()
    compile: bool = False
    quantize: str | None = None
    buckets: int = 64
    run_token: str = field(default_factory=lambda: uuid.uuid4().hex)


class _Worker:
    """What one worker process holds for scoring: the head's model handler and its loaded model
    (``HeadHandler.load_model``: the head alone, a scoring worker never loads the encoder) and, for
    the broadcast join, both stores' lookups; built once per process and shared by its DoFn threads."""

    def __init__(self, settings: ScoreSettings):
        self.handler = HeadHandler(settings.model_dir, settings.device, settings.batch_size,
                                   settings.threads, settings.compile, settings.quantize)
        self.model = self.handler.load_model()
        self._settings = settings
        self._lookups = None
        self._lock = threading.Lock()

    def lookups(self, left_tables, right_tables) -> tuple[StoreLookup, StoreLookup]:
        with self._lock:
            if self._lookups is None:
                self._lookups = (StoreLookup(left_tables, self._settings.left_layout),
                                 StoreLookup(right_tables, self._settings.right_layout))
            return self._lookups


class _StoreRowsFromSideInputs:
    """Broadcast join: a batch finds its store rows in both stores, side inputs held once per
    worker process (:meth:`_Worker.lookups`); pairs whose id is not stored are dead letters."""

    def side_inputs(self, left_tables, right_tables) -> tuple:
        return beam.pvalue.AsList(left_tables), beam.pvalue.AsList(right_tables)

    def head_batch(self, worker: _Worker, settings: ScoreSettings, pairs: pa.Table, left_tables=(),
                   right_tables=()) -> tuple[pa.Table, list[DeadLetter], HeadBatch]:
        left, right = worker.lookups(left_tables, right_tables)
        found = find_pairs(pairs, left, right, settings.columns, settings.pair_paths)
        return found.pairs, found.dead_letters, HeadBatch(left.arrays, found.left_rows, right.arrays, found.right_rows)


class _StoreRowsCarried:
    """Shuffle join: a batch's pairs carry their store rows as ``_left_*`` / ``_right_*`` columns
    (attached by :class:`_AttachSideDoFn`, which dead-lettered the pairs it could not find)."""

    def side_inputs(self, left_tables, right_tables) -> tuple:
        return ()

    def head_batch(self, worker: _Worker, settings: ScoreSettings,
                   pairs: pa.Table) -> tuple[pa.Table, list[DeadLetter], HeadBatch]:
        return pairs, [], HeadBatch(side_arrays(pairs, settings.left_layout, "_left_"), None,
                                    side_arrays(pairs, settings.right_layout, "_right_"), None)


class _ScoreDoFn(beam.DoFn):
    """Prepared pair table -> a pyarrow Table of scores (main) and dead letters, the one scoring
    DoFn of both joins: ``store_rows`` says how a batch gets its store rows; the worker's model
    handler runs the head on them (``HeadHandler.run_inference``)."""

    def __init__(self, settings: ScoreSettings, handle: shared.Shared,
                 store_rows: _StoreRowsFromSideInputs | _StoreRowsCarried):
        self._settings = settings
        self._handle = handle
        self._store_rows = store_rows
        self.scored = counter("rows_scored", PAIRS)

    def setup(self):
        settings = self._settings
        self._worker = self._handle.acquire(lambda: _Worker(settings), tag=settings.run_token)
        self._worker_scored = worker_counter("scored")

    def process(self, pairs: pa.Table, *side_inputs) -> Iterator:
        worker, settings = self._worker, self._settings
        pairs, letters, batch = self._store_rows.head_batch(worker, settings, pairs, *side_inputs)
        for letter in letters:
            dead_letter_counter(letter.reason, PAIRS).inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
        if pairs.num_rows:
            scores, probs = worker.handler.run_inference(batch, worker.model)
            self.scored.inc(pairs.num_rows)
            self._worker_scored.inc(pairs.num_rows)
            report_threads("head")
            yield score_table(pairs, scores, probs, settings.output_schema)


class _AttachSideDoFn(beam.DoFn):
    """(bucket, {pairs, store}) -> the bucket's pairs with their ``side``'s store columns added
    (``_left_tokens`` ...), in tables of about ``batch_size`` rows; pairs whose id is not in the
    store to ``dead_letter``."""

    def __init__(self, side: str, layout: StoreLayout, settings: ScoreSettings):
        self._side = side
        self._layout = layout
        self._settings = settings

    def process(self, element) -> Iterator:
        _, grouped = element
        store = list(grouped["store"])
        lookup = StoreLookup(store, self._layout)
        side, settings = self._side, self._settings

        letters: list[DeadLetter] = []   # filled while attached() runs, emitted as they come

        def attached() -> Iterator[pa.Table]:
            for pairs in grouped["pairs"]:
                rows = lookup.rows(pairs.column(f"{side}_id"))
                missing = np.flatnonzero(rows < 0)
                if len(missing):
                    letters.extend(missing_letters(pairs, missing, side, settings.columns, settings.pair_paths))
                    found = np.flatnonzero(rows >= 0)
                    pairs, rows = pairs.take(pa.array(found)), rows[found]
                if pairs.num_rows:
                    columns = lookup.table.take(pa.array(rows))
                    for name in columns.column_names:
                        pairs = pairs.append_column(f"_{side}_{name}", columns.column(name))
                    yield pairs

        def drain() -> Iterator:
            while letters:
                letter = letters.pop()
                dead_letter_counter(letter.reason, PAIRS).inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)

        # A bucket's pairs may be many: they are attached and handed on a batch at a time.
        for table in _rebatch(attached(), settings.batch_size):
            yield from drain()
            yield table
        yield from drain()


def _store_partitions(layout: StoreLayout, buckets: int):
    columns = ["id", *store_columns(layout)]

    def split(table: pa.Table):
        table = table.select(columns)
        return partition(table, id_hashes(table.column("id")), buckets)
    return split


def _pair_partitions(side: str, buckets: int):
    def split(table: pa.Table):
        return partition(table, id_hashes(table.column(f"{side}_id")), buckets)
    return split


class ScoreOutputs(NamedTuple):
    """What :class:`ScorePairs` gives: ``scores`` (pyarrow Tables of the output schema) and
    ``dead_letters`` (pairs whose text is missing from a store)."""
    scores: beam.PCollection
    dead_letters: beam.PCollection


class ScorePairs(beam.PTransform):
    """Prepared pair tables + left/right store tables -> :class:`ScoreOutputs`. ``join``:
    broadcast or shuffle (see module docstring); both score with the same :class:`_ScoreDoFn`."""

    def __init__(self, settings: ScoreSettings, join: str, left_tables, right_tables, accelerator: str | None):
        super().__init__()
        self._settings = settings
        self._join = join
        self._left_tables = left_tables
        self._right_tables = right_tables
        self._accelerator = accelerator

    def _score(self, pairs, store_rows, label: str):
        pardo = beam.ParDo(_ScoreDoFn(self._settings, shared.Shared(), store_rows),
                           *store_rows.side_inputs(self._left_tables, self._right_tables))
        # Dataflow runs a step with an accelerator hint on GPU workers; the join stays on CPU ones.
        if self._accelerator:
            pardo = pardo.with_resource_hints(accelerator=self._accelerator)
        return pairs | label >> pardo.with_outputs(DEAD_LETTER_TAG, main=SCORES_TAG)

    def expand(self, pairs):
        if self._join == "broadcast":
            scored = self._score(pairs, _StoreRowsFromSideInputs(), "ScoreBatches")
            return ScoreOutputs(scored[SCORES_TAG], scored[DEAD_LETTER_TAG])

        settings = self._settings
        buckets = settings.buckets
        joined, dead = pairs, []
        for side, tables, layout in (("left", self._left_tables, settings.left_layout),
                                     ("right", self._right_tables, settings.right_layout)):
            label = side.capitalize()
            store = tables | f"Partition{label}Store" >> beam.FlatMap(_store_partitions(layout, buckets))
            keyed = joined | f"PartitionBy{label}Id" >> beam.FlatMap(_pair_partitions(side, buckets))
            attached = ({"pairs": keyed, "store": store}
                        | f"Join{label}" >> beam.CoGroupByKey()
                        | f"Attach{label}" >> beam.ParDo(_AttachSideDoFn(side, layout, settings)).with_outputs(
                            DEAD_LETTER_TAG, main="joined"))
            joined = attached.joined
            dead.append(attached[DEAD_LETTER_TAG])
        scored = self._score(joined, _StoreRowsCarried(), "ScoreJoined")
        dead.append(scored[DEAD_LETTER_TAG])
        return ScoreOutputs(scored[SCORES_TAG], tuple(dead) | "JoinDeadLetters" >> beam.Flatten())
