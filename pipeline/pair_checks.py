"""The columnar pair validator: the one place the pair contract (:mod:`pipeline.pairs`) is applied.

Steps 1-3 of the scoring core's path (``pipeline/scoring_core.py``), and what the teacher jobs
check their pairs with:

1. :func:`table_from_rows` (text formats only): parsed rows -> an Arrow table, kept columns typed
   as :func:`pipeline.pairs.kept_fields` decided before the run.
2. :func:`validate_pairs`: a reason code per row with ``pyarrow.compute`` masks, in the contract's
   order (``left_null_text``, ``right_empty_text``, ``left_non_string_id``, ``left_invalid_id`` ...;
   ``kept_column_type`` for a kept value that does not fit its decided type); only bad rows
   become :class:`DeadLetter` (:func:`dead_letters_of`).
3. :func:`prepare_pairs`: the two id columns (given, or the content hash of each *unique* text)
   of the good pairs, with the kept columns and where each row came from.

:func:`check_pair_rows` runs 1-2 over a list of rows and gives each row's :class:`TextPair` or
dead letter, in order: the teacher jobs (``label_pairs``, ``train_teacher``, ``train_student``,
``evaluate``) check their pairs with it. Shapes: P rows in a batch, U unique texts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from encoders.config import SIDES
from pipeline import dead_letters as dl
from pipeline.dead_letters import DeadLetter
from pipeline.pairs import (GIVEN_ID, KEPT_COLUMN_TYPE_CODE, SIDE_CHECKS, TEXTS, PairColumns, TextPair,
                            canonical_id, code_check, kept_values, reason_code, reason_name)
from pipeline.text_checks import blank_mask
from pipeline.text_ids import text_id

if TYPE_CHECKING:
    from pipeline.readers import SourcedRow

# Hidden columns a prepared batch carries so that a later dead letter can say where its row came from.
FILE_COLUMN = "_file"          # int32: index into the job's list of pair files
POSITION_COLUMN = "_position"  # int64: Parquet row index (0-based) or text line (1-based)


# --------------------------------------------------------------------------- 1. rows -> Arrow

class RowTable(NamedTuple):
    """Rows of a text format as Arrow, with what Arrow alone cannot hold.

    table: the needed columns (text/id columns as strings, kept columns in their decided types);
    non_string: column -> (P,) bool, rows whose value was present but not a string (null in ``table``);
    misfit: kept column -> (P,) bool, rows whose value does not fit the column's type (null in ``table``).
    """
    table: pa.Table
    non_string: dict[str, np.ndarray]
    misfit: dict[str, np.ndarray]


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


def table_from_rows(rows: Sequence[dict], columns: PairColumns, kept: Sequence[pa.Field]) -> RowTable:
    """Parsed rows of a JSONL/CSV/TSV file -> :class:`RowTable` of the needed columns."""
    arrays, names, non_string, misfit = [], [], {}, {}
    kept_by_name = {f.name: f for f in kept}
    required, id_columns = columns.required(), columns.id_columns()
    for name in columns.needed():
        values = [row.get(name) for row in rows]
        if name in kept_by_name and name not in required:
            array, bad = kept_values(values, kept_by_name[name])
            if bad is not None:
                misfit[name] = bad
        else:
            array, bad = _strings(values, integers=name in id_columns)
            if bad is not None:
                non_string[name] = bad
        arrays.append(array)
        names.append(name)
    return RowTable(pa.Table.from_arrays(arrays, names=names), non_string, misfit)


# --------------------------------------------------------------------------- 2. validation

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
    """(P,) int8 reason codes (0 = a good pair; :func:`pipeline.pairs.reason_name` names the others).

    The first problem wins, in the contract's order: the left side's columns (each: null, not a
    string, blank by :func:`pipeline.text_checks.blank_mask`; an id beside its text: null, then
    invalid), then the right side's, then a kept value that does not fit its column's type.
    ``non_string`` and ``misfit`` come from :func:`table_from_rows`.
    """
    codes = np.zeros(table.num_rows, np.int8)
    for name, bad in (misfit or {}).items():
        codes[bad] = KEPT_COLUMN_TYPE_CODE
    id_columns = columns.id_columns()
    # Later assignments win: the right side before the left, each side's checks in reverse order.
    for side in reversed(SIDES):
        for kind, name in reversed(columns.side_columns(side)):
            strings, other_type = _as_strings(table.column(name), integers=name in id_columns)
            if non_string and name in non_string:
                other_type = other_type | non_string[name]
            null = np.asarray(strings.is_null().to_numpy(zero_copy_only=False), bool) & ~other_type
            null_check, *rest = SIDE_CHECKS[kind]
            if kind == GIVEN_ID:   # an id beside its text: not a string/integer, or blank, is invalid
                codes[blank_mask(strings) | other_type] = reason_code(side, kind, rest[0])
            else:
                codes[blank_mask(strings)] = reason_code(side, kind, rest[1])
                codes[other_type] = reason_code(side, kind, rest[0])
            codes[null] = reason_code(side, kind, null_check)
    return codes


def _detail(check: str, kind: str, column: str, row: dict, field: pa.Field | None = None) -> str:
    """The dead letter's sentence: for text columns (and ids mode's ids, checked as texts) as
    :func:`pipeline.text_checks.extract_text` words it, for an id beside its text as
    :func:`pipeline.text_checks.row_id` does."""
    value = row.get(column)
    if check == dl.REASON_KEPT_COLUMN_TYPE:
        return (f"kept column {column!r} holds a {type(value).__name__} ({value!r:.80}) but is {field.type} in the "
                "output, as decided from the inputs' first rows before the run; the value is not changed silently")
    if kind == GIVEN_ID:
        if check == dl.REASON_NULL_ID:
            return f"id column {column!r} is null or absent"
        if isinstance(value, str):
            return f"id column {column!r} has no visible character: {value!r:.80}"
        return f"id column {column!r} holds a {type(value).__name__}; ids are strings or integers"
    if check in (dl.REASON_NULL_TEXT, dl.REASON_NULL_ID):
        return f"text column {column!r} is " + ("absent from this row" if column not in row else "null")
    if check in (dl.REASON_NON_STRING_TEXT, dl.REASON_NON_STRING_ID):
        return f"text column {column!r} holds a {type(value).__name__}, not a string: {value!r:.80}"
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
        code = int(codes[row])
        side, kind, check = code_check(code)
        fields = fields_of[position]
        if code == KEPT_COLUMN_TYPE_CODE:
            name = next(n for n, mask in (misfit or {}).items() if mask[row])
            detail = _detail(check, "", name, fields, kept_by_name[name])
        else:
            column = dict((k, c) for k, c in columns.side_columns(side))[kind]
            detail = f"{side} side: {_detail(check, kind, column, fields)}"
        letters.append(DeadLetter(reason_name(code), detail, where[position], fields))
    return letters


# --------------------------------------------------------------------------- 3. ids

def text_ids(texts: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(P,) valid texts -> (ids (P,), unique texts (U,), their ids (U,)). Each unique text of
    the batch is hashed once (:func:`pipeline.text_ids.text_id` is the rule)."""
    encoded = pc.dictionary_encode(texts)
    unique = encoded.dictionary
    unique_ids = pa.array([text_id(t) for t in unique.to_pylist()], pa.string())
    return unique_ids.take(encoded.indices), unique, unique_ids


def _side_ids(valid: pa.Table, columns: PairColumns, side: str) -> tuple[pa.Array, pa.Array | None]:
    """A side's ids of valid pairs (P,) and, when the ids are content hashes, (unique ids (U,),
    unique texts (U,)) of the batch; otherwise None."""
    kind_columns = columns.side_columns(side)
    _, id_column = kind_columns[-1]
    id_columns = columns.id_columns()
    strings, _ = _as_strings(valid.column(id_column), integers=id_column in id_columns)
    if columns.mode != TEXTS:
        return strings, None
    ids, unique, unique_ids = text_ids(strings)
    return ids, (unique_ids, unique)


class PreparedPairs(NamedTuple):
    """A batch after validation.

    pairs: the good pairs: ``left_id``, ``right_id``, the kept columns, ``_file``, ``_position``;
    dead_letters: the bad rows; texts: side -> (ids (U,), texts (U,)) of the batch's unique texts
    (texts mode; empty when ids are given: in ids mode the texts come from text tables).
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
        data[f"{side}_id"], unique = _side_ids(valid, columns, side)
        if unique is not None:
            texts[side] = unique
    for field in kept:
        data[field.name] = valid.column(field.name).cast(field.type)
    data[FILE_COLUMN] = pa.array(np.full(len(good), file_index, np.int32))
    data[POSITION_COLUMN] = pa.array(np.asarray(positions, np.int64)[good])
    return PreparedPairs(pa.table(data), letters, texts)


# --------------------------------------------------------------------------- rows of the teacher jobs

def check_pair_rows(rows: Sequence[SourcedRow], columns: PairColumns,
                    kept: Sequence[pa.Field] = ()) -> list[TextPair | DeadLetter]:
    """Rows with texts (texts or texts_and_ids mode) -> per row, in order, its :class:`TextPair` or
    the DeadLetter saying why not, checked as one columnar batch. ``kept``: the kept columns'
    decided fields (:func:`pipeline.pairs.kept_fields`), whose misfits are ``kept_column_type``;
    a TextPair's ``kept`` holds the row's own values of ``columns.keep``."""
    if not columns.has_texts:
        raise ValueError("check_pair_rows needs the pairs' texts (ids mode reads them from text tables)")
    if not rows:
        return []
    converted = table_from_rows([r.fields for r in rows], columns, kept)
    codes = validate_pairs(converted.table, columns, converted.non_string, converted.misfit)
    letters = iter(dead_letters_of(codes, columns, kept, lambda bad: [rows[r].fields for r in bad],
                                   lambda bad: [rows[r].source for r in bad], converted.misfit))
    good = np.flatnonzero(codes == 0)
    valid = converted.table.take(pa.array(good)) if len(good) < len(rows) else converted.table
    lefts, rights = valid.column(columns.left).to_pylist(), valid.column(columns.right).to_pylist()
    left_ids, right_ids = (_side_ids(valid, columns, side)[0].to_pylist() for side in SIDES)
    out: list[TextPair | DeadLetter] = []
    at = 0
    for index, row in enumerate(rows):
        if codes[index]:
            out.append(next(letters))
            continue
        kept_values_ = tuple(row.fields.get(name) for name in columns.keep)
        out.append(TextPair(left_ids[at], right_ids[at], lefts[at], rights[at], kept_values_, row.source))
        at += 1
    return out


def check_read_items(items: Iterable[SourcedRow | DeadLetter], columns: PairColumns, kept: Sequence[pa.Field] = (),
                     batch_rows: int = 4096) -> Iterator[tuple[SourcedRow | DeadLetter, TextPair | DeadLetter | None]]:
    """What :func:`pipeline.readers.read_rows` yields -> (item, its pair or the pair's dead letter),
    in order; None for a reader's own dead letter. Pairs are checked ``batch_rows`` at a time
    (:func:`check_pair_rows`), for the jobs that read their pairs into memory."""
    held: list[SourcedRow | DeadLetter] = []

    def checked() -> Iterator[tuple[SourcedRow | DeadLetter, TextPair | DeadLetter | None]]:
        results = iter(check_pair_rows([i for i in held if not isinstance(i, DeadLetter)], columns, kept))
        for item in held:
            yield item, None if isinstance(item, DeadLetter) else next(results)

    for item in items:
        held.append(item)
        if len(held) >= batch_rows:
            yield from checked()
            held = []
    yield from checked()
