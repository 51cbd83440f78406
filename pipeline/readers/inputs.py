"""Finding the input files: paths, globs and directories -> :class:`InputFile` (format and
compression from the name), and the row type every reader yields (:class:`SourcedRow`)."""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from pipeline.errors import UsageError
from pipeline.paths import UNREAD_COMPRESSIONS, escape_glob, has_glob, split_compression
from pipeline.preflight import PreflightError, refuse_one_file_twice

from pipeline.choices import FORMATS  # defined once, standard library only

# Extension (lower case, without .zst or .gz) -> format.
_EXTENSIONS = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
}
_ALLOWED_EXTENSIONS = ("'.parquet', '.jsonl', '.ndjson', '.csv', '.tsv' "
                       "(the text formats optionally followed by '.zst' or '.gz')")

_GLOB_CHARS = re.compile(r"[*?\[]")


class InputError(UsageError):
    """A problem with the inputs found before or while reading.

    The message names the file (or pattern), what is wrong with it, and what is allowed.
    """


@dataclass(frozen=True)
class InputFile:
    """One matched input file."""
    path: str                 # full path as matched
    format: str               # one of FORMATS
    compression: str | None   # "zstd" (.zst), "gzip" (.gz) or None

    def __post_init__(self) -> None:
        # True / False, as files were once described (zstd was the only compression), still read.
        if isinstance(self.compression, bool):
            object.__setattr__(self, "compression", "zstd" if self.compression else None)

    @property
    def compressed(self) -> bool:
        return self.compression is not None


class SourcedRow(NamedTuple):
    """A good row and where it came from: ``path:LINE`` (text) or ``path:ROWINDEX`` (Parquet)."""
    source: str
    fields: dict



def detect_format(path: str, override: str | None = None) -> tuple[str, str | None]:
    """Return ``(format, compression)`` for ``path`` from its extension; compression is "zstd",
    "gzip" or None.

    Extensions (case-insensitive): ``.parquet``, ``.jsonl`` / ``.ndjson``, ``.csv``, ``.tsv``; the
    text formats may be followed by ``.zst`` or ``.gz``. ``override`` (one of :data:`FORMATS`)
    replaces the format the extension gives, so files without a usable extension can be read;
    compression is still taken from a ``.zst`` or ``.gz`` suffix.

    Raises:
        InputError: unknown extension without ``override``; a compression pairscore does not read
            (.bz2, .xz, ...); an ``override`` that is not a format; compressed Parquet (Parquet
            compresses its pages itself and must be seekable).
    """
    name, compression = split_compression(posixpath.basename(path.replace("\\", "/")).lower())
    unread = UNREAD_COMPRESSIONS.get(posixpath.splitext(name)[1])
    if unread is not None:
        raise InputError(f"{path} is {unread}-compressed, which pairscore does not read: decompress it, or "
                         "recompress it with zstd (.zst) or gzip (.gz)")
    if override is not None:
        fmt = override.lower()
        if fmt not in FORMATS:
            raise InputError(f"unknown input format {override!r} for {path}; "
                             f"allowed formats: {', '.join(FORMATS)}")
    else:
        extension = posixpath.splitext(name)[1]
        fmt = _EXTENSIONS.get(extension)
        if fmt is None:
            raise InputError(f"cannot tell the format of {path} from its extension; allowed "
                             f"extensions: {_ALLOWED_EXTENSIONS}, or give the format explicitly "
                             f"(--format {'|'.join(FORMATS)}; a .zst or .gz suffix is still decompressed)")
    if fmt == "parquet" and compression:
        raise InputError(f"{path}: {compression}-compressed Parquet files are not supported (Parquet must "
                         "be seekable to be read); write the Parquet file with compression='zstd' "
                         "inside it instead")
    return fmt, compression


def expand_inputs(patterns: Sequence[str], format: str | None = None) -> list[InputFile]:
    """Match input paths, globs and directories to files; sorted by path, each file once.

    Each pattern is a local path, a glob (``*``, ``?``, ``[...]``; ``**`` crosses directories), or
    a Beam filesystem path such as ``gs://bucket/pairs/*.parquet``. A path that exists is read
    as it is, glob characters and all (``in/pairs[1].jsonl``); only a path that does not exist
    is matched as a glob.

    A directory (a local directory, a pattern ending in ``/``, or an object-store prefix that is
    not itself an object) stands for the files directly inside it (not in subdirectories) whose
    names have a known extension, or, when ``format`` is given, all of them. Either way names
    starting with ``.`` or ``_`` are skipped, as Hadoop/Spark do, so a previous job's output
    directory (with its ``_SUMMARY.json``) can be read back as input. A glob is taken literally:
    every file it matches must have a known extension (or ``format`` must be given).

    Args:
        patterns: the paths, globs and directories.
        format: one of :data:`FORMATS`, overriding every file's extension.

    Raises:
        InputError: no patterns; a pattern that matched no files (or a directory with no input
            files); a filesystem that is not available; a file whose format cannot be told; one
            local file reached by two paths (a symlink), whose rows would be read twice.
    """
    if isinstance(patterns, str):  # a lone string would otherwise be matched character by character
        patterns = [patterns]
    if not patterns:
        raise InputError("no input paths given")
    if format is not None and format.lower() not in FORMATS:
        raise InputError(f"unknown input format {format!r}; allowed formats: {', '.join(FORMATS)}")
    found: dict[str, InputFile] = {}
    for pattern in patterns:
        for path in map(worker_path, _match_pattern(pattern, format)):
            if path not in found:
                found[path] = InputFile(path, *detect_format(path, format))
    try:
        refuse_one_file_twice(list(found))
    except PreflightError as err:
        raise InputError(str(err)) from None
    return [found[path] for path in sorted(found)]


def worker_path(path: str | None) -> str | None:
    """``path`` as a worker must see it: a local path made absolute (workers need not share the
    launching process's working directory); a Beam filesystem path (gs://, s3://, hdfs://, ...)
    unchanged; None stays None."""
    if path is None or FileSystems.get_scheme(path) is not None:
        return path
    return os.path.abspath(path)


def _match_pattern(pattern: str, format: str | None) -> list[str]:
    """The file paths one pattern stands for (see :func:`expand_inputs`)."""
    if pattern.endswith(("/", "\\")) or _is_local_directory(pattern):
        paths = _list_directory(pattern, format)
        if paths is None:
            raise InputError(f"input {pattern!r} matched no files")
        return paths
    if has_glob(pattern) and _is_file(pattern):
        return [pattern]   # a path that exists is that path: in/pairs[1].jsonl is not in/pairs1.jsonl
    paths = [metadata.path for metadata in _match(pattern)]
    if paths:
        return paths
    if not _GLOB_CHARS.search(pattern):
        # Object stores have no directories: gs://bucket/pairs is a prefix, not an object.
        paths = _list_directory(pattern, format)
        if paths:
            return paths
    raise InputError(f"input {pattern!r} matched no files")


def _list_directory(directory: str, format: str | None) -> list[str] | None:
    """Input files directly inside ``directory``; None when it holds no files at all."""
    base = directory.rstrip("/\\") or directory
    listed = [metadata.path for metadata in _match(FileSystems.join(escape_glob(base), "*"))]
    if not listed:
        return None
    inputs = []
    for path in listed:
        name = posixpath.basename(path.replace("\\", "/"))
        if name.startswith((".", "_")):
            continue
        if format is None and not _has_known_extension(name):
            continue
        inputs.append(path)
    if not inputs:
        shown = ", ".join(sorted(posixpath.basename(p.replace("\\", "/")) for p in listed)[:10])
        raise InputError(f"directory {directory!r} holds no input files (it holds: {shown}); "
                         f"expected names ending in {_ALLOWED_EXTENSIONS} and not starting with "
                         "'.' or '_', or give the format explicitly (--format)")
    return inputs


def _has_known_extension(name: str) -> bool:
    try:
        detect_format(name)
    except InputError:
        return False
    return True


def _is_local_directory(path: str) -> bool:
    return FileSystems.get_scheme(path) is None and os.path.isdir(path)


def _is_file(path: str) -> bool:
    """Whether ``path`` itself names a file (never matched as a pattern)."""
    if FileSystems.get_scheme(path) is None:
        return os.path.isfile(path)
    try:
        return FileSystems.exists(path)
    except Exception:  # noqa: BLE001 - a filesystem that cannot answer: treat the path as a pattern
        return False


def _match(pattern: str) -> list:
    """``FileSystems.match`` for one pattern, its failures as InputError."""
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except BeamIOError as err:
        causes = "; ".join(f"{type(e).__name__}: {e}" for e in err.exception_details.values())
        raise InputError(f"could not list input {pattern!r}: {causes or err}") from err
    except ValueError as err:  # no filesystem for the scheme (e.g. gs:// without apache-beam[gcp])
        raise InputError(f"could not list input {pattern!r}: {err}") from err
