"""Where jobs write: the output directory, the store files, dead letters, the manifest."""
from __future__ import annotations

import os
from typing import Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet, WriteToParquetBatched

from pipeline.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter
from pipeline.store import COMPRESSION, STORE_FILE_PREFIX, STORE_FILE_SUFFIX, StoreLayout

DEAD_LETTER_DIR = "dead_letter"
SUMMARY_FILE = "_SUMMARY.json"


def prepare_output_dir(path: str, overwrite: bool) -> None:
    """Create ``path``; refuse a non-empty one unless ``overwrite``, which empties it first.

    Runs before the pipeline starts so that a wrong path fails in a second, not after hours.
    """
    entries = _list_entries(path)
    if entries and not overwrite:
        raise ValueError(f"--output {path!r} is not empty ({len(entries)} entries): "
                         "give a new or empty directory, or pass --overwrite to replace its contents")
    if entries:
        FileSystems.delete(entries)
    if not FileSystems.exists(path):
        FileSystems.mkdirs(path)


def _list_entries(path: str) -> list[str]:
    """Files and sub-directories directly in a local directory; every object under a
    remote prefix (object stores have no directories)."""
    if "://" not in path:
        return [os.path.join(path, name) for name in os.listdir(path)] if os.path.isdir(path) else []
    return [m.path for m in FileSystems.match([FileSystems.join(path, "**")])[0].metadata_list]


class WriteStore(beam.PTransform):
    """pyarrow Tables of store rows -> ``DIR/part-*.parquet`` (zstd)."""

    def __init__(self, directory: str, layout: StoreLayout):
        super().__init__()
        self._directory = directory
        self._layout = layout

    def expand(self, tables):
        return tables | "WriteStoreParquet" >> WriteToParquetBatched(
            FileSystems.join(self._directory, STORE_FILE_PREFIX), schema=self._layout.schema(),
            codec=COMPRESSION, file_name_suffix=STORE_FILE_SUFFIX)


class WriteDeadLetters(beam.PTransform):
    """DeadLetter -> ``DIR/dead_letter/part-*.parquet`` (see pipeline/dead_letters.py)."""

    def __init__(self, directory: str):
        super().__init__()
        self._directory = directory

    def expand(self, letters):
        return (letters
                | "ToRecords" >> beam.Map(DeadLetter.to_record)
                | "WriteDeadLetterParquet" >> WriteToParquet(
                    FileSystems.join(self._directory, DEAD_LETTER_DIR, STORE_FILE_PREFIX),
                    schema=DEAD_LETTER_SCHEMA, codec=COMPRESSION, file_name_suffix=STORE_FILE_SUFFIX))


def write_dead_letter_file(directory: str, letters: Sequence[DeadLetter]) -> str:
    """Dead letters of a job that runs without Beam -> ``DIR/dead_letter/part-00000-of-00001.parquet``,
    the same schema and place as :class:`WriteDeadLetters` (written even when empty, as Beam does)."""
    path = FileSystems.join(directory, DEAD_LETTER_DIR, f"{STORE_FILE_PREFIX}-00000-of-00001{STORE_FILE_SUFFIX}")
    if "://" not in path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.Table.from_pylist([letter.to_record() for letter in letters], schema=DEAD_LETTER_SCHEMA)
    with FileSystems.create(path) as handle:
        pq.write_table(table, handle, compression=COMPRESSION)
    return path
