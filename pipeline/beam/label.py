"""Teacher labeling as Beam transforms: pairs -> (skip pairs already labeled) -> teacher -> distillation rows.

Every pair read ends in exactly one place, counted by a Beam counter: labeled
(``pairs_labeled``), skipped because ``--previous`` already holds it (``pairs_skipped_labeled``),
or a dead letter. Rows of the previous distillation set are copied through
(``previous_rows_copied``), so the new output is the complete set.

The distillation set (``DIR/part-*.parquet``, zstd), one row per labeled pair:

=============== ============== ===================================================================
column          type           meaning
=============== ============== ===================================================================
left_id         string         the id column's value, or the text's content hash (text_id)
right_id        string         likewise
left, right     string         the texts the teacher read
logit           float32        one-output teachers: the raw logit z
soft_label      float32        ``sigmoid(z / T)``
logits          list<float32>  k-class teachers instead: the k raw logits
soft_labels     list<float32>  ``softmax(logits / T)``
truncated       bool           the pair was longer than the teacher's max length and was cut
(kept columns)                 ``--keep-cols``, passed through
=============== ============== ===================================================================
"""
from __future__ import annotations

from typing import Iterator, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadFromParquetBatched, WriteToParquetBatched

from pipeline.beam.batching import SortWindowDoFn
from pipeline.datasets import pair_key
from pipeline.dead_letters import DeadLetter
from pipeline.beam.counters import counter, dead_letter_counter, report_threads
from pipeline.beam.encode import DEAD_LETTER_TAG
from pipeline.pair_checks import check_pair_rows
from pipeline.pairs import PairColumns, TextPair
# LabelSettings and load_labeling_teacher: re-exported for the job (and tests that stand in a teacher).
from pipeline.labeling import LabelSettings, label_window, load_labeling_teacher, relabel  # noqa: F401
from pipeline.readers import SourcedRow
from pipeline.store import COMPRESSION, STORE_FILE_PREFIX, STORE_FILE_SUFFIX

# --------------------------------------------------------------------------- pairs

class _CheckPairsDoFn(beam.DoFn):
    """A batch of SourcedRows -> a TextPair per usable row; the others to ``dead_letter``, with the
    pair contract's reasons (checked as one columnar batch: :func:`pipeline.pair_checks.check_pair_rows`)."""

    def __init__(self, columns: PairColumns, kept: Sequence[pa.Field] = ()):
        self._columns = columns
        self._kept = list(kept)

    def process(self, rows: list[SourcedRow]) -> Iterator:
        for result in check_pair_rows(rows, self._columns, self._kept):
            if isinstance(result, DeadLetter):
                dead_letter_counter(result.reason).inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, result)
            else:
                yield result


class ExtractPairs(beam.PTransform):
    """SourcedRow -> TextPair. Outputs: main (``pairs``), ``dead_letter``. Rows are checked in
    batches of up to ``batch_rows``."""

    def __init__(self, columns: PairColumns, kept: Sequence[pa.Field] = (), batch_rows: int = 4096):
        super().__init__()
        self._columns = columns
        self._kept = kept
        self._batch_rows = batch_rows

    def expand(self, rows):
        return (rows
                | "BatchRows" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._batch_rows)
                | "CheckPairs" >> beam.ParDo(_CheckPairsDoFn(self._columns, self._kept)).with_outputs(
                    DEAD_LETTER_TAG, main="pairs"))


class _DropLabeledDoFn(beam.DoFn):
    """(key, {"new": [TextPair], "previous": [present]}) -> the new pairs the previous set lacks."""

    def __init__(self):
        self.skipped = counter("pairs_skipped_labeled")

    def process(self, element) -> Iterator[TextPair]:
        _, grouped = element
        new = list(grouped["new"])
        if any(True for _ in grouped["previous"]):
            self.skipped.inc(len(new))
            return
        yield from new


class SkipLabeled(beam.PTransform):
    """TextPair -> the pairs whose (left text, right text) is not among ``previous_keys``
    (a PCollection of :func:`pair_key`). A shuffle join, so the previous set never has to fit in
    one worker's memory."""

    def __init__(self, previous_keys):
        super().__init__()
        self._previous_keys = previous_keys

    def expand(self, pairs):
        new = pairs | "KeyNewPairs" >> beam.Map(lambda p: (pair_key(p.left, p.right), p))
        old = self._previous_keys | "MarkPrevious" >> beam.Map(lambda key: (key, True))
        return ({"new": new, "previous": old}
                | "JoinWithPrevious" >> beam.CoGroupByKey()
                | "DropLabeled" >> beam.ParDo(_DropLabeledDoFn()))


# --------------------------------------------------------------------------- previous set

class ReadPrevious(beam.PTransform):
    """A previous distillation set -> outputs ``keys`` (pair_key of each row) and ``rows`` (its tables
    with soft labels at this run's temperature, to be copied through)."""

    def __init__(self, pattern: str, schema: pa.Schema, temperature: float):
        super().__init__()
        self._pattern = pattern
        self._schema = schema
        self._temperature = temperature

    def expand(self, pbegin):
        copied = counter("previous_rows_copied")
        schema, temperature = self._schema, self._temperature

        def copy(table: pa.Table) -> pa.Table:
            copied.inc(table.num_rows)
            return relabel(table, schema, temperature)

        def keys(table: pa.Table) -> Iterator[str]:
            for left, right in zip(table.column("left").to_pylist(), table.column("right").to_pylist()):
                yield pair_key(left, right)

        tables = pbegin | "ReadPreviousParquet" >> ReadFromParquetBatched(self._pattern)
        return {"keys": tables | "PreviousKeys" >> beam.FlatMap(keys),
                "rows": tables | "CopyPrevious" >> beam.Map(copy)}


# --------------------------------------------------------------------------- labeling

class _LabelPairsDoFn(SortWindowDoFn):
    """TextPair -> pyarrow Tables of distillation rows, one per sort window.

    The teacher loads once per worker in ``setup``. Pairs are buffered, tokenized together and
    run sorted by token count (``CrossEncoder.predict``), so each batch pads only to its own
    longest pair.
    """

    def __init__(self, settings: LabelSettings):
        super().__init__(settings.sort_window)
        self._settings = settings
        self.labeled = counter("pairs_labeled")
        self.truncated = counter("pairs_truncated")

    def setup(self):
        self._settings.threads.apply()
        teacher = load_labeling_teacher(self._settings)
        from encoders.device import pick_device
        self._teacher = teacher.to(pick_device(self._settings.device)).eval()

    def flush(self, pairs: list[TextPair]) -> pa.Table:
        report_threads("teacher")
        table, truncated = label_window(self._teacher, pairs, self._settings, on_batch=self.labeled.inc)
        self.truncated.inc(truncated)
        return table


class LabelPairs(beam.PTransform):
    """TextPair -> pyarrow Tables of distillation rows (schema: see the module docstring)."""

    def __init__(self, settings: LabelSettings):
        super().__init__()
        self._settings = settings

    def expand(self, pairs):
        return pairs | "TeacherByLength" >> beam.ParDo(_LabelPairsDoFn(self._settings))


class WriteDistillationSet(beam.PTransform):
    """pyarrow Tables -> ``DIR/part-*.parquet`` (zstd)."""

    def __init__(self, directory: str, schema: pa.Schema):
        super().__init__()
        self._directory = directory
        self._schema = schema

    def expand(self, tables):
        return tables | "WriteDistillationParquet" >> WriteToParquetBatched(
            FileSystems.join(self._directory, STORE_FILE_PREFIX), schema=self._schema,
            codec=COMPRESSION, file_name_suffix=STORE_FILE_SUFFIX)
