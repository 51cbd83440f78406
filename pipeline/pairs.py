"""Pairs of texts as the teacher jobs read them: two text columns, optional id columns, and
columns passed through to the output.

Each side is checked with stage one's own rules (:func:`pipeline.beam.encode.extract_text`), so a pair
is refused for exactly the reasons a text is, with the side in front of the reason
(``left_empty_text``, ``right_null_text``, ``left_invalid_id``), as stage two names them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import pyarrow as pa

from encoders.config import SIDES
from pipeline.dead_letters import DeadLetter
from pipeline.readers import JSONL_PROBE_LINES, InputError, InputFile, SourcedRow, open_raw, parquet_file, read_rows
from pipeline.scoring_core import REASON_KEPT_COLUMN_TYPE, PairColumns, canonical_id, kept_values
from pipeline.text_checks import TextColumns, extract_text
from pipeline.errors import FlagError


@dataclass(frozen=True)
class TextPairColumns:
    """Which fields of a row hold the two texts, their ids (optional: without them an id is the
    text's content hash, :func:`pipeline.text_ids.text_id`) and the columns to keep."""
    left: str = "left"
    right: str = "right"
    left_id: str | None = None
    right_id: str | None = None
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.left_id is None) != (self.right_id is None):
            raise FlagError("give both --left-id-col and --right-id-col, or neither "
                            f"(got left {self.left_id!r}, right {self.right_id!r})")
        if self.left == self.right:
            raise FlagError(f"--left-col and --right-col are both {self.left!r}: give two different columns")

    def required(self) -> list[str]:
        """Columns every input file must have."""
        names = [self.left, self.right, self.left_id, self.right_id, *self.keep]
        return list(dict.fromkeys(n for n in names if n is not None))


class TextPair(NamedTuple):
    """A pair whose two texts are usable, with their ids, the kept values and where it came from."""
    left_id: str
    right_id: str
    left: str
    right: str
    kept: tuple
    source: str


def extract_text_pair(row: SourcedRow, columns: TextPairColumns,
                      kept: Sequence[pa.Field] = ()) -> TextPair | DeadLetter:
    """Validate one row's two texts (and ids) -> the TextPair, or the first side's reason it is
    unusable; with ``kept`` (:func:`kept_fields`), a kept value that does not fit its decided
    type is refused too (``kept_column_type``), as the scoring core refuses it."""
    sides = []
    for side, text_col, id_col in (("left", columns.left, columns.left_id),
                                   ("right", columns.right, columns.right_id)):
        result = extract_text(row, TextColumns(text=text_col, id=id_col))
        if isinstance(result, DeadLetter):
            return DeadLetter(f"{side}_{result.reason}", f"{side} side: {result.detail}", row.source, row.fields)
        sides.append(result)
    for field in kept:
        value = row.fields.get(field.name)
        if kept_values([value], field)[1] is not None:
            return DeadLetter(REASON_KEPT_COLUMN_TYPE,
                              f"kept column {field.name!r} holds a {type(value).__name__} ({value!r:.80}) but is "
                              f"{field.type} in the output, as decided from the inputs' first rows before the run",
                              row.source, row.fields)
    kept = tuple(row.fields.get(name) for name in columns.keep)
    return TextPair(sides[0].id, sides[1].id, sides[0].text, sides[1].text, kept, row.source)


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


def kept_column_values(values: list[Any], field: pa.Field) -> list[Any]:
    """Values of one kept column, made to fit its field: JSON values in a string column become
    their JSON text. A value that does not fit a number or bool column raises InputError (the
    scoring core dead-letters such rows instead: :func:`pipeline.scoring_core.kept_values`)."""
    if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
        return [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values]
    _, misfit = kept_values(values, field)
    if misfit is not None:
        bad = values[int(misfit.argmax())]
        raise InputError(f"kept column {field.name!r} holds a {type(bad).__name__} ({bad!r:.80}) but is "
                         f"{field.type} in the output, as decided from the inputs' first rows")
    return values


class Pair(NamedTuple):
    """One pair, validated one row at a time (the reference the columnar core must agree with)."""
    left_id: str
    right_id: str
    kept: tuple
    row: SourcedRow


def extract_pair(row: SourcedRow, columns: PairColumns) -> tuple[Pair, str | None, str | None] | DeadLetter:
    """Validate one pair row -> (Pair, left text, right text) (texts None in id mode), or why not.

    Reasons are the stage-one ones with the side in front (``left_empty_text``, ``right_null_id``).
    The pipeline validates whole batches with :func:`pipeline.scoring_core.validate_pairs`, which
    gives the same reasons; this per-row form is the reference its tests compare against.
    """
    ids, texts = [], []
    for side in SIDES:
        if columns.id_mode:
            id_col = columns.left_id if side == "left" else columns.right_id
            value = row.fields.get(id_col)
            if not isinstance(value, str) and canonical_id(value) is not None:
                # An integer id: its canonical text, as text tables give it.
                ids.append(canonical_id(value))
                texts.append(None)
                continue
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
