"""Paths as pairscore means them: a path that exists is that path, never a pattern.

Beam's ``FileSystems.match`` and ``FileSystems.delete`` read ``*``, ``?`` and ``[...]`` in a path
as a glob, so ``runs/run[1]`` would match ``runs/run1``. Every place that lists, matches or deletes
a path pairscore was given (an output, a store, a directory of inputs) goes through
:func:`escape_glob` first, or uses the operating system's literal calls for local paths.
"""
from __future__ import annotations

import re

GLOB_CHARS = "*?["
_GLOB_CHAR = re.compile(r"([*?\[])")


def has_glob(path: str) -> bool:
    """Whether ``path`` holds a character that Beam (and the shell) read as a glob."""
    return any(c in path for c in GLOB_CHARS)


def escape_glob(path: str) -> str:
    """``path`` as a Beam ``FileSystems.match`` pattern that matches exactly ``path``
    (``run[1]`` -> ``run[[]1]``: a one-character class holds its character literally)."""
    return _GLOB_CHAR.sub(r"[\1]", path)


# Compression of the text formats, from the file name's last suffix (lower case) -> codec. Parquet
# compresses its pages itself and must be seekable, so a compressed Parquet file is refused.
COMPRESSION_SUFFIXES = {".zst": "zstd", ".gz": "gzip"}
# Compressions pairscore does not read, named so that the advice is to recompress, not --format.
UNREAD_COMPRESSIONS = {".bz2": "bzip2", ".xz": "xz", ".lz4": "lz4", ".zip": "zip", ".snappy": "snappy",
                       ".br": "brotli", ".lzma": "lzma", ".z": "compress"}


def split_compression(name: str) -> tuple[str, str | None]:
    """A lower-case file ``name`` -> (the name without its compression suffix, the codec:
    "zstd", "gzip" or None): ``pairs.jsonl.gz`` -> (``pairs.jsonl``, "gzip")."""
    for suffix, codec in COMPRESSION_SUFFIXES.items():
        if name.endswith(suffix):
            return name[:-len(suffix)], codec
    return name, None


def gzip_problem(path: str, err: BaseException) -> str:
    """One line for a gzip file that ends early (``EOFError``) or holds bytes that are not gzip
    (``gzip.BadGzipFile``, ``zlib.error``): what the readers and the pre-flight say."""
    if isinstance(err, EOFError):
        return (f"{path} is truncated: its gzip data ends in the middle of a member, so rows at the end are "
                "missing (was the file cut off while being written or copied?)")
    return f"{path} is corrupt: gzip decompression failed ({err}); the rest of the file cannot be read"
