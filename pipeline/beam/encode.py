"""Stage one as Beam transforms: read rows -> texts -> dedupe -> encode by length -> store.

The rules live in plain functions (the text and id rules in ``pipeline/text_checks.py``), the
encoder is loaded through its model handler (``pipeline/beam/models.py``), and the composite
transforms below only wire them together. Every input row ends in exactly one place, counted by a Beam counter:
kept (one store row per unique id), a duplicate of a kept row, or a dead letter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import apache_beam as beam
from apache_beam.utils import shared
import pyarrow as pa

from encoders.threads import ThreadPlan
from pipeline.beam.counters import counter, dead_letter_counter, report_threads
from pipeline.beam.models import EncoderHandler, acquire
from pipeline.beam.batching import SortWindowDoFn
from pipeline.dead_letters import DeadLetter
from pipeline.readers import InputFile, SourcedRow, read_rows
from pipeline.models import encode_unique_texts
from pipeline.store import StoreLayout
from pipeline.text_checks import TextColumns, UniqueText, extract_text, resolve_id
from pipeline.text_ids import text_id

DEAD_LETTER_TAG = "dead_letter"


# --------------------------------------------------------------------------- reading

class _ReadFileDoFn(beam.DoFn):
    """InputFile -> SourcedRow, with malformed records to the dead-letter output."""

    def __init__(self, prefix: str):
        self._prefix = prefix
        self.rows_read = counter("rows_read", prefix)

    def process(self, file: InputFile) -> Iterator:
        for item in read_rows(file):
            self.rows_read.inc()
            if isinstance(item, DeadLetter):
                dead_letter_counter(item.reason, self._prefix).inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, item)
            else:
                yield item


class ReadRows(beam.PTransform):
    """Read every row of the input files. Outputs: main (SourcedRow), ``dead_letter``.

    Files are read one per element after a reshuffle, so several files read in parallel.
    """

    def __init__(self, files: Sequence[InputFile], counter_prefix: str = ""):
        super().__init__()
        self._files = list(files)
        self._prefix = counter_prefix

    def expand(self, pbegin):
        return (pbegin
                | "ListFiles" >> beam.Create(self._files)
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadFiles" >> beam.ParDo(_ReadFileDoFn(self._prefix)).with_outputs(DEAD_LETTER_TAG, main="rows"))


# --------------------------------------------------------------------------- texts


class _ExtractTextDoFn(beam.DoFn):
    def __init__(self, columns: TextColumns, prefix: str):
        self._columns = columns
        self._prefix = prefix

    def process(self, row: SourcedRow) -> Iterator:
        result = extract_text(row, self._columns)
        if isinstance(result, DeadLetter):
            dead_letter_counter(result.reason, self._prefix).inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, result)
        else:
            yield result.id, result


class _ResolveIdDoFn(beam.DoFn):
    def __init__(self, prefix: str):
        self._prefix = prefix
        self.kept = counter("rows_kept", prefix)
        self.duplicates = counter("rows_duplicate", prefix)

    def process(self, element) -> Iterator:
        id_, rows = element
        unique, duplicates, rejected = resolve_id(id_, rows)
        self.duplicates.inc(duplicates)
        for letter in rejected:
            dead_letter_counter(letter.reason, self._prefix).inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
        if unique is not None:
            self.kept.inc()
            yield unique


def _merge_ids(element) -> UniqueText:
    """(text hash, [UniqueText with one id each]) -> one UniqueText carrying every id."""
    _, uniques = element
    uniques = list(uniques)
    return UniqueText(uniques[0].text, tuple(sorted(i for u in uniques for i in u.ids)))


class DedupeTexts(beam.PTransform):
    """SourcedRow -> UniqueText (each distinct text once). Outputs: main, ``dead_letter``.

    Without an id column the id is the text's hash, so one grouping both dedupes and
    identifies. With one, rows are grouped by id (duplicates and conflicts), then ids that
    share a text are grouped so the text is still encoded once.
    """

    def __init__(self, columns: TextColumns, counter_prefix: str = ""):
        super().__init__()
        self._columns = columns
        self._prefix = counter_prefix

    def expand(self, rows):
        texts = rows | "ExtractText" >> beam.ParDo(_ExtractTextDoFn(self._columns, self._prefix)).with_outputs(
            DEAD_LETTER_TAG, main="texts")
        resolved = (texts.texts
                    | "GroupById" >> beam.GroupByKey()
                    | "ResolveIds" >> beam.ParDo(_ResolveIdDoFn(self._prefix)).with_outputs(DEAD_LETTER_TAG, main="unique"))
        unique = resolved.unique
        if self._columns.id is not None:
            unique = (unique
                      | "KeyByText" >> beam.Map(lambda u: (text_id(u.text), u))
                      | "GroupByText" >> beam.GroupByKey()
                      | "MergeIds" >> beam.Map(_merge_ids))
        dead = (texts[DEAD_LETTER_TAG], resolved[DEAD_LETTER_TAG]) | "MergeDeadLetters" >> beam.Flatten()
        return {"unique": unique, DEAD_LETTER_TAG: dead}


# --------------------------------------------------------------------------- encoding

@dataclass(frozen=True)
class EncodeSettings:
    """How stage one runs the encoder. ``model_dir`` None = the zero-training baseline."""
    model_dir: str | None
    side: str
    batch_size: int = 128
    dtype: str = "float16"
    device: str = "auto"
    threads: ThreadPlan = ThreadPlan()   # torch threads per worker process (encoders/threads.py)
    # Texts tokenized and sorted by length together before being cut into batches; larger
    # windows pad less, at the cost of holding more texts in memory.
    sort_window: int = 4096


class _EncodeTextsDoFn(SortWindowDoFn):
    """UniqueText -> pyarrow Tables of store rows, one per sort window.

    The model loads once per worker process, when its first window of texts is flushed: a run
    whose texts are all in ``--store`` never loads the encoder (nor imports transformers). Texts
    are buffered, tokenized together,
    sorted by token count and cut into batches, so each batch pads only to its own longest
    text; this is where length batching pays.
    """

    def __init__(self, settings: EncodeSettings, layout: StoreLayout, prefix: str):
        super().__init__(settings.sort_window)
        self._settings = settings
        self._layout = layout
        # The side's encoder, loaded once per worker process (pipeline/beam/models.py).
        self._handler = EncoderHandler(settings.model_dir, settings.side, settings.device, settings.threads)
        self._shared = shared.Shared()
        self.encoded = counter("texts_encoded", prefix)
        self.truncated = counter("texts_truncated", prefix)

    def setup(self):
        self._model = None

    def flush(self, texts: list[UniqueText]) -> pa.Table:
        report_threads("encode")
        if self._model is None:   # held here: shared.Shared keeps only a weak reference
            self._model = acquire(self._shared, self._handler.load_model, self._handler.tag)
        result = encode_unique_texts(self._handler, self._model, texts, self._layout, self._settings.batch_size)
        self.encoded.inc(result.encoded)
        self.truncated.inc(result.truncated)
        return result.table


class EncodeTexts(beam.PTransform):
    """UniqueText -> pyarrow Tables of store rows (see pipeline/store.py for the schema)."""

    def __init__(self, settings: EncodeSettings, layout: StoreLayout, counter_prefix: str = ""):
        super().__init__()
        self._settings = settings
        self._layout = layout
        self._prefix = counter_prefix

    def expand(self, unique_texts):
        return unique_texts | "EncodeByLength" >> beam.ParDo(
            _EncodeTextsDoFn(self._settings, self._layout, self._prefix))
