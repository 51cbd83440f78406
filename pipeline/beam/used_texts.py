"""Only the texts the pairs use: a semi-join of a text table against the ids of the pairs, in the
pipeline.

A text table may be a whole catalogue (millions of rows) for a night's pairs that name a few
thousand of its ids; encoding it all would cost hours. The ids the pairs use are never collected
in the launching process (at 10^9 pairs they would not fit): each pair batch emits its distinct
ids, keyed ``(id, True)``, and the text rows are keyed by their id; a ``CoGroupByKey`` per id
keeps the rows of ids some pair names. Per id, the pair side holds at most one marker per pair
batch that names it.

Every text row read ends in one place (counted under the side's prefix, e.g. ``left_texts.``):

- ``rows_unused``: a row whose id no pair names. Not a dead letter: nothing is wrong with it,
  tonight's pairs just do not need it (its text is not even checked);
- otherwise it goes on to stage one's rules (``DedupeTexts``): kept, a duplicate of a kept row,
  or a dead letter. A row whose id no pair could ever name (null, not a string or an integer,
  blank) goes there too, and is dead-lettered with its reason as before.
"""
from __future__ import annotations

from typing import Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.beam.counters import counter
from pipeline.readers import SourcedRow
from pipeline.text_checks import row_id

UNKEYED = "unkeyed"


class _KeyByIdDoFn(beam.DoFn):
    """SourcedRow -> (id, row); rows without an id a pair could name to ``unkeyed``."""

    def __init__(self, id_column: str):
        self._column = id_column

    def process(self, row: SourcedRow) -> Iterator:
        id_ = row_id(row, self._column)
        if isinstance(id_, tuple):
            yield beam.pvalue.TaggedOutput(UNKEYED, row)
        else:
            yield id_, row


def _ids_used(side: str):
    def ids(pairs: pa.Table) -> Iterator[tuple[str, bool]]:
        """A prepared pair table -> (id, True) for each distinct ``{side}_id`` of it."""
        for id_ in pc.unique(pairs.column(f"{side}_id")).to_pylist():
            yield id_, True
    return ids


class _KeepUsedDoFn(beam.DoFn):
    """(id, {rows, used}) -> the id's rows when some pair uses it; counts the others."""

    def __init__(self, prefix: str):
        self.unused = counter("rows_unused", prefix)

    def process(self, element) -> Iterator[SourcedRow]:
        _, grouped = element
        if any(grouped["used"]):
            yield from grouped["rows"]
        else:
            self.unused.inc(sum(1 for _ in grouped["rows"]))


class UsedTextRows(beam.PTransform):
    """SourcedRow of one side's text tables -> the rows whose id a pair of ``pairs`` names
    (prepared pair tables, ``{side}_id`` column), plus the rows without a usable id (left to
    stage one's rules). See the module docstring."""

    def __init__(self, side: str, id_column: str, pairs, counter_prefix: str):
        super().__init__()
        self._side = side
        self._column = id_column
        self._pairs = pairs
        self._prefix = counter_prefix

    def expand(self, rows):
        keyed = rows | "KeyRowsById" >> beam.ParDo(_KeyByIdDoFn(self._column)).with_outputs(UNKEYED, main="keyed")
        used = self._pairs | "IdsPairsUse" >> beam.FlatMap(_ids_used(self._side))
        kept = ({"rows": keyed.keyed, "used": used}
                | "JoinIdsPairsUse" >> beam.CoGroupByKey()
                | "KeepUsedRows" >> beam.ParDo(_KeepUsedDoFn(self._prefix)))
        return (kept, keyed[UNKEYED]) | "UsedAndUnkeyed" >> beam.Flatten()
