"""Opening, listing and deleting files without an engine: what Spark tasks (and any code that
must not need Beam) use for the files pairscore writes and reads back.

Local paths go through ``pyarrow.fs.LocalFileSystem``; a URI goes through the filesystem pyarrow
builds for its scheme (``hdfs://``, ``s3://`` (``s3a://`` and ``s3n://`` read as ``s3://``),
``gs://``, ``abfs://``/``abfss://``). Where the scheme's client is missing, the error is one line
saying what to install (:data:`CLIENTS`). Beam jobs keep Beam's FileSystems for remote paths
(``pipeline/writers.py`` prefers them when Beam is importable), so their credentials stay as they were.
"""
from __future__ import annotations

import posixpath
from typing import IO

import pyarrow.fs as pafs

from pipeline.errors import UsageError

# Scheme -> what its pyarrow filesystem needs, said when it is missing.
CLIENTS = {
    "hdfs": "a Hadoop client: libhdfs and HADOOP_HOME / CLASSPATH set (pyarrow.fs.HadoopFileSystem)",
    "s3": "pyarrow built with S3 (the PyPI wheels are) and AWS credentials",
    "gs": "pyarrow built with GCS (the PyPI wheels are) and Google credentials",
    "abfs": "pyarrow >= 16 built with Azure (the PyPI wheels are) and Azure credentials",
}
_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "abfss": "abfs"}


class FileSystemUnavailable(UsageError):
    """A path whose scheme has no usable client here (one line, exit 2)."""


def scheme_of(path: str) -> str | None:
    head, sep, _ = path.partition("://")
    return head.lower() if sep else None


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    scheme = scheme_of(path)
    if scheme is None or scheme == "file":
        local = path[len("file://"):] if scheme == "file" else path
        return pafs.LocalFileSystem(), local
    canonical = _ALIASES.get(scheme, scheme)
    uri = canonical + path[len(scheme):]
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow raises ArrowInvalid, ArrowNotImplementedError or OSError here
        need = CLIENTS.get(canonical, f"a pyarrow filesystem for {scheme}://")
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]   # pyarrow's may run to many lines
        raise FileSystemUnavailable(f"cannot open {path}: {scheme}:// needs {need} ({first})") from None


def create(path: str) -> IO[bytes]:
    """A new file at ``path`` for writing (parent directories created locally)."""
    fs, inner = resolve(path)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(inner) or ".", recursive=True)
    return fs.open_output_stream(inner)


def open_input(path: str):
    """``path`` for random-access reading (what ``pyarrow.parquet.ParquetFile`` takes)."""
    fs, inner = resolve(path)
    return fs.open_input_file(inner)


def list_files(directory: str) -> list[str]:
    """Every file below ``directory`` (recursively), as full paths; empty when it does not exist."""
    fs, inner = resolve(directory)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    prefix = directory[: len(directory) - len(inner)] if directory.endswith(inner) else ""
    return sorted(prefix + info.path for info in infos if info.type == pafs.FileType.File)


def delete(path: str) -> None:
    fs, inner = resolve(path)
    fs.delete_file(inner)


def join(*parts: str) -> str:
    return posixpath.join(*parts)
