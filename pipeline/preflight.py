"""Pre-flight checks of a job's local paths, answered in well under a second and a half, before
the job imports Beam, torch and transformers:

- local inputs that do not exist or that a glob does not match (:func:`local_files`);
- required columns of local input files (:func:`check_columns`): the Parquet footer (a file that
  is not Parquet fails here), the header line of CSV/TSV, the first JSON object of JSON Lines
  (``.zst`` too);
- an ``--output`` that is a file, or a non-empty directory without ``--overwrite`` (:func:`check_output`);
- a ``--model`` student checkpoint directory that does not exist or lacks its files
  (:func:`check_student_dir`).

Which job checks what is ``jobs/preflight.py``; Beam's pass-through options are checked by
``pipeline/beam/option_names.py``. Every check is conservative: it refuses only what the job's own
checks (which still run after the imports, for everything, remote paths included) would refuse
too, with the same kind of one-line message. Remote paths (``gs://`` ...) are left to them.
Imports: the standard library, zstandard for ``.zst`` and pyarrow for Parquet footers, each only
when such a file is checked; never Beam, torch or transformers (tests/jobs/test_preflight.py
checks it).
"""
from __future__ import annotations

import codecs
import csv
import glob
import io
import json
import os
from typing import IO, Sequence

# Extension -> format, as pipeline.readers reads them (``.zst`` may follow a text format).
_EXTENSIONS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_GLOB_CHARS = "*?["
_JSONL_PROBE_LINES = 1000          # pipeline.readers looks this far for a first JSON object
_MAX_FILES_CHECKED = 64            # more files: the job's own check (threads, after the imports) does the rest
_HEAD_BYTES = 1 << 20              # what is read of a text file to find its header / first object


class PreflightError(ValueError):
    """A mistake found before the imports: one line, exit status 2 (jobs.common.run_job)."""


# --------------------------------------------------------------------------- inputs

def _is_remote(path: str) -> bool:
    return "://" in path


def _format_of(path: str, override: str | None) -> tuple[str | None, bool]:
    """(format or None when the extension does not tell, compressed)."""
    name = os.path.basename(path).lower()
    compressed = name.endswith(".zst")
    if compressed:
        name = name[:-len(".zst")]
    if override is not None:
        return override, compressed
    return _EXTENSIONS.get(os.path.splitext(name)[1]), compressed


def local_files(flag: str, patterns: Sequence[str], override: str | None = None) -> list[str]:
    """The local files ``patterns`` stand for; PreflightError for a local pattern that matches
    nothing. Remote patterns, and directories (whose listing rules are the readers'), give no
    files here: the job's own check looks at them."""
    files: list[str] = []
    for pattern in patterns:
        if _is_remote(pattern):
            continue
        if os.path.isdir(pattern):
            continue
        if os.path.exists(pattern):
            files.append(pattern)
            continue
        matches = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in _GLOB_CHARS) else []
        if not matches:
            raise PreflightError(f"input {pattern!r} matched no files" + ("" if flag.startswith("--input")
                                                                          else f" ({flag})"))
        files += [m for m in matches if os.path.isfile(m)]
    return list(dict.fromkeys(files))


def check_columns(files: Sequence[str], required: Sequence[str | None], override: str | None = None) -> None:
    """Each local file must have the ``required`` columns (None entries are skipped); the first
    file that does not is named with the columns it has. Files whose columns cannot be told cheaply
    here are left to the job's own check."""
    required = list(dict.fromkeys(c for c in required if c))
    if not required:
        return
    for path in files[:_MAX_FILES_CHECKED]:
        fmt, compressed = _format_of(path, override)
        if fmt is None or (fmt == "parquet" and compressed):
            continue                                   # the readers explain these
        columns, where = _columns_of(path, fmt, compressed)
        if columns is None:
            continue
        missing = [name for name in required if name not in columns]
        if missing and not where:
            raise PreflightError(f"{path} is empty: it has no header line, so no column {_names(missing)} "
                                 f"(required: {_names(required)})")
        if missing:
            raise PreflightError(f"{path} has no column {_names(missing)} (required: {_names(required)}); "
                                 f"{where} has columns {_names(columns)}")


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _columns_of(path: str, fmt: str, compressed: bool) -> tuple[list[str] | None, str]:
    """(column names or None when they cannot be told here, where they were read)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq   # the footer only
        try:
            return pq.read_schema(path).names, "its schema"
        except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a bad footer
            raise PreflightError(f"{path} is not a valid Parquet file: {err}") from None
    head = _head(path, compressed)
    if head is None:
        return None, ""
    if fmt == "jsonl":
        for number, line in enumerate(head.splitlines()[:_JSONL_PROBE_LINES], start=1):
            try:
                parsed = json.loads(line.decode("utf-8").removeprefix("\ufeff")) if line.strip() else None
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(parsed, dict):
                return list(parsed), f"its first JSON object (line {number})"
        return None, ""
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        return ([], "") if len(head) < _HEAD_BYTES else (None, "")
    if fmt == "tsv":
        return first.split("\t"), "its header line"
    if '"' in first:     # a quoted header may span lines: the readers parse it
        return None, ""
    return next(csv.reader(io.StringIO(first))), "its header line"


def _head(path: str, compressed: bool) -> bytes | None:
    """The first bytes of a text file (decompressed), or None when they cannot be read here."""
    try:
        with open(path, "rb") as raw:
            if not compressed:
                return raw.read(_HEAD_BYTES)
            import zstandard
            try:
                with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as stream:
                    return _read_up_to(stream, _HEAD_BYTES)
            except zstandard.ZstdError:
                return None                      # the readers name the damage
    except OSError:
        return None


def _read_up_to(stream: IO[bytes], size: int) -> bytes:
    chunks, total = [], 0
    while total < size and (chunk := stream.read(size - total)):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- outputs and models

def check_output(output: str, overwrite: bool) -> None:
    """A local ``--output`` that is a file, or that holds anything (a stale ``_LOCK`` aside)
    without ``--overwrite``, is refused as ``pipeline.outputs.open_output`` refuses it."""
    if _is_remote(output) or not os.path.exists(output):
        return
    if not os.path.isdir(output):
        raise PreflightError(f"--output {output!r} is an existing file: give a directory (new, empty, or a "
                             "pairscore output with --overwrite)")
    if overwrite:
        return                                   # which outputs may be replaced: open_output decides
    try:
        entries = sorted(name for name in os.listdir(output) if name != "_LOCK")
    except OSError:
        return
    if entries:
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries) - 5} more)" if len(entries) > 5 else "")
        raise PreflightError(f"--output {output!r} is not empty ({shown}): give a new or empty directory, or pass "
                             "--overwrite to replace an earlier pairscore output")


def check_student_dir(model_dir: str | None) -> None:
    """A local ``--model`` must be a student checkpoint directory with its config and weights."""
    if model_dir is None or _is_remote(model_dir):
        return
    if not os.path.isdir(model_dir):
        raise PreflightError(f"model directory {model_dir!r} does not exist")
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise PreflightError(f"checkpoint {model_dir!r} is incomplete: missing config.json")
    try:
        with codecs.open(config_path, encoding="utf-8") as handle:
            shared = json.load(handle).get("shared_encoder", True)
    except (OSError, ValueError, AttributeError):
        return                                   # the checkpoint reader explains a bad config
    needed = ["student.safetensors"] + (["encoder"] if shared else ["left_encoder", "right_encoder"])
    missing = [name for name in needed if not os.path.exists(os.path.join(model_dir, name))]
    if missing:
        raise PreflightError(f"checkpoint {model_dir!r} is incomplete: missing {', '.join(missing)} (a checkpoint "
                             f"holds config.json, student.safetensors and {' or '.join(needed[1:])}/)")
