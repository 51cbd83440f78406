"""The one place a table or a manifest is written outside a Beam sink: zstd Parquet and JSON,
through Beam's FileSystems (local paths, gs://, s3:// alike), into an output's staging directory.

Beam pipelines write their Parquet with ``pipeline/beam/writes.py``; everything else (dead
letters of the jobs without Beam, candidates, evaluation scores, store and distillation
manifests) comes here. ``pipeline/outputs.py`` then commits the staging directory.
"""
from __future__ import annotations

from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

# Every Parquet file pairscore writes: zstd (small, fast to decode).
COMPRESSION = "zstd"


def write_parquet_file(path: str, schema: pa.Schema, tables: Iterable[pa.Table] = ()) -> str:
    """``tables`` (each of ``schema``) -> one zstd Parquet file at ``path``; written even when
    there are none (an empty table with the schema, as Beam's sinks write). Returns ``path``."""
    with FileSystems.create(path) as handle, pq.ParquetWriter(handle, schema, compression=COMPRESSION) as out:
        for table in tables:
            out.write_table(table)
    return path


def write_json_file(path: str, text: str) -> str:
    """A manifest (JSON text) at ``path``, UTF-8. Returns ``path``."""
    with FileSystems.create(path) as handle:
        handle.write(text.encode("utf-8"))
    return path
