"""Only the texts the pairs use: a semi-join of a text table against the ids of the pairs, in the
pipeline.

A text table may be a whole catalogue (millions of rows) for a night's pairs that name a few
thousand of its ids; encoding it all would cost hours. The ids the pairs use are never collected
in the launching process (at 10^9 pairs they would not fit): each bundle of pair batches emits its
distinct ids once, keyed ``(id, True)``, and the text rows are keyed by their id; a
``CoGroupByKey`` per id keeps the rows of ids some pair names. Per id, the pair side holds at most
one marker per bundle that names it: a marker per pair *batch* made the shuffle carry (batches x
distinct ids) elements, more than the pairs themselves when a batch names most of a small catalogue
(docs/benchmarks.md, the data path).

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
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

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


class _IdsUsedDoFn(beam.DoFn):
    """Prepared pair tables (``{side}_id`` column) -> (id, True) once for each distinct id of a
    bundle. The distinct ids of each table are merged into a running set of the bundle's (Arrow
    arrays, deduplicated again whenever they outgrow ``merge_at`` values), so memory is the
    bundle's distinct ids, not its pairs."""

    def __init__(self, side: str, merge_at: int = 1 << 20):
        self._column = f"{side}_id"
        self._merge_at = merge_at

    def start_bundle(self):
        self._parts: list[pa.Array] = []
        self._held = 0

    def process(self, pairs: pa.Table) -> Iterator:
        distinct = pc.unique(pairs.column(self._column))
        if isinstance(distinct, pa.ChunkedArray):
            distinct = distinct.combine_chunks()
        self._parts.append(distinct)
        self._held += len(distinct)
        if self._held > self._merge_at:
            self._parts = [self._distinct()]
            self._held = len(self._parts[0])
        return iter(())

    def finish_bundle(self):
        if not self._parts:
            return
        ids, self._parts, self._held = self._distinct(), [], 0
        for id_ in ids.to_pylist():
            # finish_bundle has no input element to inherit a window from: say it is the global one.
            yield WindowedValue((id_, True), GlobalWindow().max_timestamp(), [GlobalWindow()])

    def _distinct(self) -> pa.Array:
        if len(self._parts) == 1:
            return pc.unique(self._parts[0])
        kind = self._parts[0].type   # ids from different files may be string and large_string
        return pc.unique(pa.concat_arrays([part.cast(kind) for part in self._parts]))


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
        used = self._pairs | "IdsPairsUse" >> beam.ParDo(_IdsUsedDoFn(self._side))
        kept = ({"rows": keyed.keyed, "used": used}
                | "JoinIdsPairsUse" >> beam.CoGroupByKey()
                | "KeepUsedRows" >> beam.ParDo(_KeepUsedDoFn(self._prefix)))
        return (kept, keyed[UNKEYED]) | "UsedAndUnkeyed" >> beam.Flatten()
