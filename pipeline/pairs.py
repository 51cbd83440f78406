"""Pairs of texts as the teacher jobs read them: two text columns, optional id columns, and
columns passed through to the output.

Each side is checked with stage one's own rules (:func:`pipeline.encode.extract_text`), so a pair
is refused for exactly the reasons a text is, with the side in front of the reason
(``left_empty_text``, ``right_null_text``, ``left_invalid_id``), as stage two names them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import pyarrow as pa

from pipeline.dead_letters import DeadLetter
from pipeline.encode import TextColumns, extract_text
from pipeline.readers import InputError, InputFile, SourcedRow, open_raw, parquet_file

SIDES = ("left", "right")


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
            raise ValueError("give both --left-id-col and --right-id-col, or neither "
                             f"(got left {self.left_id!r}, right {self.right_id!r})")
        if self.left == self.right:
            raise ValueError(f"--left-col and --right-col are both {self.left!r}: give two different columns")

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


def extract_text_pair(row: SourcedRow, columns: TextPairColumns) -> TextPair | DeadLetter:
    """Validate one row's two texts (and ids) -> the TextPair, or the first side's reason it is unusable."""
    sides = []
    for side, text_col, id_col in (("left", columns.left, columns.left_id),
                                   ("right", columns.right, columns.right_id)):
        result = extract_text(row, TextColumns(text=text_col, id=id_col))
        if isinstance(result, DeadLetter):
            return DeadLetter(f"{side}_{result.reason}", f"{side} side: {result.detail}", row.source, row.fields)
        sides.append(result)
    kept = tuple(row.fields.get(name) for name in columns.keep)
    return TextPair(sides[0].id, sides[1].id, sides[0].text, sides[1].text, kept, row.source)


def kept_fields(files: Sequence[InputFile], names: Sequence[str]) -> list[pa.Field]:
    """The output fields of the ``--keep-cols``, decided before the pipeline starts.

    Parquet columns keep their type (every Parquet input must agree on it); columns of text
    formats (CSV, TSV, JSONL) are strings, and JSON values that are not strings are written as
    their JSON text (:func:`kept_column_values`) rather than lost.

    Raises:
        InputError: Parquet inputs that give a kept column different types.
    """
    types: dict[str, tuple[pa.DataType, str]] = {}
    for file in files:
        if file.format == "parquet":
            with open_raw(file.path) as raw:
                schema = parquet_file(raw, file.path).schema_arrow
            found = {name: schema.field(name).type for name in names if name in schema.names}
        else:
            found = {}
        for name in names:
            kind = found.get(name, pa.string())
            seen = types.setdefault(name, (kind, file.path))
            if seen[0] != kind:
                raise InputError(f"kept column {name!r} is {seen[0]} in {seen[1]} but {kind} in {file.path}; "
                                 "convert the inputs to one type, or do not keep the column")
    return [pa.field(name, types[name][0]) for name in names]


def kept_column_values(values: list[Any], field: pa.Field) -> list[Any]:
    """Values of one kept column, made to fit its field: JSON values in a string column become
    their JSON text."""
    if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
        return [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values]
    return values
