"""Stage two as Beam transforms: pairs -> (stage one for new texts) -> join with stores -> head.

Pairs travel in chunks (lists of a few thousand) rather than one element each, so Beam's
per-element cost is paid once per chunk and the head sees big batches. Two joins:

- **broadcast**: each store is a side input held in memory by every scoring worker
  (``TokenLookup``); a chunk's ids are looked up in a dict and gathered with numpy.
- **shuffle**: pairs are keyed by left id and co-grouped with the left store's rows, then by
  right id with the right store's; scales past worker memory at a per-pair shuffle cost.

Every pair read ends as a scored row or a dead letter, counted under ``pairs.``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.dead_letters import DeadLetter
from pipeline.encode import (DEAD_LETTER_TAG, EncodeSettings, EncodeTexts, TextColumns, TextRow, UniqueText,
                             counter, dead_letter_counter, extract_text, pick_device)
from pipeline.readers import InputFile, SourcedRow, read_rows
from pipeline.store import StoreLayout, TokenLookup, token_mask
from pipeline.text_ids import text_id

PAIRS = "pairs."
SIDES = ("left", "right")


# --------------------------------------------------------------------------- pairs

@dataclass(frozen=True)
class PairColumns:
    """Where a pair's two sides are. Text mode: ``left``/``right`` hold the texts and ids are
    their content hashes. Id mode (``left_id``/``right_id`` set): they hold ids whose texts
    come from separate text tables."""
    left: str = "left"
    right: str = "right"
    left_id: str | None = None
    right_id: str | None = None
    keep: tuple[str, ...] = ()

    @property
    def id_mode(self) -> bool:
        return self.left_id is not None

    def required(self) -> list[str]:
        return [self.left_id, self.right_id] if self.id_mode else [self.left, self.right]


class Pair(NamedTuple):
    """A pair ready to join: its two ids, the columns to pass through, where it came from."""
    left_id: str
    right_id: str
    kept: tuple
    row: SourcedRow


def extract_pair(row: SourcedRow, columns: PairColumns) -> tuple[Pair, str | None, str | None] | DeadLetter:
    """Validate one pair row -> (Pair, left text, right text) (texts None in id mode), or why not.

    Reasons are the stage-one ones with the side in front (``left_empty_text``, ``right_null_id``).
    """
    ids, texts = [], []
    for side in SIDES:
        if columns.id_mode:
            id_col = columns.left_id if side == "left" else columns.right_id
            # Reuse stage one's id rules; the id column doubles as a dummy text column.
            result = extract_text(row, TextColumns(text=id_col, id=id_col))
        else:
            result = extract_text(row, TextColumns(text=columns.left if side == "left" else columns.right))
        if isinstance(result, DeadLetter):
            reason = result.reason.replace("_text", "_id") if columns.id_mode else result.reason
            return DeadLetter(f"{side}_{reason}", f"{side} side: {result.detail}", row.source, row.fields)
        ids.append(result.id)
        texts.append(None if columns.id_mode else result.text)
    kept = tuple(row.fields.get(name) for name in columns.keep)
    return Pair(ids[0], ids[1], kept, row), texts[0], texts[1]


class _ReadPairChunksDoFn(beam.DoFn):
    """InputFile -> chunks of Pair; malformed rows and bad pairs to ``dead_letter``; in text
    mode each chunk's distinct texts to ``left_texts`` / ``right_texts`` as TextRow."""

    def __init__(self, columns: PairColumns, chunk_size: int):
        self._columns = columns
        self._chunk_size = chunk_size
        self.rows_read = counter("rows_read", PAIRS)

    def process(self, file: InputFile) -> Iterator:
        chunk: list[Pair] = []
        texts: tuple[dict, dict] = ({}, {})
        for item in read_rows(file):
            self.rows_read.inc()
            result = item if isinstance(item, DeadLetter) else extract_pair(item, self._columns)
            if isinstance(result, DeadLetter):
                dead_letter_counter(result.reason, PAIRS).inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, result)
                continue
            pair, left_text, right_text = result
            chunk.append(pair)
            if left_text is not None:
                texts[0].setdefault(pair.left_id, TextRow(pair.left_id, left_text, pair.row))
                texts[1].setdefault(pair.right_id, TextRow(pair.right_id, right_text, pair.row))
            if len(chunk) >= self._chunk_size:
                yield from self._emit(chunk, texts)
                chunk, texts = [], ({}, {})
        if chunk:
            yield from self._emit(chunk, texts)

    @staticmethod
    def _emit(chunk, texts) -> Iterator:
        for side, side_texts in zip(SIDES, texts):
            for text_row in side_texts.values():
                yield beam.pvalue.TaggedOutput(f"{side}_texts", (text_row.id, text_row.text))
        yield chunk


class ReadPairs(beam.PTransform):
    """Pair files -> outputs ``chunks`` (lists of Pair), ``dead_letter``, ``left_texts`` and
    ``right_texts`` ((id, text), distinct within a chunk; empty in id mode)."""

    def __init__(self, files: Sequence[InputFile], columns: PairColumns, chunk_size: int):
        super().__init__()
        self._files = list(files)
        self._columns = columns
        self._chunk_size = chunk_size

    def expand(self, pbegin):
        return (pbegin
                | "ListPairFiles" >> beam.Create(self._files)
                | "SpreadPairFiles" >> beam.Reshuffle()
                | "ReadPairChunks" >> beam.ParDo(_ReadPairChunksDoFn(self._columns, self._chunk_size)).with_outputs(
                    DEAD_LETTER_TAG, "left_texts", "right_texts", main="chunks"))


def _first_text(element) -> UniqueText:
    id_, texts = element
    return UniqueText(next(iter(texts)), (id_,))


class DistinctPairTexts(beam.PTransform):
    """(id, text) pairs from every chunk -> UniqueText, one per text (text mode: id = hash)."""

    def expand(self, id_texts):
        return (id_texts
                | "GroupTextById" >> beam.GroupByKey()
                | "OnePerId" >> beam.Map(_first_text))


def dedupe_pair_chunks(chunks, chunk_size: int):
    """Chunks of Pair -> chunks with each (left_id, right_id) once; counts the repeats."""
    duplicates = counter("rows_duplicate", PAIRS)

    def first(element):
        _, pairs = element
        pairs = list(pairs)
        duplicates.inc(len(pairs) - 1)
        return pairs[0]

    return (chunks
            | "PairsOneByOne" >> beam.FlatMap(lambda chunk: chunk)
            | "KeyByPair" >> beam.Map(lambda p: ((p.left_id, p.right_id), p))
            | "GroupByPair" >> beam.GroupByKey()
            | "FirstOfEachPair" >> beam.Map(first)
            | "Rechunk" >> beam.BatchElements(min_batch_size=chunk_size, max_batch_size=chunk_size))


# --------------------------------------------------------------------------- stores

def read_store_tables(pipeline_or_pbegin, files: Sequence[str], label: str, batch_rows: int = 65536):
    """Existing store files -> pyarrow Tables of up to ``batch_rows`` rows."""
    def read(path: str) -> Iterator[pa.Table]:
        with FileSystems.open(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([batch])

    return (pipeline_or_pbegin
            | f"List{label}" >> beam.Create(list(files))
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
    """How the head runs. ``model_dir`` None = the zero-training baseline."""
    model_dir: str | None
    left_layout: StoreLayout
    right_layout: StoreLayout
    output_schema: pa.Schema
    keep: tuple[str, ...]
    batch_size: int = 8192
    device: str = "auto"


class _Scorer:
    """The head on one worker: loads the student once, scores gathered arrays."""

    def __init__(self, settings: ScoreSettings):
        import torch
        from encoders.checkpoint import load_or_build_student
        from encoders.config import baseline_config

        self.torch = torch
        self.settings = settings
        self.device = pick_device(settings.device)
        student = load_or_build_student(settings.model_dir, baseline_config())
        # Only the head runs here; the encoder's weights are not needed on scoring workers.
        student.encoder = None
        self.student = student.to(self.device).eval()
        self.autocast = self.device == "cuda"

    def score(self, left: tuple, right: tuple) -> tuple[np.ndarray, np.ndarray | None]:
        """left/right: (tokens (B, N, D) float32, mask (B, N) bool, pooled (B, H) or None)
        -> scores (B,) float32 and probs (B, K) or None."""
        torch = self.torch
        scores, probs = [], []
        total = left[0].shape[0]
        for start in range(0, total, self.settings.batch_size):
            part = slice(start, start + self.settings.batch_size)
            tensors = [None if a is None else torch.from_numpy(np.ascontiguousarray(a[part])).to(self.device)
                       for a in (*left, *right)]
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.student.score_tokens(tensors[0], tensors[1], tensors[3], tensors[4],
                                                   tensors[2], tensors[5])
            score, prob = self.student.scores_from_logits(logits)
            scores.append(score.float().cpu().numpy())
            if prob is not None:
                probs.append(prob.float().cpu().numpy())
        return (np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32),
                np.concatenate(probs).astype(np.float32) if probs else None)

    def table(self, pairs: Sequence[Pair], scores: np.ndarray, probs: np.ndarray | None) -> pa.Table:
        schema = self.settings.output_schema
        data = {"left_id": [p.left_id for p in pairs], "right_id": [p.right_id for p in pairs], "score": scores}
        if probs is not None:
            data["probs"] = list(probs)
        for position, name in enumerate(self.settings.keep):
            values = [p.kept[position] for p in pairs]
            if pa.types.is_string(schema.field(name).type):
                # Text inputs keep columns as strings; JSON values that are not strings are
                # written as their JSON text rather than lost.
                values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
            data[name] = values
        return pa.Table.from_pydict(data, schema=schema)


def _missing_letter(pair: Pair, side: str) -> DeadLetter:
    id_ = pair.left_id if side == "left" else pair.right_id
    return DeadLetter(f"{side}_text_missing",
                      f"{side} id {id_!r} has no encoded text (absent from the text table, or its text was "
                      "dead-lettered)", pair.row.source, pair.row.fields)


class _ScoreChunksBroadcastDoFn(beam.DoFn):
    """Chunk of Pair + both stores as side inputs -> a pyarrow Table of scores."""

    def __init__(self, settings: ScoreSettings):
        self._settings = settings
        self.scored = counter("rows_scored", PAIRS)
        self._lookups = None

    def setup(self):
        self._scorer = _Scorer(self._settings)

    def _lookup(self, left_tables, right_tables) -> tuple[TokenLookup, TokenLookup]:
        # Side inputs are materialised once per worker; rebuild only if Beam hands new ones.
        if self._lookups is None or self._lookups[0] is not left_tables or self._lookups[1] is not right_tables:
            self._lookups = (left_tables, right_tables,
                             TokenLookup(left_tables, self._settings.left_layout),
                             TokenLookup(right_tables, self._settings.right_layout))
        return self._lookups[2], self._lookups[3]

    def process(self, chunk: list[Pair], left_tables, right_tables) -> Iterator:
        left_lookup, right_lookup = self._lookup(left_tables, right_tables)
        left_rows = left_lookup.rows([p.left_id for p in chunk])
        right_rows = right_lookup.rows([p.right_id for p in chunk])
        found = (left_rows >= 0) & (right_rows >= 0)
        for index in np.flatnonzero(~found):
            letter = _missing_letter(chunk[index], "left" if left_rows[index] < 0 else "right")
            dead_letter_counter(letter.reason, PAIRS).inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
        keep = np.flatnonzero(found)
        if not len(keep):
            return
        scores, probs = self._scorer.score(left_lookup.gather(left_rows[keep]), right_lookup.gather(right_rows[keep]))
        self.scored.inc(len(keep))
        yield self._scorer.table([chunk[i] for i in keep], scores, probs)


class StoreEntry(NamedTuple):
    """One store row as the shuffle join carries it."""
    tokens: bytes
    num_tokens: int
    scale: float | None
    pooled: bytes | None


def store_entries(table: pa.Table) -> Iterator[tuple[str, StoreEntry]]:
    """A store table -> (id, StoreEntry) per row."""
    columns = table.to_pydict()
    scales = columns.get("token_scale") or [None] * table.num_rows
    pooled = columns.get("pooled") or [None] * table.num_rows
    for row in range(table.num_rows):
        yield columns["id"][row], StoreEntry(columns["tokens"][row], columns["num_tokens"][row], scales[row],
                                             pooled[row])


def decode_entries(entries: Sequence[StoreEntry], layout: StoreLayout) -> tuple:
    """StoreEntries -> (tokens (B, N, D) float32, mask (B, N), pooled (B, H) or None), like TokenLookup.gather."""
    dtype = "<f2" if layout.dtype == "float16" else np.int8
    tokens = np.frombuffer(b"".join(e.tokens for e in entries), dtype=dtype).reshape(
        len(entries), layout.tokens_kept, layout.dim).astype(np.float32)
    if layout.dtype == "int8":
        tokens *= np.array([e.scale for e in entries], dtype=np.float32)[:, None, None]
    mask = token_mask(np.array([e.num_tokens for e in entries]), layout.tokens_kept)
    pooled = (np.frombuffer(b"".join(e.pooled for e in entries), dtype="<f2").reshape(
        len(entries), layout.pooled_dim).astype(np.float32) if layout.pooled_dim else None)
    return tokens, mask, pooled


def _attach(side: str):
    """(id, {pairs, store}) -> one (pair, entry) per pair, or dead letters when the id is unknown."""
    def attach(element) -> Iterator:
        _, grouped = element
        entries = list(grouped["store"])
        for item in grouped["pairs"]:
            if not entries:
                letter = _missing_letter(item[0] if side == "right" else item, side)
                dead_letter_counter(letter.reason, PAIRS).inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
            elif side == "left":
                yield item.right_id, (item, entries[0])
            else:
                pair, left_entry = item
                yield pair, left_entry, entries[0]
    return attach


class _ScoreJoinedBatchDoFn(beam.DoFn):
    """A batch of (pair, left entry, right entry) -> a pyarrow Table of scores."""

    def __init__(self, settings: ScoreSettings):
        self._settings = settings
        self.scored = counter("rows_scored", PAIRS)

    def setup(self):
        self._scorer = _Scorer(self._settings)

    def process(self, batch) -> Iterator[pa.Table]:
        pairs = [b[0] for b in batch]
        scores, probs = self._scorer.score(decode_entries([b[1] for b in batch], self._settings.left_layout),
                                           decode_entries([b[2] for b in batch], self._settings.right_layout))
        self.scored.inc(len(pairs))
        yield self._scorer.table(pairs, scores, probs)


class ScorePairs(beam.PTransform):
    """Chunks of Pair + left/right store tables -> Tables of scores; ``dead_letter`` for pairs
    whose text is missing. ``join``: broadcast or shuffle (see module docstring)."""

    def __init__(self, settings: ScoreSettings, join: str, left_tables, right_tables, accelerator: str | None):
        super().__init__()
        self._settings = settings
        self._join = join
        self._left_tables = left_tables
        self._right_tables = right_tables
        self._accelerator = accelerator

    def _hinted(self, pardo):
        # Dataflow runs a step with an accelerator hint on GPU workers; the join stays on CPU ones.
        return pardo.with_resource_hints(accelerator=self._accelerator) if self._accelerator else pardo

    def expand(self, chunks):
        if self._join == "broadcast":
            scored = chunks | "ScoreChunks" >> self._hinted(beam.ParDo(
                _ScoreChunksBroadcastDoFn(self._settings),
                beam.pvalue.AsList(self._left_tables), beam.pvalue.AsList(self._right_tables)
            ).with_outputs(DEAD_LETTER_TAG, main="scores"))
            return {"scores": scored.scores, DEAD_LETTER_TAG: scored[DEAD_LETTER_TAG]}

        left_entries = self._left_tables | "LeftEntries" >> beam.FlatMap(store_entries)
        right_entries = self._right_tables | "RightEntries" >> beam.FlatMap(store_entries)
        by_left = chunks | "PairsByLeftId" >> beam.FlatMap(lambda chunk: ((p.left_id, p) for p in chunk))
        with_left = ({"pairs": by_left, "store": left_entries}
                     | "JoinLeft" >> beam.CoGroupByKey()
                     | "AttachLeft" >> beam.FlatMap(_attach("left")).with_outputs(DEAD_LETTER_TAG, main="joined"))
        with_both = ({"pairs": with_left.joined, "store": right_entries}
                     | "JoinRight" >> beam.CoGroupByKey()
                     | "AttachRight" >> beam.FlatMap(_attach("right")).with_outputs(DEAD_LETTER_TAG, main="joined"))
        scores = (with_both.joined
                  | "BatchJoined" >> beam.BatchElements(min_batch_size=min(256, self._settings.batch_size),
                                                                   max_batch_size=self._settings.batch_size)
                  | "ScoreBatches" >> self._hinted(beam.ParDo(_ScoreJoinedBatchDoFn(self._settings))))
        dead = (with_left[DEAD_LETTER_TAG], with_both[DEAD_LETTER_TAG]) | "JoinDeadLetters" >> beam.Flatten()
        return {"scores": scores, DEAD_LETTER_TAG: dead}
