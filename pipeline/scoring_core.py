"""Stage two's scoring core: Arrow batches of pairs in, Arrow batches of scores out.

Engine-agnostic on purpose: plain pyarrow, numpy and torch, no Beam. ``pipeline/beam/score.py`` wraps
it in Beam transforms; another engine (Spark's ``mapInArrow``, Ray Data's ``map_batches``) can
wrap the same functions. ``encoders/inference.py`` (and so ``jobs/evaluate``) runs the head
through the same ``encoders.device.run_head``, so there is one inference path.

The path of one batch of P pairs, every step columnar (Python objects only for the rare bad rows):

1. :func:`table_from_rows` (text formats only): parsed rows -> an Arrow table, kept columns typed
   as :func:`pipeline.pairs.kept_fields` decided before the run.
2. :func:`validate_pairs`: a reason code per row with ``pyarrow.compute`` masks, exactly the
   reasons :func:`pipeline.beam.score.extract_pair` gives one row at a time (``left_null_text``,
   ``right_empty_text``, ``left_non_string_id`` ...; ``kept_column_type`` for a kept value that
   does not fit its decided type); only bad rows become :class:`DeadLetter`.
3. :func:`pair_ids`: the two id columns (given, or the content hash of each *unique* text).
4. :class:`StoreLookup`: ids -> store rows by binary search over fixed-width id keys (bytes and
   length, so distinct ids never meet), gathers
   with numpy ``take``.
5. :class:`pipeline.head_feed.HeadScorer`: gathers the rows (on the device when the stores are
   resident there) and runs the student's head over them, in batches.
6. :func:`score_table`: ids, ``score``, ``probs`` and kept columns as one Arrow table.

:func:`prepare_pairs` runs 1-3 and :func:`score_pairs` 4-6; :func:`score_batch` runs all of them.

Shapes: P pairs in a batch, R rows of a store, N/M tokens kept per side, D token size,
H pooled size, C head outputs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from encoders.config import SIDES
from pipeline.dead_letters import DeadLetter
from pipeline.head_feed import HeadScorer, head_option_refused  # noqa: F401  (the head's part of the core)
from pipeline.store_codec import SideArrays, side_arrays
from pipeline.text_checks import blank_mask
from pipeline.text_ids import text_id

REASON_KEPT_COLUMN_TYPE = "kept_column_type"
REASON_TEXT_MISSING = "text_missing"

# Hidden columns a prepared batch carries so that a later dead letter can say where its row came from.
FILE_COLUMN = "_file"          # int32: index into the job's list of pair files
POSITION_COLUMN = "_position"  # int64: Parquet row index (0-based) or text line (1-based)
# Store ids longer than this are looked up through a dict instead of fixed-width keys.
_MAX_KEY_BYTES = 512


# --------------------------------------------------------------------------- what a pair is

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

    def side_column(self, side: str) -> str:
        """The column checked for ``side``: its id column in id mode, its text column otherwise."""
        if self.id_mode:
            return self.left_id if side == "left" else self.right_id
        return self.left if side == "left" else self.right

    def needed(self) -> list[str]:
        """Every column the job reads from a pair file, each once."""
        return list(dict.fromkeys([*self.required(), *self.keep]))


# Reason codes: 0 is a good row; the order of checks is extract_text's (null, then type, then blank).
_CHECKS = ("null_text", "non_string_text", "empty_text")
_REASONS = ["", REASON_KEPT_COLUMN_TYPE] + [f"{side}_{check}" for side in SIDES for check in _CHECKS]


def _code(side: str, check: str) -> int:
    return _REASONS.index(f"{side}_{check}")


def reason_name(code: int, id_mode: bool) -> str:
    """The dead-letter reason of a code; id mode names ids (``left_null_id``), as extract_pair does."""
    reason = _REASONS[code]
    return reason.replace("_text", "_id") if id_mode and reason != REASON_KEPT_COLUMN_TYPE else reason


# --------------------------------------------------------------------------- rows -> Arrow

class RowTable(NamedTuple):
    """Rows of a text format as Arrow, with what Arrow alone cannot hold.

    table: the needed columns (text/id columns as strings, kept columns in their decided types);
    non_string: column -> (P,) bool, rows whose value was present but not a string (null in ``table``);
    misfit: kept column -> (P,) bool, rows whose value does not fit the column's type (null in ``table``).
    """
    table: pa.Table
    non_string: dict[str, np.ndarray]
    misfit: dict[str, np.ndarray]


def canonical_id(value: Any) -> str | None:
    """An id value -> the one string form every table compares it in, or None when it is no id.

    Strings are ids as they are; integers (not bools) are their decimal text, as a text table's
    integer ids become (:func:`pipeline.text_checks.extract_text`), so ``42`` in a JSONL or Parquet
    pair table meets ``42`` or ``"42"`` in a text table."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _strings(values: list, integers: bool = False) -> tuple[pa.Array, np.ndarray | None]:
    """Values of a text/id column -> (string array with non-strings as null, non-string mask or None).
    ``integers`` (id columns): integers are accepted in their canonical form (:func:`canonical_id`)."""
    try:
        return pa.array(values, pa.string()), None
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Rare: some value is a number, list or object. Only now look at each value.
        if integers:
            values = [v if isinstance(v, str) or canonical_id(v) is None else canonical_id(v) for v in values]
        non_string = np.fromiter((v is not None and not isinstance(v, str) for v in values), bool, len(values))
        if not non_string.any():
            return pa.array(values, pa.string()), None
        return pa.array([None if bad else v for v, bad in zip(values, non_string)], pa.string()), non_string


def _fits(value: Any, kind: pa.DataType) -> bool:
    """Whether a JSON value fits a kept column's decided type without being changed."""
    if value is None:
        return True
    if pa.types.is_boolean(kind):
        return isinstance(value, bool)
    if pa.types.is_integer(kind):
        return isinstance(value, int) and not isinstance(value, bool) and -2 ** 63 <= value < 2 ** 63
    if pa.types.is_floating(kind):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        # An integer fits only where the float holds it exactly (|value| <= 2**53 for a double):
        # beyond, it would be rounded (and Arrow refuses the whole batch).
        exact = 2 ** _FLOAT_MANTISSA_BITS.get(kind.bit_width, 53)
        return isinstance(value, float) or -exact <= value <= exact
    return True


# Significand bits (with the implicit one) of float16/32/64: the integers each holds exactly.
_FLOAT_MANTISSA_BITS = {16: 11, 32: 24, 64: 53}


def kept_values(values: list, field: pa.Field) -> tuple[pa.Array, np.ndarray | None]:
    """Values of one kept column from a text format -> (array of ``field.type``, misfit mask or None).

    A string column holds JSON values that are not strings as their JSON text (the documented
    fallback for objects, lists and mixed columns); a number or bool column refuses a value of
    another JSON type (misfit: null here, dead-lettered by :func:`validate_pairs`) rather than
    change it.
    """
    kind = field.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return pa.array(values, kind), None
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array([v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                             for v in values], kind), None
    fits = np.fromiter((_fits(v, kind) for v in values), bool, len(values))
    if fits.all():
        return pa.array(values, kind), None
    return pa.array([v if ok else None for v, ok in zip(values, fits)], kind), ~fits


def table_from_rows(rows: Sequence[dict], columns: PairColumns, kept: Sequence[pa.Field]) -> RowTable:
    """Parsed rows of a JSONL/CSV/TSV file -> :class:`RowTable` of the needed columns."""
    arrays, names, non_string, misfit = [], [], {}, {}
    kept_by_name = {f.name: f for f in kept}
    for name in columns.needed():
        values = [row.get(name) for row in rows]
        if name in kept_by_name and name not in columns.required():
            array, bad = kept_values(values, kept_by_name[name])
            if bad is not None:
                misfit[name] = bad
        else:
            array, bad = _strings(values, integers=columns.id_mode)
            if bad is not None:
                non_string[name] = bad
        arrays.append(array)
        names.append(name)
    return RowTable(pa.Table.from_arrays(arrays, names=names), non_string, misfit)


# --------------------------------------------------------------------------- validation

def _as_strings(column: pa.ChunkedArray | pa.Array, integers: bool = False) -> tuple[pa.Array, np.ndarray]:
    """A column of any Arrow type -> (string array, (P,) bool of non-null non-string values).
    ``integers`` (id columns): an integer column is its values' decimal text (:func:`canonical_id`)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.dictionary_decode(), kind.value_type
    if pa.types.is_string(kind):
        return column, np.zeros(len(column), bool)
    if integers and pa.types.is_integer(kind):
        return column.cast(pa.string()), np.zeros(len(column), bool)
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return column.cast(pa.string()), np.zeros(len(column), bool)
    # A Parquet column of another type: every value present is not a string.
    present = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)
    return pa.nulls(len(column), pa.string()), present


def validate_pairs(table: pa.Table, columns: PairColumns, non_string: dict[str, np.ndarray] | None = None,
                   misfit: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """(P,) int8 reason codes (0 = a good pair; :func:`reason_name` names the others).

    The first problem wins, in extract_pair's order: the left side (null, not a string, blank
    by :func:`pipeline.text_checks.blank_mask`), then the right side, then a kept value that does not
    fit its column's type. ``non_string`` and ``misfit`` come from :func:`table_from_rows`.
    """
    codes = np.zeros(table.num_rows, np.int8)
    for name, bad in (misfit or {}).items():
        codes[bad] = _REASONS.index(REASON_KEPT_COLUMN_TYPE)
    # Later assignments win: the right side before the left, the checks in reverse order.
    for side in reversed(SIDES):
        name = columns.side_column(side)
        strings, other_type = _as_strings(table.column(name), integers=columns.id_mode)
        if non_string and name in non_string:
            other_type = other_type | non_string[name]
        null = np.asarray(strings.is_null().to_numpy(zero_copy_only=False), bool) & ~other_type
        codes[blank_mask(strings)] = _code(side, "empty_text")
        codes[other_type] = _code(side, "non_string_text")
        codes[null] = _code(side, "null_text")
    return codes


def _detail(reason: str, column: str, row: dict, field: pa.Field | None = None) -> str:
    """The dead letter's sentence, worded as :func:`pipeline.beam.encode.extract_text` words it (which this
    module cannot import: it imports Beam); ``test_scoring_core`` checks that the two agree."""
    value = row.get(column)
    if reason.endswith("null_text") or reason.endswith("null_id"):
        return f"text column {column!r} is " + ("absent from this row" if column not in row else "null")
    if reason.endswith("non_string_text") or reason.endswith("non_string_id"):
        return f"text column {column!r} holds a {type(value).__name__}, not a string: {value!r:.80}"
    if reason == REASON_KEPT_COLUMN_TYPE:
        return (f"kept column {column!r} holds a {type(value).__name__} ({value!r:.80}) but is {field.type} in the "
                "output, as decided from the inputs' first rows before the run; the value is not changed silently")
    return (f"text column {column!r} has no visible character (empty, or only whitespace/control/format/combining "
            f"characters): {value!r:.80}")


def dead_letters_of(codes: np.ndarray, columns: PairColumns, kept: Sequence[pa.Field],
                    originals: Callable[[np.ndarray], list[dict]], sources: Callable[[np.ndarray], list[str]],
                    misfit: dict[str, np.ndarray] | None = None) -> list[DeadLetter]:
    """The DeadLetters of the bad rows (codes != 0), holding each row's original fields.

    originals(rows) -> the original rows' fields; sources(rows) -> their ``path:line`` / ``path:row``.
    """
    bad = np.flatnonzero(codes)
    if not len(bad):
        return []
    fields_of = originals(bad)
    where = sources(bad)
    kept_by_name = {f.name: f for f in kept}
    letters = []
    for position, row in enumerate(bad):
        reason = reason_name(int(codes[row]), columns.id_mode)
        fields = fields_of[position]
        if reason == REASON_KEPT_COLUMN_TYPE:
            name = next(n for n, mask in (misfit or {}).items() if mask[row])
            detail = _detail(reason, name, fields, kept_by_name[name])
        else:
            side = reason.split("_", 1)[0]
            detail = f"{side} side: {_detail(reason, columns.side_column(side), fields)}"
        letters.append(DeadLetter(reason, detail, where[position], fields))
    return letters


# --------------------------------------------------------------------------- ids

def text_ids(texts: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(P,) valid texts -> (ids (P,), unique texts (U,), their ids (U,)). Each unique text of
    the batch is hashed once (:func:`pipeline.text_ids.text_id` is the rule)."""
    encoded = pc.dictionary_encode(texts)
    unique = encoded.dictionary
    unique_ids = pa.array([text_id(t) for t in unique.to_pylist()], pa.string())
    return unique_ids.take(encoded.indices), unique, unique_ids


class PreparedPairs(NamedTuple):
    """A batch after validation.

    pairs: the good pairs: ``left_id``, ``right_id``, the kept columns, ``_file``, ``_position``;
    dead_letters: the bad rows; texts: side -> (ids (U,), texts (U,)) of the batch's unique texts
    (text mode; empty in id mode, where the texts come from text tables).
    """
    pairs: pa.Table
    dead_letters: list[DeadLetter]
    texts: dict[str, tuple[pa.Array, pa.Array]]


def prepare_pairs(table: pa.Table, columns: PairColumns, kept: Sequence[pa.Field], file_index: int,
                  positions: np.ndarray, path: str, originals: Callable[[np.ndarray], list[dict]] | None = None,
                  non_string: dict[str, np.ndarray] | None = None,
                  misfit: dict[str, np.ndarray] | None = None) -> PreparedPairs:
    """A read batch of P pairs -> :class:`PreparedPairs`.

    positions: (P,) the rows' line numbers (text formats) or row indices (Parquet) in ``path``;
    originals: rows -> their original fields for dead letters (default: this table's columns).
    """
    codes = validate_pairs(table, columns, non_string, misfit)
    if originals is None:
        def originals(rows):
            return table.take(pa.array(rows)).to_pylist()
    letters = dead_letters_of(codes, columns, kept, originals,
                              lambda rows: [f"{path}:{positions[r]}" for r in rows], misfit)
    good = np.flatnonzero(codes == 0)
    valid = table.take(pa.array(good)) if len(letters) else table
    data, texts = {}, {}
    for side in SIDES:
        strings, _ = _as_strings(valid.column(columns.side_column(side)), integers=columns.id_mode)
        if columns.id_mode:
            data[f"{side}_id"] = strings
        else:
            ids, unique, unique_ids = text_ids(strings)
            data[f"{side}_id"] = ids
            texts[side] = (unique_ids, unique)
    for field in kept:
        data[field.name] = valid.column(field.name).cast(field.type)
    data[FILE_COLUMN] = pa.array(np.full(len(good), file_index, np.int32))
    data[POSITION_COLUMN] = pa.array(np.asarray(positions, np.int64)[good])
    return PreparedPairs(pa.table(data), letters, texts)


# --------------------------------------------------------------------------- stores


def _fixed_width_keys(ids: pa.Array, width: int | None = None,
                      with_length: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(P,) strings -> ((P,) numpy ``S{width}`` keys, (P,) bool: longer than ``width``).

    Built from Arrow's offsets and bytes with numpy, no Python string per row. Keys compare
    bytewise (so binary search works). The bytes alone are zero-padded, so ``"L0"`` and
    ``"L0\\x00"`` would get the same key; ``with_length`` appends each id's byte length (2 bytes,
    big-endian; ids here are at most ``_MAX_KEY_BYTES``), which makes the key injective: two
    keys are equal only for the same bytes of the same length. (numpy's ``S`` comparisons ignore
    trailing NULs, which is harmless once every key has the same width and carries its length.)
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    ids = ids.cast(pa.string())
    count = len(ids)
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset:ids.offset + count + 1]
    data = np.frombuffer(ids.buffers()[2], np.uint8) if ids.buffers()[2] is not None else np.zeros(1, np.uint8)
    lengths = np.diff(offsets)
    if width is None:
        width = max(1, int(lengths.max()) if count else 1)
    too_long = lengths > width
    span = np.arange(width)
    inside = span[None, :] < np.minimum(lengths, width)[:, None]
    suffix = 2 if with_length else 0
    keys = np.zeros((count, width + suffix), np.uint8)
    if count and len(data):
        keys[:, :width][inside] = data[np.minimum(offsets[:-1, None] + span[None, :], len(data) - 1)[inside]]
    if with_length:
        clipped = np.minimum(lengths, 0xFFFF)
        keys[:, width] = clipped >> 8
        keys[:, width + 1] = clipped & 0xFF
    return keys.view(f"S{width + suffix}").reshape(count), too_long


def store_columns(layout) -> list[str]:
    """The store columns scoring needs (not ``id`` nor ``text_hash``)."""
    names = ["tokens", "num_tokens"]
    if layout.dtype == "int8":
        names.append("token_scale")
    if layout.pooled_dim:
        names.append("pooled")
    return names


class StoreLookup:
    """A store held in memory: ids -> rows by binary search, rows -> SideArrays by ``take``.

    Ids are kept sorted as fixed-width keys (R,) (the id's bytes, zero-padded, then its length:
    distinct ids have distinct keys) with the store row of each; a batch of
    P ids is found with one ``numpy.searchsorted`` (P log R byte comparisons in C), not P dict
    lookups. Tokens stay in the stored dtype (half the memory of float32); only gathered rows
    are converted, by the head. When an id is stored twice the later row wins (newly encoded
    rows come after reused ones and replace them).
    """

    def __init__(self, tables: Sequence[pa.Table], layout):
        self.layout = layout
        table = (pa.concat_tables([t.select(["id", *store_columns(layout)]) for t in tables]) if tables else
                 layout.schema().empty_table().select(["id", *store_columns(layout)]))
        self.table = table.drop_columns(["id"])   # the store columns, for joins that carry rows on
        # Every column stays in its stored dtype (pooled float16, as the tokens): a batch gathers
        # half the bytes of float32 and converts them where the head runs (pipeline/head_feed.py);
        # measured faster on CPU than gathering rows converted once up front.
        self.arrays = side_arrays(table, layout)
        ids = table.column("id").combine_chunks()
        self._dict = None
        if len(ids) and pc.max(pc.binary_length(ids)).as_py() > _MAX_KEY_BYTES:
            # Very long ids: fixed-width keys would be mostly padding.
            self._dict = {i: r for r, i in enumerate(ids.to_pylist())}
            return
        # Keys carry each id's length: ids that differ only in trailing NUL bytes stay apart.
        lengths = pc.binary_length(ids).to_numpy(zero_copy_only=False) if len(ids) else np.zeros(0, np.int64)
        self._width = max(1, int(lengths.max()) if len(ids) else 1)
        keys, _ = _fixed_width_keys(ids, self._width, with_length=True)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        last = np.ones(len(keys), bool)
        last[:-1] = keys[1:] != keys[:-1]
        self._keys, self._rows = keys[last], order[last]

    def __len__(self) -> int:
        return len(self._dict) if self._dict is not None else len(self._keys)

    def rows(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """(P,) ids -> (P,) int64 store rows, -1 where the store has no such id.

        Each distinct id of the batch is looked up once (pairs repeat their ids: a query meets
        many candidates), after one hash pass (``dictionary_encode``) over the P ids."""
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        if len(ids) > 1:
            encoded = pc.dictionary_encode(ids)
            if len(encoded.dictionary) < len(ids):
                return self._unique_rows(encoded.dictionary)[encoded.indices.to_numpy(zero_copy_only=False)]
        return self._unique_rows(ids)

    def _unique_rows(self, ids: pa.Array) -> np.ndarray:
        """(U,) ids -> (U,) int64 store rows, -1 where the store has no such id."""
        if self._dict is not None:
            get = self._dict.get
            values = ids.to_pylist()
            return np.fromiter((get(i, -1) for i in values), np.int64, len(values))
        if not len(self._keys):
            return np.full(len(ids), -1, np.int64)
        keys, too_long = _fixed_width_keys(ids, self._width, with_length=True)
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = (self._keys[at] == keys) & ~too_long
        return np.where(found, self._rows[at], -1).astype(np.int64)

    def gather(self, rows: np.ndarray, tokens: bool = True) -> SideArrays:
        """(B,) valid rows -> SideArrays of those rows (numpy take); ``tokens=False``: without tokens."""
        return self.arrays.take(rows, tokens)


# --------------------------------------------------------------------------- partitions

_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def id_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(P,) strings -> (P,) uint64 FNV-1a of their UTF-8 bytes: the same on every worker and in
    every process (Python's ``hash`` is not), vectorised over byte positions."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    lengths = pc.binary_length(ids).to_numpy(zero_copy_only=False) if len(ids) else np.zeros(0, np.int64)
    if len(ids) and lengths.max() > _MAX_KEY_BYTES:
        import hashlib
        return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little")
                            for i in ids.to_pylist()), np.uint64, len(ids))
    keys, _ = _fixed_width_keys(ids)
    width = keys.dtype.itemsize
    matrix = keys.view(np.uint8).reshape(len(ids), width)
    hashes = np.full(len(ids), _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for column in range(width):
            live = lengths > column
            hashes[live] = (hashes[live] ^ matrix[live, column].astype(np.uint64)) * _FNV_PRIME
    return hashes


def partition(table: pa.Table, hashes: np.ndarray, buckets: int):
    """Split a table by ``hashes % buckets`` -> (bucket, rows of that bucket) per non-empty bucket."""
    bucket = (hashes % np.uint64(buckets)).astype(np.int64)
    order = np.argsort(bucket, kind="stable")
    ordered = bucket[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], len(order)]
    for start, end in zip(starts, ends):
        yield int(ordered[start]), table.take(pa.array(order[start:end]))


# --------------------------------------------------------------------------- scoring

def score_table(pairs: pa.Table, scores: np.ndarray, probs: np.ndarray | None, schema: pa.Schema) -> pa.Table:
    """Prepared pairs (B rows) + their scores -> the output table in ``schema``."""
    data = {"left_id": pairs.column("left_id"), "right_id": pairs.column("right_id"), "score": pa.array(scores)}
    if "probs" in schema.names:
        classes = probs.shape[1]
        offsets = pa.array(np.arange(0, probs.size + 1, classes, dtype=np.int32))
        data["probs"] = pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1)))
    for field in schema:
        if field.name not in data:
            data[field.name] = pairs.column(field.name)
    return pa.table([data[f.name] for f in schema], schema=schema)


def missing_letters(pairs: pa.Table, rows: np.ndarray, side: str, columns: PairColumns,
                    paths: Sequence[str]) -> list[DeadLetter]:
    """Dead letters (``left_text_missing`` ...) for prepared pairs whose id is not in a store.

    The row holds what the pair carries: its two ids (under the input's id columns in id mode)
    and its kept columns; the whole input row is not carried past reading.
    """
    names = ({"left_id": columns.left_id, "right_id": columns.right_id} if columns.id_mode
             else {"left_id": "left_id", "right_id": "right_id"})
    carried = [n for n in pairs.column_names if not n.startswith(("_left_", "_right_"))]
    picked = pairs.select(carried).take(pa.array(rows)).to_pylist()
    letters = []
    for row in picked:
        id_ = row[f"{side}_id"]
        fields = {names.get(k, k): v for k, v in row.items() if k not in (FILE_COLUMN, POSITION_COLUMN)}
        letters.append(DeadLetter(
            f"{side}_{REASON_TEXT_MISSING}",
            f"{side} id {id_!r} has no encoded text (absent from the text table, or its text was dead-lettered)",
            f"{paths[row[FILE_COLUMN]]}:{row[POSITION_COLUMN]}", fields))
    return letters


def score_pairs(pairs: pa.Table, left: StoreLookup, right: StoreLookup, scorer: HeadScorer, schema: pa.Schema,
                columns: PairColumns, paths: Sequence[str]) -> tuple[pa.Table, list[DeadLetter]]:
    """Prepared pairs (P rows) + both stores -> (scores table of the pairs found, dead letters
    of the pairs whose left or right id is not stored)."""
    left_rows = left.rows(pairs.column("left_id"))
    right_rows = right.rows(pairs.column("right_id"))
    found = (left_rows >= 0) & (right_rows >= 0)
    letters = (missing_letters(pairs, np.flatnonzero(left_rows < 0), "left", columns, paths)
               + missing_letters(pairs, np.flatnonzero((left_rows >= 0) & (right_rows < 0)), "right", columns, paths))
    keep = np.flatnonzero(found)
    if letters:
        pairs = pairs.take(pa.array(keep))
    # The scorer gathers the rows itself: on the device where the stores are resident, else
    # straight into its reusable host buffers (pipeline/head_feed.py).
    scores, probs = scorer.score_rows(left.arrays, left_rows[keep], right.arrays, right_rows[keep])
    return score_table(pairs, scores, probs, schema), letters


def score_batch(table: pa.Table, columns: PairColumns, kept: Sequence[pa.Field], left: StoreLookup,
                right: StoreLookup, scorer: HeadScorer, schema: pa.Schema, path: str = "<batch>",
                positions: np.ndarray | None = None) -> tuple[pa.Table, list[DeadLetter]]:
    """The whole core on one Arrow batch of pairs (Parquet-typed columns): validate, find ids,
    look up both stores, run the head -> (scores table, every dead letter of the batch)."""
    positions = np.arange(table.num_rows) if positions is None else positions
    prepared = prepare_pairs(table, columns, kept, 0, positions, path)
    scores, missing = score_pairs(prepared.pairs, left, right, scorer, schema, columns, [path])
    return scores, prepared.dead_letters + missing

