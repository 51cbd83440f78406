"""The Beam sinks: a store's part files and a run's dead letters, written as zstd Parquet into
the staging directory of an output (``pipeline/output/`` commits them), each file's footer
carrying the run's provenance (``pipeline/provenance.py``)."""
from __future__ import annotations

from typing import Mapping

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet, WriteToParquetBatched

from pipeline.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter
from pipeline.output.layout import DEAD_LETTER_DIR
from pipeline.provenance import stamped
from pipeline.store import COMPRESSION, STORE_FILE_PREFIX, STORE_FILE_SUFFIX, StoreLayout


class WriteStore(beam.PTransform):
    """pyarrow Tables of store rows -> ``DIR/part-*.parquet`` (zstd)."""

    def __init__(self, directory: str, layout: StoreLayout, provenance: Mapping[str, str] | None = None):
        super().__init__()
        self._directory = directory
        self._layout = layout
        self._provenance = provenance   # pipeline.provenance.table_metadata: in every file's footer

    def expand(self, tables):
        return tables | "WriteStoreParquet" >> WriteToParquetBatched(
            FileSystems.join(self._directory, STORE_FILE_PREFIX),
            schema=stamped(self._layout.schema(), self._provenance), codec=COMPRESSION, file_name_suffix=STORE_FILE_SUFFIX)


class WriteDeadLetters(beam.PTransform):
    """DeadLetter -> ``DIR/_dead_letter/part-*.parquet`` (see pipeline/dead_letters.py)."""

    def __init__(self, directory: str, provenance: Mapping[str, str] | None = None):
        super().__init__()
        self._directory = directory
        self._provenance = provenance

    def expand(self, letters):
        return (letters
                | "ToRecords" >> beam.Map(DeadLetter.to_record)
                | "WriteDeadLetterParquet" >> WriteToParquet(
                    FileSystems.join(self._directory, DEAD_LETTER_DIR, STORE_FILE_PREFIX),
                    schema=stamped(DEAD_LETTER_SCHEMA, self._provenance), codec=COMPRESSION,
                    file_name_suffix=STORE_FILE_SUFFIX))
