"""Checking the input files before the pipeline starts: readable, and holding the columns the
job needs (:func:`check_columns`), every problem reported together, each naming its file."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import IO, Sequence

import zstandard

from pipeline.paths import gzip_problem
from pipeline.preflight import json_objects_seen
from pipeline.readers.inputs import InputError, InputFile, SourcedRow
from pipeline.readers.rows import UTF8_BOM, parse_json_line, quoted_names, records, replace_invalid
from pipeline.readers.streams import GZIP_ERRORS, open_raw, open_stream, parquet_file

# check_columns opens every file before the job starts; on object stores that is one round trip
# or more per file, so it is done a few files at a time.
_CHECK_THREADS = 16
# How many lines check_columns looks through for JSON objects (their keys are the file's columns);
# also how far pipeline.pairs.kept_fields looks for a kept column's JSON type.
JSONL_PROBE_LINES = 1000


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
    except GZIP_ERRORS as err:
        return gzip_problem(file.path, err)
    if columns is None:  # a JSONL file with no JSON object near the top: nothing to check
        return None
    missing = [name for name in required if name not in columns]
    if missing and not where:
        return (f"{file.path} is empty: it has no header line, so no column {quoted_names(missing)} "
                f"(required: {quoted_names(required)})")
    if missing:
        return (f"{file.path} has no column {quoted_names(missing)} (required: {quoted_names(required)}); "
                f"{where} has columns {quoted_names(columns)}")
    repeated = [name for name in required if columns.count(name) > 1]
    if repeated:
        return (f"{file.path}: column {quoted_names(repeated)} appears more than once in {where}, so "
                "which one to use is ambiguous")
    return None

def _columns_of(file: InputFile) -> tuple[list[str] | None, str]:
    """The file's column names and where they were read, for messages.

    Columns are None when they cannot be told (JSONL without an object near the top); the
    description is empty for a CSV/TSV file without even a header line.
    """
    if file.format == "parquet":
        with open_raw(file.path) as raw:
            return parquet_file(raw, file.path).schema_arrow.names, "its schema"
    with open_stream(file) as stream:
        if file.format == "jsonl":
            return _first_json_object_keys(stream)
        _, header = next(records(stream, file.format, file.path), (0, None))
        if header is None:
            return [], ""
        return [replace_invalid(name) for name in header], "its header line"


def _first_json_object_keys(stream: IO[bytes]) -> tuple[list[str] | None, str]:
    """Every key of the JSON objects on the first lines (a column missing from some rows is their
    dead letter, not the file's refusal: the same verdict whatever the rows' order), judged
    exactly as read_rows judges a line, so a line that will be a dead letter is skipped."""
    keys: dict[str, None] = {}
    objects = first = 0
    for number, line in enumerate(stream, start=1):
        if number > JSONL_PROBE_LINES:
            break
        if number == 1:
            line = line.removeprefix(UTF8_BOM)
        if not line.strip():
            continue
        parsed = parse_json_line(line, "", None)
        if isinstance(parsed, SourcedRow):
            keys.update(dict.fromkeys(parsed.fields))
            objects, first = objects + 1, first or number
    return (list(keys), json_objects_seen(objects, first)) if objects else (None, "")
