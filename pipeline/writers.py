"""The one place a table or a manifest is written outside a Beam sink: zstd Parquet and JSON into
an output's staging directory. Local paths are written without Beam (``pipeline/files.py``), so
Spark tasks use these writers too; remote paths go through Beam's FileSystems where Beam is
installed (the Beam jobs' clients and credentials) and through pyarrow's filesystems otherwise.

Beam pipelines write their Parquet with ``pipeline/beam/writes.py``; everything else (Spark's part
files, dead letters of the jobs without Beam, candidates, evaluation scores, store and
distillation manifests) comes here. ``pipeline/output/`` then commits the staging directory.
"""
from __future__ import annotations

from typing import IO, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import files

# Every Parquet file pairscore writes: zstd (small, fast to decode).
COMPRESSION = "zstd"


def _create(path: str) -> IO[bytes]:
    if files.scheme_of(path) not in (None, "file"):
        try:
            from apache_beam.io.filesystems import FileSystems
        except ImportError:
            return files.create(path)
        return FileSystems.create(path)
    return files.create(path)


def write_parquet_file(path: str, schema: pa.Schema, tables: Iterable[pa.Table] = ()) -> str:
    """``tables`` (each of ``schema``) -> one zstd Parquet file at ``path``; written even when
    there are none (an empty table with the schema, as Beam's sinks write). Returns ``path``."""
    with _create(path) as handle, pq.ParquetWriter(handle, schema, compression=COMPRESSION) as out:
        for table in tables:
            out.write_table(table)
    return path


def write_json_file(path: str, text: str) -> str:
    """A manifest (JSON text) at ``path``, UTF-8. Returns ``path``."""
    with _create(path) as handle:
        handle.write(text.encode("utf-8"))
    return path
