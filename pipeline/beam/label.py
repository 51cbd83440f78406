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

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadFromParquetBatched, WriteToParquetBatched

from encoders.threads import ThreadPlan
from pipeline.beam.batching import SortWindowDoFn
from pipeline.datasets import pair_key
from pipeline.dead_letters import DeadLetter
from pipeline.beam.counters import counter, dead_letter_counter, report_threads
from pipeline.beam.encode import DEAD_LETTER_TAG
from pipeline.pair_checks import check_pair_rows
from pipeline.pairs import PairColumns, TextPair, kept_column_values
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

def relabel(table: pa.Table, schema: pa.Schema, temperature: float) -> pa.Table:
    """Previous distillation rows -> rows of ``schema``, soft labels recomputed from their stored
    logits at ``temperature`` (the previous run may have used another T)."""
    from encoders.teacher import soft_labels

    if table.num_rows == 0:
        return schema.empty_table()
    columns = {name: table.column(name) for name in schema.names if name in table.column_names}
    if "logit" in schema.names:
        logits = table.column("logit").to_numpy(zero_copy_only=False).astype(np.float32)[:, None]
        columns["soft_label"] = pa.array(soft_labels(logits, temperature), pa.float32())
    else:
        logits = np.array(table.column("logits").to_pylist(), dtype=np.float32).reshape(table.num_rows, -1)
        columns["soft_labels"] = pa.array(list(soft_labels(logits, temperature)), pa.list_(pa.float32()))
    return pa.Table.from_pydict({name: columns[name] for name in schema.names}, schema=schema)


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

@dataclass(frozen=True)
class LabelSettings:
    """How the teacher runs on workers."""
    teacher: str
    fingerprint: str
    schema: pa.Schema
    keep: tuple[str, ...] = ()
    temperature: float = 1.0
    batch_size: int = 64
    device: str = "auto"
    max_length: int | None = None
    threads: ThreadPlan = ThreadPlan()   # torch threads per worker process (encoders/threads.py)
    # Pairs tokenized and sorted by length together before being cut into batches; larger
    # windows pad less, at the cost of holding more pairs in memory.
    sort_window: int = 4096


def load_labeling_teacher(settings: LabelSettings):
    """The teacher as the job runs it (``--max-length`` applied), checked against the fingerprint
    taken when the job started, so every worker labels with the very same model."""
    from encoders.teacher import load_teacher
    from pipeline.models import pinned_model_load
    from pipeline.errors import InputChanged

    with pinned_model_load():
        teacher = load_teacher(settings.teacher)
    if settings.max_length is not None:
        teacher.task = teacher.task.replace(max_length=settings.max_length)
    if teacher.fingerprint != settings.fingerprint:
        raise InputChanged(f"teacher {settings.teacher!r} changed while the job ran (fingerprint "
                           f"{teacher.fingerprint[:16]} on this worker, {settings.fingerprint[:16]} at the start); "
                           "rerun the job once the teacher stays put")
    return teacher


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
        self._fields = {f.name: f for f in self._settings.schema}

    def flush(self, pairs: list[TextPair]) -> pa.Table:
        from encoders.teacher import soft_labels

        report_threads("teacher")
        tokenized = self._teacher.tokenize([p.left for p in pairs], [p.right for p in pairs])
        # Counted batch by batch: a window of thousands of pairs takes the teacher minutes.
        logits = self._teacher.predict(tokenized, self._settings.batch_size,
                                       on_batch=self.labeled.inc)                    # (P, C) float32
        soft = soft_labels(logits, self._settings.temperature)                       # (P,) or (P, C)
        truncated = [t.truncated for t in tokenized]
        self.truncated.inc(sum(truncated))
        data: dict[str, Any] = {"left_id": [p.left_id for p in pairs], "right_id": [p.right_id for p in pairs],
                                "left": [p.left for p in pairs], "right": [p.right for p in pairs]}
        if logits.shape[1] == 1:
            data["logit"], data["soft_label"] = logits[:, 0], soft
        else:
            data["logits"], data["soft_labels"] = list(logits), list(soft)
        data["truncated"] = truncated
        for position, name in enumerate(self._settings.keep):
            data[name] = kept_column_values([p.kept[position] for p in pairs], self._fields[name])
        return pa.Table.from_pydict(data, schema=self._settings.schema)


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
