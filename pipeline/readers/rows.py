"""Reading rows: one file streamed as :class:`SourcedRow` for good rows and
:class:`~pipeline.dead_letters.DeadLetter` for malformed records, per format (Parquet, JSONL,
CSV/TSV)."""
from __future__ import annotations

import csv
import io
import json
import re
from typing import IO, Any, Iterator, Sequence

import pyarrow as pa
import zstandard

from pipeline.dead_letters import (
    REASON_BAD_FIELD_COUNT,
    REASON_INVALID_JSON,
    REASON_INVALID_UTF8,
    REASON_NOT_AN_OBJECT,
    DeadLetter,
)
from pipeline.paths import gzip_problem
from pipeline.readers.inputs import FORMATS, InputError, InputFile, SourcedRow
from pipeline.readers.streams import GZIP_ERRORS, open_raw, open_stream, parquet_file

# Lone surrogates: what invalid UTF-8 bytes become under errors="surrogateescape", and what
# JSON "\udXXX" escapes without a partner decode to. Neither can be written out as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
UTF8_BOM = b"\xef\xbb\xbf"

_PARQUET_BATCH_ROWS = 4096
# csv's default limit (131072 characters) would fail the job on one long text. The limit is also
# what stops a stray unclosed quote from swallowing the rest of a huge file into one field, so it
# is raised to a size no real text reaches rather than removed.
_CSV_FIELD_LIMIT_CHARS = 16 << 20


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
    except GZIP_ERRORS as err:
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
                raise InputError(f"{file.path} has no column {quoted_names(missing)}; its schema has "
                                 f"columns {quoted_names(present)}")
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

# JSONL --------------------------------------------------------------------------------------

def _read_jsonl(file: InputFile, columns: list[str] | None) -> Iterator[SourcedRow | DeadLetter]:
    with open_stream(file, counted=True) as stream:
        # Lines are split on b"\n" in binary, so one bad byte spoils one line, not the file.
        for number, line in enumerate(stream, start=1):
            if number == 1:
                line = line.removeprefix(UTF8_BOM)
            if not line.strip():
                continue
            yield parse_json_line(line, f"{file.path}:{number}", columns)


def parse_json_line(line: bytes, source: str,
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
            clean = json.loads(replace_invalid(dumped))
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

def records(stream: IO[bytes], format: str, path: str) -> Iterator[tuple[int, list[str]]]:
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
            line = line.removeprefix(UTF8_BOM)
        line = line.removesuffix(b"\n").removesuffix(b"\r")
        yield number, line.decode("utf-8", errors="surrogateescape").split("\t") if line else []


def _read_delimited(file: InputFile,
                    columns: list[str] | None) -> Iterator[SourcedRow | DeadLetter]:
    with open_stream(file, counted=True) as stream:
        parsed = records(stream, file.format, file.path)
        _, header = next(parsed, (0, None))
        if header is None:  # an empty file: no header, no rows
            return
        # A header with invalid bytes is not worth failing the file over, but its names must be
        # writable; they get U+FFFD like any other invalid text.
        names = [replace_invalid(name) for name in header]
        width = len(names)
        for first_line, values in parsed:
            if not values:  # a blank line
                continue
            source = f"{file.path}:{first_line}"
            if len(values) != width:
                row = dict(zip(names, map(replace_invalid, values)))
                if len(values) > width:
                    row["_extra_fields"] = [replace_invalid(v) for v in values[width:]]
                yield DeadLetter(REASON_BAD_FIELD_COUNT,
                                 f"record has {len(values)} fields but the header has {width}",
                                 source, row)
                continue
            # Surrogates can only come from invalid bytes (see _records); one search over the
            # joined record is much cheaper than one per field.
            if _SURROGATE.search("\x00".join(values)):
                bad = [name for name, value in zip(names, values) if _SURROGATE.search(value)]
                yield DeadLetter(REASON_INVALID_UTF8,
                                 f"field {quoted_names(bad)} is not valid UTF-8",
                                 source, dict(zip(names, map(replace_invalid, values))))
                continue
            yield SourcedRow(source, _project(dict(zip(names, values)), columns))


def replace_invalid(text: str) -> str:
    """``text`` with lone surrogates (from invalid bytes or JSON escapes) shown as U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    try:
        # Back to the original bytes, then decoded the standard way (one U+FFFD per bad sequence).
        return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    except UnicodeEncodeError:  # a surrogate that did not come from a byte (a JSON \ud800 escape)
        return _SURROGATE.sub("\ufffd", text)


def quoted_names(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)

