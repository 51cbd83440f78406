"""Reading tabular input files row by row, robustly.

Every job reads its tables (pairs, texts, training sets) through this module:

* :func:`expand_inputs` turns the ``--input``-style paths, globs and directories into a sorted list
  of :class:`InputFile` (format from the extension, or ``--format``; zstd or gzip compression from a
  ``.zst`` or ``.gz`` suffix);
* :func:`check_columns` runs before the pipeline starts and fails fast, naming the file, when a
  file is unreadable or lacks a required column (a job that dies after an hour of encoding because
  file 37 has no ``right`` column is the failure this prevents);
* :func:`read_rows` streams one file, yielding :class:`SourcedRow` for good rows and
  :class:`~pipeline.dead_letters.DeadLetter` for malformed records.

The contract for problems is split in two on purpose:

* a *record* that is malformed (invalid UTF-8, invalid JSON, a CSV row with the wrong number of
  fields) becomes a dead letter and the job goes on;
* a *file* that is damaged (not Parquet, a corrupt or truncated zstd or gzip stream, a corrupt Parquet page)
  raises :class:`InputError` naming the file, because rows after the damage are lost and a job that
  succeeds with silently missing rows is worse than one that fails.

Memory stays bounded whatever the file size: Parquet is read in record batches, zstd and gzip
through streaming decompressors, text files line by line (a single line or CSV record must fit in memory).

Paths go through Beam's ``FileSystems``, so ``gs://`` and ``s3://`` work where Beam's extras are
installed.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import posixpath
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Iterator, NamedTuple, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import progress
from pipeline.choices import FORMATS
from pipeline.dead_letters import (
    REASON_BAD_FIELD_COUNT,
    REASON_INVALID_JSON,
    REASON_INVALID_UTF8,
    REASON_NOT_AN_OBJECT,
    DeadLetter,
)
from pipeline.paths import UNREAD_COMPRESSIONS, escape_glob, gzip_problem, has_glob, split_compression
from pipeline.preflight import PreflightError, json_objects_seen, refuse_one_file_twice


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
# What a gzip stream raises for a truncated file (EOFError) or damaged bytes.
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)

_GLOB_CHARS = re.compile(r"[*?\[]")
# Lone surrogates: what invalid UTF-8 bytes become under errors="surrogateescape", and what
# JSON "\udXXX" escapes without a partner decode to. Neither can be written out as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
_UTF8_BOM = b"\xef\xbb\xbf"

_READ_BUFFER_BYTES = 1 << 20
_PARQUET_BATCH_ROWS = 4096
# How many lines check_columns looks through for JSON objects (their keys are the file's columns).
_JSONL_PROBE_LINES = 1000
JSONL_PROBE_LINES = _JSONL_PROBE_LINES  # also how far kept_fields looks for a kept column's JSON type
# csv's default limit (131072 characters) would fail the job on one long text. The limit is also
# what stops a stray unclosed quote from swallowing the rest of a huge file into one field, so it
# is raised to a size no real text reaches rather than removed.
_CSV_FIELD_LIMIT_CHARS = 16 << 20
# check_columns opens every file before the job starts; on object stores that is one round trip
# or more per file, so it is done a few files at a time.
_CHECK_THREADS = 16


class InputError(ValueError):
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


# --------------------------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Checking the files before the pipeline starts
# --------------------------------------------------------------------------------------------

def check_columns(files: Sequence[InputFile], required: Sequence[str]) -> None:
    """Check, before the pipeline starts, that every file is readable and has ``required`` columns.

    * Parquet: the footer is read (a corrupt or truncated file fails here) and its schema's
      top-level column names are used.
    * CSV/TSV: the header line (the first record).
    * JSONL: every key of the JSON objects on the first 1000 lines (a column absent from some
      rows makes those rows dead letters; one absent from all of them is a wrong name); when no
      line is an object, the file's columns are not checked (its rows will become dead letters).
    * ``.zst`` / ``.gz``: the first chunk must decompress.

    Files are opened a few at a time in threads, since on object stores each open is a round
    trip. All problems found are reported together, each naming its file.

    Raises:
        InputError: a file that cannot be opened or read, or lacks (or, for CSV/TSV, repeats) a
            required column; the message names the file, the missing column(s) and the columns
            the file does have.
    """
    required = list(required)
    if not files:
        return
    with ThreadPoolExecutor(max_workers=min(_CHECK_THREADS, len(files))) as pool:
        problems = [p for p in pool.map(lambda f: _column_problem(f, required), files) if p]
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InputError(f"{len(problems)} of {len(files)} input files have problems:\n  "
                         f"{shown}{more}")


def _column_problem(file: InputFile, required: list[str]) -> str | None:
    """What is wrong with ``file`` for the ``required`` columns, or None."""
    try:
        columns, where = _columns_of(file)
    except InputError as err:
        return str(err)
    except zstandard.ZstdError as err:
        return f"{file.path} is not valid zstd-compressed data: {err}"
    except _GZIP_ERRORS as err:
        return gzip_problem(file.path, err)
    if columns is None:  # a JSONL file with no JSON object near the top: nothing to check
        return None
    missing = [name for name in required if name not in columns]
    if missing and not where:
        return (f"{file.path} is empty: it has no header line, so no column {_names(missing)} "
                f"(required: {_names(required)})")
    if missing:
        return (f"{file.path} has no column {_names(missing)} (required: {_names(required)}); "
                f"{where} has columns {_names(columns)}")
    repeated = [name for name in required if columns.count(name) > 1]
    if repeated:
        return (f"{file.path}: column {_names(repeated)} appears more than once in {where}, so "
                "which one to use is ambiguous")
    return None


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _columns_of(file: InputFile) -> tuple[list[str] | None, str]:
    """The file's column names and where they were read, for messages.

    Columns are None when they cannot be told (JSONL without an object near the top); the
    description is empty for a CSV/TSV file without even a header line.
    """
    if file.format == "parquet":
        with open_raw(file.path) as raw:
            return parquet_file(raw, file.path).schema_arrow.names, "its schema"
    with _open_stream(file) as stream:
        if file.format == "jsonl":
            return _first_json_object_keys(stream)
        _, header = next(_records(stream, file.format, file.path), (0, None))
        if header is None:
            return [], ""
        return [_replace_invalid(name) for name in header], "its header line"


def _first_json_object_keys(stream: IO[bytes]) -> tuple[list[str] | None, str]:
    """Every key of the JSON objects on the first lines (a column missing from some rows is their
    dead letter, not the file's refusal: the same verdict whatever the rows' order), judged
    exactly as read_rows judges a line, so a line that will be a dead letter is skipped."""
    keys: dict[str, None] = {}
    objects = first = 0
    for number, line in enumerate(stream, start=1):
        if number > _JSONL_PROBE_LINES:
            break
        if number == 1:
            line = line.removeprefix(_UTF8_BOM)
        if not line.strip():
            continue
        parsed = _parse_json_line(line, "", None)
        if isinstance(parsed, SourcedRow):
            keys.update(dict.fromkeys(parsed.fields))
            objects, first = objects + 1, first or number
    return (list(keys), json_objects_seen(objects, first)) if objects else (None, "")


# --------------------------------------------------------------------------------------------
# Reading rows
# --------------------------------------------------------------------------------------------

def read_rows(file: InputFile,
              columns: Sequence[str] | None = None) -> Iterator[SourcedRow | DeadLetter]:
    """Stream the rows of one file.

    Good rows come as :class:`SourcedRow`; ``source`` is ``path:LINE`` for text files (1-based; for
    CSV/TSV the header is line 1, and a CSV record spanning several lines is numbered by its first
    line; a TSV record is always one line, read without quote processing) and ``path:ROWINDEX``
    (0-based) for Parquet. Values: CSV/TSV give strings (an empty field is ``""``); JSONL keeps
    JSON types (``null`` is None); Parquet gives what pyarrow's ``to_pylist`` gives.

    Malformed records come as :class:`~pipeline.dead_letters.DeadLetter`, whose ``row`` holds the
    original fields with invalid bytes shown as U+FFFD:

    * ``invalid_utf8``: a JSONL line or CSV/TSV record with bytes that are not UTF-8 (or a JSONL
      string with an unpaired ``\\udXXX`` escape, which cannot be written as UTF-8 either);
    * ``invalid_json``: a JSONL line that is not JSON (``row`` is ``{"line": text}``);
    * ``not_a_json_object``: a JSONL line holding a JSON value other than an object (same ``row``);
    * ``bad_field_count``: a CSV/TSV record with more or fewer fields than the header (fields past
      the header's width are kept in ``row["_extra_fields"]``).

    Blank lines are skipped, in JSONL and CSV/TSV alike; they are neither rows nor dead letters.
    A CSV/TSV header that repeats a name keeps the last such field in each row (check_columns
    refuses a repeated *required* column).

    Args:
        file: the file, as :func:`expand_inputs` gives it.
        columns: when given, good rows hold only these fields (those present), and Parquet reads
            only these columns, which saves reading wide columns the job does not use. Dead
            letters always hold the whole original row.

    Raises:
        InputError: damage that loses the rest of the file, found while streaming: a file that is
            not Parquet, a corrupt Parquet page, a corrupt or truncated zstd stream, a CSV record
            longer than the field size limit. The job fails with the file named rather than
            succeeding with rows silently missing.
    """
    readers = {"parquet": _read_parquet, "jsonl": _read_jsonl,
               "csv": _read_delimited, "tsv": _read_delimited}
    if file.format not in readers:
        raise InputError(f"{file.path}: unknown input format {file.format!r}; "
                         f"allowed formats: {', '.join(FORMATS)}")
    reader = readers[file.format]
    try:
        yield from reader(file, list(columns) if columns is not None else None)
    except zstandard.ZstdError as err:
        raise InputError(f"{file.path} is corrupt: zstd decompression failed while reading "
                         f"({err}); the rest of the file cannot be read") from err
    except _GZIP_ERRORS as err:
        raise InputError(gzip_problem(file.path, err)) from err



def _project(fields: dict, columns: list[str] | None) -> dict:
    if columns is None:
        return fields
    return {name: fields[name] for name in columns if name in fields}


# Parquet ------------------------------------------------------------------------------------

def _read_parquet(file: InputFile, columns: list[str] | None) -> Iterator[SourcedRow]:
    with open_raw(file.path) as raw:
        parquet = parquet_file(raw, file.path)
        if columns is not None:
            present = parquet.schema_arrow.names
            missing = [name for name in columns if name not in present]
            if missing:
                raise InputError(f"{file.path} has no column {_names(missing)}; its schema has "
                                 f"columns {_names(present)}")
        index = 0
        batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as err:
                raise InputError(f"{file.path} is corrupt: reading Parquet data after row "
                                 f"{index} failed ({err}); the rest of the file cannot be read"
                                 ) from err
            if batch is None:
                return
            for fields in batch.to_pylist():
                yield SourcedRow(f"{file.path}:{index}", fields)
                index += 1


def parquet_file(raw: IO[bytes], path: str) -> pq.ParquetFile:
    """A Parquet file over ``raw`` (the bytes of ``path``); InputError naming ``path`` when it is not one."""
    try:
        return pq.ParquetFile(raw)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path} is not a valid Parquet file: {err}") from err


# JSONL --------------------------------------------------------------------------------------

def _read_jsonl(file: InputFile, columns: list[str] | None) -> Iterator[SourcedRow | DeadLetter]:
    with _open_stream(file, counted=True) as stream:
        # Lines are split on b"\n" in binary, so one bad byte spoils one line, not the file.
        for number, line in enumerate(stream, start=1):
            if number == 1:
                line = line.removeprefix(_UTF8_BOM)
            if not line.strip():
                continue
            yield _parse_json_line(line, f"{file.path}:{number}", columns)


def _parse_json_line(line: bytes, source: str,
                     columns: list[str] | None) -> SourcedRow | DeadLetter:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        detail = f"line is not valid UTF-8: {_describe_bad_bytes(line, err)}"
        value = _loads_or_none(text)
        row = value if isinstance(value, dict) else {"line": text}
        return DeadLetter(REASON_INVALID_UTF8, detail, source, row)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return DeadLetter(REASON_INVALID_JSON,
                          f"line is not valid JSON: {err.msg} at column {err.colno}",
                          source, {"line": text.rstrip("\r\n")})
    except (ValueError, RecursionError) as err:  # e.g. nesting deeper than the recursion limit
        return DeadLetter(REASON_INVALID_JSON, f"line is not valid JSON: {err}",
                          source, {"line": text.rstrip("\r\n")})
    if not isinstance(value, dict):
        return DeadLetter(REASON_NOT_AN_OBJECT,
                          f"line holds a JSON {_json_type(value)}, not an object",
                          source, {"line": text.rstrip("\r\n")})
    # Cheap test first: only a line with a \udXXX escape can hold an unpaired surrogate.
    if b"\\u" in line and re.search(rb"\\u[dD][89a-fA-F]", line):
        dumped = json.dumps(value, ensure_ascii=False)
        if _SURROGATE.search(dumped):
            clean = json.loads(_replace_invalid(dumped))
            return DeadLetter(REASON_INVALID_UTF8,
                              "line has a \\u escape for an unpaired UTF-16 surrogate, "
                              "which is not a character and cannot be written as UTF-8",
                              source, clean)
    return SourcedRow(source, _project(value, columns))


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _describe_bad_bytes(line: bytes, err: UnicodeDecodeError) -> str:
    return f"{line[err.start:err.end]!r} at byte {err.start + 1} of the line ({err.reason})"


# CSV / TSV ----------------------------------------------------------------------------------

def _records(stream: IO[bytes], format: str, path: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` for every record of a CSV or TSV stream, the header included.

    Text is decoded with ``surrogateescape``, which keeps invalid bytes as lone surrogates instead
    of failing the whole file, so each record can be checked on its own; a UTF-8 byte order mark
    (which spreadsheet programs put first) is dropped so it does not end up in the first column's
    name. A blank line comes as an empty list.

    * **CSV** follows RFC 4180 quoting: a quoted field may hold commas, ``""`` and line breaks,
      so one record may span several lines.
    * **TSV** has no quoting at all (the IANA ``text/tab-separated-values`` rule): one line is
      one record, split on tabs, and a ``"`` is an ordinary character. A stray quote in one text
      therefore cannot swallow the lines after it. A line ends at ``\\n`` (a ``\\r`` before it
      is dropped); fields cannot hold tabs or line breaks.
    """
    if format == "tsv":
        yield from _tsv_records(stream)
        return
    if csv.field_size_limit() < _CSV_FIELD_LIMIT_CHARS:
        csv.field_size_limit(_CSV_FIELD_LIMIT_CHARS)
    # newline="" is what the csv module needs to handle quoted fields with line breaks.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter=",")
    last_line = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise InputError(f"{path}: cannot parse the CSV record ending on line "
                             f"{reader.line_num} ({err}); an unclosed quote makes the rest of "
                             "the file one field") from err
        # line_num is the record's last line; the record starts after the previous one.
        first_line, last_line = last_line + 1, reader.line_num
        yield first_line, values


def _tsv_records(stream: IO[bytes]) -> Iterator[tuple[int, list[str]]]:
    # Split on b"\n" in binary (as JSONL is), so lines are lines whatever the text holds.
    for number, line in enumerate(stream, start=1):
        if number == 1:
            line = line.removeprefix(_UTF8_BOM)
        line = line.removesuffix(b"\n").removesuffix(b"\r")
        yield number, line.decode("utf-8", errors="surrogateescape").split("\t") if line else []


def _read_delimited(file: InputFile,
                    columns: list[str] | None) -> Iterator[SourcedRow | DeadLetter]:
    with _open_stream(file, counted=True) as stream:
        records = _records(stream, file.format, file.path)
        _, header = next(records, (0, None))
        if header is None:  # an empty file: no header, no rows
            return
        # A header with invalid bytes is not worth failing the file over, but its names must be
        # writable; they get U+FFFD like any other invalid text.
        names = [_replace_invalid(name) for name in header]
        width = len(names)
        for first_line, values in records:
            if not values:  # a blank line
                continue
            source = f"{file.path}:{first_line}"
            if len(values) != width:
                row = dict(zip(names, map(_replace_invalid, values)))
                if len(values) > width:
                    row["_extra_fields"] = [_replace_invalid(v) for v in values[width:]]
                yield DeadLetter(REASON_BAD_FIELD_COUNT,
                                 f"record has {len(values)} fields but the header has {width}",
                                 source, row)
                continue
            # Surrogates can only come from invalid bytes (see _records); one search over the
            # joined record is much cheaper than one per field.
            if _SURROGATE.search("\x00".join(values)):
                bad = [name for name, value in zip(names, values) if _SURROGATE.search(value)]
                yield DeadLetter(REASON_INVALID_UTF8,
                                 f"field {_names(bad)} is not valid UTF-8",
                                 source, dict(zip(names, map(_replace_invalid, values))))
                continue
            yield SourcedRow(source, _project(dict(zip(names, values)), columns))


def _replace_invalid(text: str) -> str:
    """``text`` with lone surrogates (from invalid bytes or JSON escapes) shown as U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    try:
        # Back to the original bytes, then decoded the standard way (one U+FFFD per bad sequence).
        return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    except UnicodeEncodeError:  # a surrogate that did not come from a byte (a JSON \ud800 escape)
        return _SURROGATE.sub("\ufffd", text)


# --------------------------------------------------------------------------------------------
# Opening files
# --------------------------------------------------------------------------------------------

def open_raw(path: str) -> IO[bytes]:
    """The file's bytes as stored (Beam must not guess compression from the extension)."""
    try:
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except (BeamIOError, OSError, ValueError) as err:
        raise InputError(f"cannot open {path}: {err}") from err


@contextlib.contextmanager
def _open_stream(file: InputFile, counted: bool = False) -> Iterator[IO[bytes]]:
    """A buffered binary stream of the file's (decompressed) content. ``counted``: the bytes read
    from storage (compressed, for .zst) count as progress (``input_bytes_read``)."""
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open_raw(file.path))
        if counted:
            raw = io.BufferedReader(_CountedRaw(raw), buffer_size=_READ_BUFFER_BYTES)
        if file.compression is None:
            yield raw
            return
        if file.compression == "gzip":
            # GzipFile reads every member of a multi-member file (parts joined with `cat`, pigz
            # output) and raises EOFError at a cut, where zstd needs _ZstdFrameChecker.
            yield io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), buffer_size=_READ_BUFFER_BYTES)
            return
        checked = _ZstdFrameChecker(raw, file.path)
        # read_across_frames: files made by concatenating .zst parts (as `cat` or parallel
        # compressors do) hold several frames, and all of them are the file's content.
        decompressed = stack.enter_context(zstandard.ZstdDecompressor().stream_reader(
            checked, read_size=_READ_BUFFER_BYTES, read_across_frames=True, closefd=False))
        yield io.BufferedReader(decompressed, buffer_size=_READ_BUFFER_BYTES)


class _CountedRaw(io.RawIOBase):
    """A file's stored bytes, each read adding to this process's progress tally: the share of
    the input consumed, whose total (the files' sizes) is known before the run."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self._tally = progress.tally("input_bytes_read")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        buffer[:len(data)] = data
        self._tally[0] += len(data)
        return len(data)


def input_bytes(files: Sequence[InputFile]) -> int:
    """Stored bytes of the JSONL/CSV/TSV files among ``files`` (what ``input_bytes_read`` counts)."""
    paths = [escape_glob(f.path) for f in files if f.format != "parquet"]
    return sum(m.metadata_list[0].size_in_bytes for m in FileSystems.match(paths)) if paths else 0


def expect_inputs(files: Sequence[InputFile], row_counters: Sequence[str] = ()) -> None:
    """Tell this process's progress line how big ``files`` are, before the run: their rows (from
    the footers) as the total of each of ``row_counters`` when every file is Parquet, and the
    JSONL/CSV/TSV files' stored bytes as the total of ``input_bytes_read``."""
    from pipeline.store import count_rows   # here: the readers need the store for this alone

    if not progress.active():
        return      # --quiet: no footer is read for a line nobody sees
    size = input_bytes(files)
    totals = {"input_bytes_read": size} if size else {}
    if files and all(f.format == "parquet" for f in files):
        rows = count_rows([f.path for f in files])
        totals.update({name: rows for name in row_counters})
    progress.expect(totals)


class _ZstdFrameChecker:
    """Passes compressed bytes through to the decompressor while following zstd's frame layout.

    zstandard's stream reader treats input that ends in the middle of a frame as a normal end of
    data, so a truncated file (an interrupted upload or copy) would lose its last rows silently.
    Following the frame and block headers (RFC 8878, section 3.1) costs a few operations per
    block and tells, at the end of the input, whether it ended on a frame boundary. Content is
    not checked here: the decompressor reports corrupt blocks itself. Bytes that are not a frame
    at all stop the tracking and are likewise left to the decompressor to report.
    """

    _ZSTD_MAGIC = 0xFD2FB528
    _SKIPPABLE_MAGIC_MASK = 0xFFFFFFF0
    _SKIPPABLE_MAGIC = 0x184D2A50

    def __init__(self, raw: IO[bytes], path: str):
        self._raw = raw
        self._path = path
        self._bytes_seen = 0
        self._tracking = True
        self._skip = 0                # bytes to pass over before the next header
        self._header = bytearray()    # the header being collected
        self._need = 4                # its length
        self._on_header = self._on_magic
        self._has_checksum = False

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self._bytes_seen += len(data)
            if self._tracking:
                self._follow(data)
        else:
            self._check_complete()
        return data

    def _follow(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and self._tracking:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._need - len(self._header), end - pos)
            self._header += data[pos:pos + step]
            pos += step
            if len(self._header) == self._need:
                header = bytes(self._header)
                self._header.clear()
                self._on_header(header)

    def _expect(self, length: int, handler, skip_first: int = 0) -> None:
        self._skip, self._need, self._on_header = skip_first, length, handler

    def _on_magic(self, header: bytes) -> None:
        magic = int.from_bytes(header, "little")
        if magic == self._ZSTD_MAGIC:
            self._expect(1, self._on_frame_descriptor)
        elif magic & self._SKIPPABLE_MAGIC_MASK == self._SKIPPABLE_MAGIC:
            self._expect(4, self._on_skippable_size)
        else:
            self._tracking = False

    def _on_frame_descriptor(self, header: bytes) -> None:
        descriptor = header[0]
        single_segment = (descriptor >> 5) & 1
        content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        dictionary_id_bytes = (0, 1, 2, 4)[descriptor & 3]
        window_descriptor_bytes = 0 if single_segment else 1
        self._has_checksum = bool((descriptor >> 2) & 1)
        self._expect(3, self._on_block_header,
                     skip_first=window_descriptor_bytes + dictionary_id_bytes + content_size_bytes)

    def _on_block_header(self, header: bytes) -> None:
        value = int.from_bytes(header, "little")
        last_block, block_type, block_size = value & 1, (value >> 1) & 3, value >> 3
        if block_type == 3:  # reserved: corrupt, the decompressor will say so
            self._tracking = False
            return
        content = 1 if block_type == 1 else block_size  # an RLE block stores one byte
        if last_block:
            self._expect(4, self._on_magic, skip_first=content + (4 if self._has_checksum else 0))
        else:
            self._expect(3, self._on_block_header, skip_first=content)

    def _on_skippable_size(self, header: bytes) -> None:
        self._expect(4, self._on_magic, skip_first=int.from_bytes(header, "little"))

    def _check_complete(self) -> None:
        if self._bytes_seen == 0:
            raise InputError(f"{self._path} is empty, so it is not zstd-compressed data (a .zst "
                             "file holds at least one zstd frame)")
        at_boundary = (self._skip == 0 and not self._header and self._on_header == self._on_magic)
        if self._tracking and not at_boundary:
            raise InputError(f"{self._path} is truncated: its zstd data ends in the middle of a "
                             "frame, so rows at the end are missing (was the file cut off while "
                             "being written or copied?)")


# --------------------------------------------------------------------------------------------
# Reading in columnar batches (stage two)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReadSlice:
    """A unit of reading work: a whole text file, or a run of row groups of a Parquet file, so
    that one big Parquet file is read by many workers at once. ``row_groups`` is empty for text
    files; ``first_row`` is the file's row index of the slice's first row (Parquet)."""
    file: InputFile
    row_groups: tuple[int, ...] = ()
    first_row: int = 0


def read_slices(file: InputFile, target_rows: int = 1 << 17) -> list[ReadSlice]:
    """The slices of one file: runs of whole Parquet row groups of about ``target_rows`` rows
    (at least one group each); a text file is one slice (a CSV record may span lines and zstd
    streams cannot be entered in the middle, so byte ranges are not safe there)."""
    if file.format != "parquet":
        return [ReadSlice(file)]
    with open_raw(file.path) as raw:
        metadata = parquet_file(raw, file.path).metadata
    slices, groups, first, rows, start = [], [], 0, 0, 0
    for group in range(metadata.num_row_groups):
        if not groups:
            first = start
        groups.append(group)
        rows += metadata.row_group(group).num_rows
        start += metadata.row_group(group).num_rows
        if rows >= target_rows:
            slices.append(ReadSlice(file, tuple(groups), first))
            groups, rows = [], 0
    if groups:
        slices.append(ReadSlice(file, tuple(groups), first))
    return slices


def count_input_rows(files: Sequence[InputFile]) -> int:
    """Rows of the input files before the pipeline runs: exact for Parquet (footers) and for
    small text files; large text files are extrapolated from their first 4 MB."""
    from pipeline.store import count_rows   # here: the readers need the store for this alone

    return sum(count_rows([f.path]) if f.format == "parquet" else _estimate_lines(f) for f in files)


def _estimate_lines(file: InputFile, sample_bytes: int = 1 << 22) -> int:
    size = FileSystems.match([escape_glob(file.path)])[0].metadata_list[0].size_in_bytes
    with FileSystems.open(file.path, compression_type="uncompressed") as raw:
        stream = (raw if file.compression is None else gzip.GzipFile(fileobj=raw, mode="rb")
                  if file.compression == "gzip" else
                  zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
        try:
            sample = stream.read(sample_bytes)
            finished = len(sample) < sample_bytes or not stream.read(1)
        except _GZIP_ERRORS as err:
            raise InputError(gzip_problem(file.path, err)) from err
        consumed = raw.tell() if file.compressed else len(sample)
    lines = sample.count(b"\n") + (1 if sample and not sample.endswith(b"\n") else 0)
    return lines if finished else int(lines * size / max(consumed, 1)) + 1


class ParquetBatch(NamedTuple):
    """Rows of a Parquet slice: the ``columns`` asked for as a record batch, the file's row index
    of each row, and a way to fetch whole original rows (for dead letters) by batch row."""
    batch: pa.RecordBatch
    positions: Any  # numpy (rows,) int64
    originals: Any  # callable: numpy rows -> list of dicts (every column of those rows)


def read_parquet_slice(piece: ReadSlice, columns: Sequence[str], batch_rows: int) -> Iterator[ParquetBatch]:
    """Record batches of ``columns`` over a Parquet slice, in file order.

    Raises:
        InputError: a file that is not Parquet or whose data is corrupt, naming it.
    """
    import numpy as np

    path = piece.file.path
    with open_raw(path) as raw:
        parquet = parquet_file(raw, path)
        start = piece.first_row
        for group in piece.row_groups:
            offset = 0
            try:
                batches = list(parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=list(columns)))
            except (pa.ArrowException, OSError) as err:
                raise InputError(f"{path} is corrupt: reading Parquet row group {group} (rows from {start}) "
                                 f"failed ({err}); the rest of the file cannot be read") from err
            for batch in batches:
                def originals(rows, group=group, offset=offset):
                    # Rare (bad rows only): the whole row group is read again with every column.
                    with open_raw(path) as again:
                        whole = parquet_file(again, path).read_row_group(group)
                    return whole.take(pa.array(np.asarray(rows) + offset)).to_pylist()
                yield ParquetBatch(batch, np.arange(start + offset, start + offset + batch.num_rows, dtype=np.int64),
                                   originals)
                offset += batch.num_rows
            start += parquet.metadata.row_group(group).num_rows


class RowBatch(NamedTuple):
    """Good rows of a text file (their whole fields) and each one's line number."""
    rows: list
    lines: list


def read_row_batches(file: InputFile, batch_rows: int) -> Iterator[RowBatch | DeadLetter]:
    """A JSONL/CSV/TSV file as batches of up to ``batch_rows`` good rows, with each malformed
    record as a DeadLetter (as :func:`read_rows` judges them), in file order."""
    rows, lines = [], []
    for item in read_rows(file):
        if isinstance(item, DeadLetter):
            yield item
            continue
        rows.append(item.fields)
        lines.append(int(item.source.rsplit(":", 1)[1]))
        if len(rows) >= batch_rows:
            yield RowBatch(rows, lines)
            rows, lines = [], []
    if rows:
        yield RowBatch(rows, lines)
