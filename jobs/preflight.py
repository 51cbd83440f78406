"""Pre-flight: the mistakes a person makes most, answered in well under a second and a half.

A job imports Beam, torch and transformers before it can run (seconds to tens of seconds on a busy
machine). The checks here run first, after the flags have parsed and before those imports, on what
can be checked on this machine cheaply:

- pass-through options that no Beam runner defines (from :mod:`jobs.beam_options`, a list
  generated from the installed Beam), with a "did you mean" among Beam's options and the job's own
  flags;
- local inputs that do not exist or that a glob does not match;
- required columns of local input files: the Parquet footer (a file that is not Parquet fails
  here), the header line of CSV/TSV, the first JSON object of JSON Lines (``.zst`` too);
- an ``--output`` that is a file, or a non-empty directory without ``--overwrite``;
- a ``--model`` student checkpoint directory that does not exist or lacks its files.

Every check is conservative: it refuses only what the job's own checks (which still run after the
imports, for everything, remote paths included) would refuse too, with the same kind of one-line
message. Remote paths (``gs://`` ...) are left to them. Imports: the standard library, zstandard
for ``.zst`` and pyarrow for Parquet footers, each only when such a file is checked; never Beam,
torch or transformers (tests/jobs/test_preflight.py checks it).
"""
from __future__ import annotations

import codecs
import csv
import difflib
import glob
import io
import json
import os
from importlib import metadata
from typing import IO, Any, Iterable, Mapping, Sequence

# Extension -> format, as pipeline.readers reads them (``.zst`` may follow a text format).
_EXTENSIONS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_GLOB_CHARS = "*?["
_JSONL_PROBE_LINES = 1000          # pipeline.readers looks this far for a first JSON object
_MAX_FILES_CHECKED = 64            # more files: the job's own check (threads, after the imports) does the rest
_HEAD_BYTES = 1 << 20              # what is read of a text file to find its header / first object


class PreflightError(ValueError):
    """A mistake found before the imports: one line, exit status 2 (jobs.common.run_job)."""


# --------------------------------------------------------------------------- flags

def check_beam_flags(beam_args: Sequence[str], own_flags: Iterable[str] = ()) -> None:
    """Refuse a pass-through option that no Beam runner defines, suggesting the nearest option
    (Beam's or the job's own: a misspelt job flag lands here too). Skipped when the installed
    Beam is not the one the list was generated from (its own check runs after the import)."""
    from jobs import beam_options

    if _installed_beam() != beam_options.BEAM_VERSION:
        return
    unknown = []
    for arg in beam_args:
        if not arg.startswith("--"):
            continue
        name = arg.split("=", 1)[0]
        # DaskRunner options exist only with dask installed: left to Beam's own check.
        if name not in beam_options.OPTIONS and not name.startswith(("--dask_", "--no_dask")):
            unknown.append(name)
    if not unknown:
        return
    candidates = sorted(set(beam_options.OPTIONS) | set(own_flags))
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
        if close:
            hints.append(f"{name}: did you mean {close[0]}?")
    shown = ", ".join(arg for arg in beam_args if arg.split("=", 1)[0] in unknown)
    message = (f"unknown option(s) {shown}: not a flag of this job (see --help) nor a pipeline option of any "
               "Beam runner")
    raise PreflightError(message + (f" ({'; '.join(hints)})" if hints else ""))


def _installed_beam() -> str | None:
    try:
        return metadata.version("apache-beam")
    except metadata.PackageNotFoundError:
        return None


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


# --------------------------------------------------------------------------- per job

def _pair_inputs(flags: Mapping[str, Any], *extra: str | None) -> list[str | None]:
    return [flags.get("left_col"), flags.get("right_col"), *extra]


def _id_columns(flags: Mapping[str, Any]) -> list[str | None] | None:
    """[left id column, right id column], [] without ids, None when only one is given (the job
    explains that before it looks at any file)."""
    left, right = flags.get("left_id_col"), flags.get("right_id_col")
    if (left is None) != (right is None):
        return None
    return [left, right] if left is not None else []


def check(job: str, flags: Mapping[str, Any], beam_args: Sequence[str] = (), own_flags: Iterable[str] = ()) -> None:
    """Run the pre-flight checks of ``job`` on its parsed ``flags`` (click's names) and its
    pass-through Beam options. Raises PreflightError (one line) on the first mistake found.

    Columns checked are those the input must have whatever the other flags say; ``--keep-cols``
    and half-given id columns are left to the job, whose flag checks come first and explain them
    better (a kept column named like an output column, one id column without the other)."""
    if beam_args:
        check_beam_flags(beam_args, own_flags)
    fmt = flags.get("format")
    reads: list[tuple[str, Sequence[str], list[str | None]]] = []
    if job == "encode_texts":
        reads.append(("--input", flags["inputs"], [flags["text_col"], flags["id_col"]]))
    elif job == "score_pairs":
        ids = _id_columns(flags)
        if ids is not None and bool(ids) != bool(flags["left_texts"] and flags["right_texts"]):
            ids = None     # ids without both text tables, or text tables without ids: the job says which
        pair_columns = [] if ids is None else ids or [flags["left_col"], flags["right_col"]]
        reads.append(("--pairs", flags["pairs"], pair_columns))
        if ids:
            for side in ("left_texts", "right_texts"):
                reads.append(("--" + side.replace("_", "-"), flags[side],
                              [flags["texts_id_col"], flags["texts_text_col"]]))
    elif job == "label_pairs":
        reads.append(("--pairs", flags["pairs"], _pair_inputs(flags, *(_id_columns(flags) or ()))))
    elif job == "build_candidates":
        for side in ("left_texts", "right_texts"):
            reads.append(("--" + side.replace("_", "-"), flags[side],
                          [flags["texts_text_col"], flags.get("texts_id_col")]))
    elif job in ("train_teacher", "evaluate"):
        main = "train" if job == "train_teacher" else "pairs"
        reads.append(("--" + main, flags[main], _pair_inputs(flags, flags.get("label_col"))))
        reads.append(("--dev", flags.get("dev") or (), _pair_inputs(flags, flags.get("label_col"))))
    elif job == "train_student":
        reads.append(("--distill", flags["distill"], []))       # its columns depend on its manifest
        reads.append(("--dev", flags["dev"], _pair_inputs(flags, flags.get("label_col"))))
    for flag, patterns, required in reads:
        files = local_files(flag, patterns, fmt)
        check_columns(files, required, fmt)
    if job in ("encode_texts", "score_pairs"):
        check_student_dir(flags.get("model_dir"))
    if flags.get("output") is not None:
        check_output(flags["output"], bool(flags.get("overwrite")))


# --------------------------------------------------------------------------- the list of Beam's options

BEAM_OPTIONS_MODULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "beam_options.py")


def generate_beam_options() -> tuple[str, list[str]]:
    """(installed Beam's version, every ``--option`` string its options classes define), as the
    jobs see them: after importing the Beam jobs' library (pipeline/beam), so every options class it brings is there, and
    through ``pipeline.beam.runner.beam_option_parser``, the parser the jobs' own check uses. Imports
    Beam (and the jobs): for regenerating :mod:`jobs.beam_options` and its test only."""
    import apache_beam

    import pipeline.beam.encode  # noqa: F401 - the options classes the Beam jobs' library brings
    import pipeline.beam.label  # noqa: F401
    import pipeline.beam.score  # noqa: F401
    from pipeline.beam.runner import beam_option_parser

    names = {option for option in beam_option_parser()._option_string_actions if option.startswith("--")}
    return apache_beam.__version__, sorted(names)


def beam_options_source(version: str, names: Sequence[str]) -> str:
    """The text of jobs/beam_options.py for ``version`` and ``names``."""
    lines = [f'"""Every pipeline option string of apache-beam {version} (all runners), for the pre-flight check of',
             "pass-through flags (jobs/preflight.py). Generated: ``python -m jobs.preflight --write-beam-options``;",
             'tests/jobs/test_preflight.py regenerates it from the installed Beam and compares."""',
             f"BEAM_VERSION = {version!r}", "OPTIONS = frozenset({"]
    lines += [f"    {name!r}," for name in names]
    lines.append("})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write-beam-options"]:
        sys.exit("usage: python -m jobs.preflight --write-beam-options")
    with open(BEAM_OPTIONS_MODULE, "w", encoding="utf-8") as handle:
        handle.write(beam_options_source(*generate_beam_options()))
    print(f"wrote {BEAM_OPTIONS_MODULE}")
