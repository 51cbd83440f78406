"""The pair contract: which columns a pair is read from, what makes a pair unusable and why, and
what type each kept column has. Every job that reads pairs uses it (``score_pairs`` on Beam and
Spark, ``label_pairs``, ``train_teacher``, ``train_student``, ``evaluate``); the columnar
validator that applies it to a batch is :mod:`pipeline.pair_checks`.

A pair is read in one of three modes (:class:`PairColumns`):

============== ============================== ============================================ =======================
mode           columns                        ids                                          used by
============== ============================== ============================================ =======================
texts          ``left``, ``right`` texts      each text's content hash (``text_id``)       score_pairs, teachers
ids            ``left_id``, ``right_id``      as given; the texts are in text tables       score_pairs
texts_and_ids  both texts and ids             as given, beside their texts                 label_pairs
============== ============================== ============================================ =======================

Each side is checked column by column, the checks of a column in the order below, and the first
problem of the row (left side before right, then kept columns) is its dead-letter reason, with the
side in front (``left_empty_text``, ``right_null_id``; the reasons are ``pipeline.dead_letters``'
``REASON_*``):

* a **text** column: ``null_text`` (null or absent), ``non_string_text``, ``empty_text`` (no visible
  character: :func:`pipeline.text_checks.is_blank`), as stage one checks a text;
* an **id** column in ids mode, checked as the text it stands for: ``null_id``, ``non_string_id``
  (integers are ids, in their decimal text: :func:`canonical_id`), ``empty_id``;
* an **id** column beside its text (texts_and_ids), checked as a text table checks its ids
  (:func:`pipeline.text_checks.row_id`): ``null_id``, ``invalid_id`` (not a string or integer, or
  no visible character);
* a **kept** column (``--keep-cols``): ``kept_column_type`` when its value does not fit the type
  :func:`kept_fields` decided before the run.

Stage two adds ``left_text_missing`` / ``right_text_missing`` for an id no store holds
(:func:`pipeline.scoring_core.missing_letters`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from encoders.config import SIDES
from pipeline import dead_letters as dl
from pipeline.errors import FlagError

if TYPE_CHECKING:
    from pipeline.readers import InputFile

TEXTS, IDS, TEXTS_AND_IDS = "texts", "ids", "texts_and_ids"

# The checks of each kind of side column, in the order they are applied (see the module docstring).
TEXT, ID, GIVEN_ID = "text", "id", "given_id"
SIDE_CHECKS = {
    TEXT: (dl.REASON_NULL_TEXT, dl.REASON_NON_STRING_TEXT, dl.REASON_EMPTY_TEXT),
    ID: (dl.REASON_NULL_ID, dl.REASON_NON_STRING_ID, dl.REASON_EMPTY_ID),
    GIVEN_ID: (dl.REASON_NULL_ID, dl.REASON_INVALID_ID),
}


@dataclass(frozen=True)
class PairColumns:
    """Where a pair's two sides are (the mode follows from which columns are given; see the
    module docstring): text columns ``left``/``right``, id columns ``left_id``/``right_id``, or
    both; with neither, the texts are in ``left`` and ``right``. ``keep``: columns passed through
    to the output."""
    left: str | None = None
    right: str | None = None
    left_id: str | None = None
    right_id: str | None = None
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.left_id is None) != (self.right_id is None):
            raise FlagError("give both --left-id-col and --right-id-col, or neither "
                             f"(got left {self.left_id!r}, right {self.right_id!r})")
        if (self.left is None) != (self.right is None):
            raise FlagError(f"give both --left-col and --right-col (got left {self.left!r}, right {self.right!r})")
        if self.left is None and self.left_id is None:
            object.__setattr__(self, "left", "left")
            object.__setattr__(self, "right", "right")
        if self.left is not None and self.left == self.right:
            raise FlagError(f"--left-col and --right-col are both {self.left!r}: give two different columns")
        object.__setattr__(self, "keep", tuple(self.keep))

    @classmethod
    def for_scoring(cls, left: str, right: str, left_id: str | None, right_id: str | None,
                    keep: Sequence[str] = ()) -> PairColumns:
        """score_pairs' flags -> its columns: ids mode when id columns are given (the text columns'
        flags then do not apply: the texts come from text tables), texts mode otherwise."""
        if left_id is not None or right_id is not None:
            return cls(None, None, left_id, right_id, tuple(keep))
        return cls(left, right, None, None, tuple(keep))

    @property
    def mode(self) -> str:
        if self.left_id is None:
            return TEXTS
        return IDS if self.left is None else TEXTS_AND_IDS

    @property
    def id_mode(self) -> bool:
        """Ids mode: the pairs name ids whose texts come from text tables."""
        return self.mode == IDS

    @property
    def has_texts(self) -> bool:
        return self.left is not None

    def side_columns(self, side: str) -> list[tuple[str, str]]:
        """(kind, column) checked for ``side``, in order: its text column (TEXT), its id column
        (ID in ids mode, GIVEN_ID beside a text)."""
        text, id_ = (self.left, self.left_id) if side == "left" else (self.right, self.right_id)
        if text is None:
            return [(ID, id_)]
        return [(TEXT, text)] + ([(GIVEN_ID, id_)] if id_ is not None else [])

    def id_columns(self) -> set[str]:
        """Columns read as ids (integers accepted in their decimal text), not as texts."""
        texts = {self.left, self.right}
        return {c for side in SIDES for kind, c in self.side_columns(side) if kind != TEXT and c not in texts}

    def required(self) -> list[str]:
        """The side columns every pair file must have (texts and/or ids), each once."""
        return list(dict.fromkeys(c for c in (self.left, self.right, self.left_id, self.right_id) if c is not None))

    def needed(self) -> list[str]:
        """Every column the job reads from a pair file, each once: the side columns and ``keep``."""
        return list(dict.fromkeys([*self.required(), *self.keep]))


# --------------------------------------------------------------------------- reasons as codes

# Reason codes of a columnar check: 0 is a good row, then kept_column_type, then each side's checks.
_CODES: list[tuple[str, str, str] | None] = [None, ("", "", dl.REASON_KEPT_COLUMN_TYPE)] + [
    (side, kind, check) for side in SIDES for kind, checks in SIDE_CHECKS.items() for check in checks]
KEPT_COLUMN_TYPE_CODE = 1


def reason_code(side: str, kind: str, check: str) -> int:
    return _CODES.index((side, kind, check))


def reason_name(code: int) -> str:
    """The dead-letter reason of a code (``left_null_text``, ``kept_column_type``; "" for a good row)."""
    if code == 0:
        return ""
    side, _, check = _CODES[code]
    return f"{side}_{check}" if side else check


def code_check(code: int) -> tuple[str, str, str]:
    """(side, kind of column, check) of a nonzero code; side and kind are "" for a kept column."""
    return _CODES[code]


# --------------------------------------------------------------------------- good pairs

class TextPair(NamedTuple):
    """A pair whose two texts are usable, with their ids, the kept values and where it came from."""
    left_id: str
    right_id: str
    left: str
    right: str
    kept: tuple
    source: str


def canonical_id(value: Any) -> str | None:
    """An id value -> the one string form every table compares it in, or None when it is no id.

    Strings are ids as they are; integers (not bools) are their decimal text, as a text table's
    integer ids become (:func:`pipeline.text_checks.row_id`), so ``42`` in a JSONL or Parquet
    pair table meets ``42`` or ``"42"`` in a text table."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


# --------------------------------------------------------------------------- kept columns

def kept_fields(files: Sequence[InputFile], names: Sequence[str]) -> list[pa.Field]:
    """The output fields of the ``--keep-cols``, decided once, before the pipeline starts.

    * Parquet columns keep their type.
    * JSONL columns take JSON's type, judged from the file's first JSON objects (the first
      1000 lines, as :func:`pipeline.readers.check_columns` probes): only integers -> int64;
      integers and floats -> float64; only booleans -> bool; only strings -> string; objects,
      arrays or a mix of kinds -> string holding each value's JSON text (the documented
      fallback). A column that is null or absent in every probed object does not decide.
    * CSV/TSV columns are strings.

    Every input must agree; a later value that does not fit the decided type is dead-lettered
    (``kept_column_type``) by the pipelines, never changed silently.

    Raises:
        InputError: two inputs that give a kept column different types, naming both files.
    """
    # The readers (and Beam's FileSystems) are imported here, where inputs are read: the pair
    # contract itself is needed without them (the scoring core, benchmarks/gpu_score.py).
    from pipeline.readers import InputError, open_raw, parquet_file

    types: dict[str, tuple[pa.DataType, str]] = {}
    for file in files:
        if file.format == "parquet":
            with open_raw(file.path) as raw:
                schema = parquet_file(raw, file.path).schema_arrow
            found = {name: schema.field(name).type for name in names if name in schema.names}
        elif file.format == "jsonl":
            found = _jsonl_types(file, names)
        else:
            found = {name: pa.string() for name in names}
        for name, kind in found.items():
            seen = types.setdefault(name, (kind, file.path))
            if seen[0] != kind:
                raise InputError(f"kept column {name!r} is {seen[0]} in {seen[1]} but {kind} in {file.path}; "
                                 "convert the inputs to one type, or do not keep the column")
    return [pa.field(name, types.get(name, (pa.string(),))[0]) for name in names]


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -2 ** 63 <= value < 2 ** 63 else "other"
    if isinstance(value, float):
        return "float"
    return "str" if isinstance(value, str) else "other"


def _jsonl_types(file: InputFile, names: Sequence[str]) -> dict[str, pa.DataType]:
    """Kept columns' types from a JSONL file's first objects; columns never seen with a value are left out."""
    from pipeline.readers import JSONL_PROBE_LINES, SourcedRow, read_rows

    kinds: dict[str, set[str]] = {name: set() for name in names}
    for number, item in enumerate(read_rows(file), start=1):
        if number > JSONL_PROBE_LINES:
            break
        if isinstance(item, SourcedRow):
            for name in names:
                value = item.fields.get(name)
                if value is not None:
                    kinds[name].add(_json_kind(value))
    decided = {}
    for name, seen in kinds.items():
        if not seen:
            continue
        decided[name] = {frozenset({"int"}): pa.int64(), frozenset({"int", "float"}): pa.float64(),
                         frozenset({"float"}): pa.float64(), frozenset({"bool"}): pa.bool_()
                         }.get(frozenset(seen), pa.string())
    return decided


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
    another JSON type (misfit: null here, dead-lettered as ``kept_column_type`` by
    :func:`pipeline.pair_checks.validate_pairs`) rather than change it.
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


def kept_column_values(values: list[Any], field: pa.Field) -> list[Any]:
    """Values of one kept column of validated pairs, made to fit its field: JSON values in a string
    column become their JSON text. A value that does not fit a number or bool column raises
    InputError (the validator dead-letters such rows before they get here)."""
    if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
        return [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values]
    _, misfit = kept_values(values, field)
    if misfit is not None:
        from pipeline.readers import InputError

        bad = values[int(misfit.argmax())]
        raise InputError(f"kept column {field.name!r} holds a {type(bad).__name__} ({bad!r:.80}) but is "
                         f"{field.type} in the output, as decided from the inputs' first rows")
    return values
