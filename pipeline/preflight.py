"""Pre-flight checks of a job's local paths, answered in well under a second and a half, before
the job imports Beam, torch and transformers:

- local inputs that do not exist or that a glob does not match (:func:`local_files`);
- required columns of local input files (:func:`check_columns`): the Parquet footer (a file that
  is not Parquet fails here), the header line of CSV/TSV, the keys of the first JSON objects of JSON Lines
  (``.zst`` and ``.gz`` too); a compressed Parquet file (``.parquet.gz``) is refused;
- an ``--output`` that is a file, or a non-empty directory without ``--overwrite`` (:func:`check_output`);
- a student (``--model``), teacher (``--teacher``) or evaluated model checkpoint directory that
  does not exist, has not committed, lacks its files or is of the other kind
  (:func:`check_student_dir`, :func:`check_teacher_dir`, :func:`check_model_dir`).

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
from typing import IO, Mapping, Sequence

from pipeline.errors import UsageError
from pipeline.output.layout import LOCK_FILE, STAGING_PREFIX, SUCCESS_FILE, SUMMARY_FILE
from pipeline.output.lock import LockHolder, in_use, parse_lock
from pipeline.paths import gzip_problem, split_compression

# Extension -> format, as pipeline.readers reads them (``.zst`` or ``.gz`` may follow a text format).
_EXTENSIONS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_GLOB_CHARS = "*?["
_JSONL_PROBE_LINES = 1000          # pipeline.readers looks this far for JSON objects' keys
_MAX_FILES_CHECKED = 64            # more files: the job's own check (threads, after the imports) does the rest
_HEAD_BYTES = 1 << 20              # what is read of a text file to find its header / first object


class PreflightError(UsageError):
    """A mistake found before the imports: one line, exit status 2 (jobs.common.run_job)."""


# --------------------------------------------------------------------------- inputs

def _is_remote(path: str) -> bool:
    return "://" in path


def _format_of(path: str, override: str | None) -> tuple[str | None, str | None]:
    """(format or None when the extension does not tell, compression: "zstd", "gzip" or None)."""
    name, compression = split_compression(os.path.basename(path).lower())
    if override is not None:
        return override, compression
    return _EXTENSIONS.get(os.path.splitext(name)[1]), compression


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
    for path in files:
        fmt, compression = _format_of(path, override)
        if fmt == "parquet" and compression:
            raise PreflightError(f"{path}: {compression}-compressed Parquet files are not supported (Parquet must be "
                                 "seekable to be read); write the Parquet file with compression='zstd' inside it "
                                 f"instead ({flag})")
    files = list(dict.fromkeys(files))
    refuse_one_file_twice(files, f" ({flag})")
    return files


def refuse_one_file_twice(paths: Sequence[str], where: str = "") -> None:
    """PreflightError when two of the local ``paths`` are one file (a symlink, a hard link, a
    path through a linked directory): its rows would be read, scored and counted twice."""
    seen: dict[tuple[int, int], str] = {}
    for path in paths:
        if _is_remote(path):
            continue
        try:
            status = os.stat(path)
        except OSError:
            continue                              # the readers name a file that cannot be opened
        first = seen.setdefault((status.st_dev, status.st_ino), path)
        if first != path:
            raise PreflightError(f"inputs {first} and {path} are the same file{where}: its rows would be read twice; "
                                 "give it once")


def check_columns(files: Sequence[str], required: Sequence[str | None], override: str | None = None,
                  named_by: Mapping[str, str] | None = None) -> None:
    """Each local file must have the ``required`` columns (None entries are skipped); the first
    file that does not is named with the columns it has. Files whose columns cannot be told cheaply
    here are left to the job's own check. ``named_by``: column -> the flag that named it, said
    with a missing column."""
    required = list(dict.fromkeys(c for c in required if c))
    if not required:
        return
    for path in files[:_MAX_FILES_CHECKED]:
        fmt, compression = _format_of(path, override)
        if fmt is None or (fmt == "parquet" and compression):
            continue                                   # the readers explain these
        columns, where = _columns_of(path, fmt, compression)
        if columns is None:
            continue
        missing = [name for name in required if name not in columns]
        if missing and not where:
            raise PreflightError(f"{path} is empty: it has no header line, so no column {_names(missing)} "
                                 f"(required: {_names(required)})")
        if missing:
            flags = sorted({named_by[name] for name in missing if named_by and name in named_by})
            raise PreflightError(f"{path} has no column {_names(missing)} ("
                                 + (f"{', '.join(flags)}; " if flags else "")
                                 + f"required: {_names(required)}); {where} has columns {_names(columns)}")


def check_keep_cols(keep: Sequence[str], output_columns: Sequence[str]) -> None:
    """``--keep-cols``: each column once (a table with two columns of one name cannot be read by
    pandas or pyarrow.dataset), and none named like a column the job writes itself."""
    twice = sorted({name for name in keep if list(keep).count(name) > 1})
    if twice:
        raise PreflightError(f"--keep-cols {','.join(keep)} names {', '.join(twice)} more than once: give each "
                             "column once")
    clashing = [name for name in keep if name in output_columns]
    if clashing:
        raise PreflightError(f"--keep-cols {','.join(clashing)} would overwrite output columns "
                             f"{', '.join(output_columns)}: rename the column or leave it out")


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _columns_of(path: str, fmt: str, compression: str | None) -> tuple[list[str] | None, str]:
    """(column names or None when they cannot be told here, where they were read)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq   # the footer only
        try:
            return pq.read_schema(path).names, "its schema"
        except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a bad footer
            raise PreflightError(f"{path} is not a valid Parquet file: {err}") from None
    head = _head(path, compression)
    if head is None:
        return None, ""
    if fmt == "jsonl":
        # Every key of the objects on the first lines, as pipeline.readers judges them: a column
        # missing from some rows is their dead letter (null_text ...), not the file's refusal.
        keys: dict[str, None] = {}
        lines = [line for line in head.splitlines()[:_JSONL_PROBE_LINES]]
        if len(head) >= _HEAD_BYTES and lines:
            lines = lines[:-1]                  # the last line may be cut off at the megabyte
        objects = first = 0
        for number, line in enumerate(lines, start=1):
            try:
                parsed = json.loads(line.decode("utf-8").removeprefix("\ufeff")) if line.strip() else None
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(parsed, dict):
                keys.update(dict.fromkeys(parsed))
                objects, first = objects + 1, first or number
        return (list(keys), json_objects_seen(objects, first)) if objects else (None, "")
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        return ([], "") if len(head) < _HEAD_BYTES else (None, "")
    if fmt == "tsv":
        return first.split("\t"), "its header line"
    if '"' in first:     # a quoted header may span lines: the readers parse it
        return None, ""
    return next(csv.reader(io.StringIO(first))), "its header line"


def json_objects_seen(objects: int, first_line: int) -> str:
    """Where the columns of a JSON Lines file were read (``objects`` JSON objects, the first on
    line ``first_line``), for messages (also pipeline.readers')."""
    if objects == 1:
        return f"its first JSON object (line {first_line})"
    return f"the union of its first {objects} JSON objects (from line {first_line})"


def _head(path: str, compression: str | None) -> bytes | None:
    """The first bytes of a text file (decompressed), or None when they cannot be read here."""
    try:
        with open(path, "rb") as raw:
            if compression is None:
                return raw.read(_HEAD_BYTES)
            if compression == "gzip":
                import gzip
                import zlib
                try:
                    with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                        return _read_up_to(stream, _HEAD_BYTES)
                except (EOFError, gzip.BadGzipFile, zlib.error) as err:
                    # Damage in the first megabyte: the readers would refuse the file the same way.
                    raise PreflightError(gzip_problem(path, err)) from None
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
    without ``--overwrite``, is refused as ``pipeline.output.commit.open_output`` refuses it."""
    if _is_remote(output) or not os.path.exists(output):
        return
    if not os.path.isdir(output):
        raise PreflightError(f"--output {output!r} is an existing file: give a directory (new, empty, or a "
                             "pairscore output with --overwrite)")
    holder = _live_holder(os.path.join(output, LOCK_FILE))
    if holder is not None:      # said first: --overwrite would not help
        raise PreflightError(in_use(output, holder, os.path.join(output, LOCK_FILE)))
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


def _live_holder(lock: str) -> LockHolder | None:
    """The run holding ``lock`` when it is a lock pairscore wrote and its holder is not provably
    gone; None otherwise (no lock, a stale one, or one the job's own check judges)."""
    try:
        with open(lock, "rb") as handle:
            holder = parse_lock(handle.read())
    except (OSError, ValueError, TypeError):
        return None
    return None if holder.is_dead() else holder


# What a teacher checkpoint must hold to load (encoders.teacher.load_teacher: safetensors weights only, a
# tokenizer), and the files any one of which gives a tokenizer.
_TEACHER_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model")
_TEACHER = "a train_teacher output or a Hugging Face sequence-classification cross-encoder"
_STUDENT = "a train_student output"


def _not_committed(directory: str, entries: Sequence[str]) -> str | None:
    """Why ``directory`` is a pairscore training output that has not committed a checkpoint, or
    None: its ``_SUMMARY.json`` without ``_SUCCESS`` (a commit that did not finish), or only an
    unfinished run's staging directory and lock (a run still training, or killed)."""
    if SUMMARY_FILE in entries and SUCCESS_FILE not in entries:
        return f"{directory!r} is not a committed checkpoint: it has {SUMMARY_FILE} but no {SUCCESS_FILE}"
    if "config.json" not in entries and any(e.startswith(STAGING_PREFIX) or e == LOCK_FILE for e in entries):
        return (f"{directory!r} holds only an unfinished pairscore run ({_shown(entries)}): no checkpoint has been "
                "committed there yet")
    return None


def _shown(entries: Sequence[str]) -> str:
    return ", ".join(entries[:5]) + (f", ... ({len(entries) - 5} more)" if len(entries) > 5 else "")


def _model_config(flag: str, directory: str, expected: str) -> dict | None:
    """The parsed ``config.json`` of the checkpoint ``directory`` (None when it is not JSON: the
    loader explains that), after the checks every checkpoint shares: a directory, committed, with a
    config.json. PreflightError naming the path and ``expected`` otherwise."""
    if not os.path.isdir(directory):
        raise PreflightError(f"{flag} {directory!r} is a file, not a checkpoint directory ({expected})")
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return None                              # unreadable: the loader names the error
    unfinished = _not_committed(directory, entries)
    if unfinished:
        raise PreflightError(f"{flag} {unfinished} ({expected})")
    if "config.json" not in entries:
        raise PreflightError(f"{flag} {directory!r} is not a checkpoint: it has no config.json ({expected})")
    try:
        with codecs.open(os.path.join(directory, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _is_student(config: dict) -> bool:
    from encoders.config import CONFIG_FORMAT   # stdlib only
    return config.get("format") == CONFIG_FORMAT


def check_student_dir(model_dir: str | None, flag: str = "--model") -> None:
    """A local student checkpoint (``--model`` of encode_texts and score_pairs): a committed
    directory with its config, weights and encoder(s), and a pairscore student's config, not a
    teacher's or an encoder's."""
    if model_dir is None or _is_remote(model_dir):
        return
    if not os.path.exists(model_dir):
        raise PreflightError(f"model directory {model_dir!r} does not exist")
    config = _model_config(flag, model_dir, _STUDENT)
    if config is None:
        return                                   # the checkpoint reader explains a bad config
    if not _is_student(config) and ("model_type" in config or "architectures" in config):
        raise PreflightError(f"{flag} {model_dir!r} is a Hugging Face model (a teacher or an encoder), not a "
                             f"pairscore student checkpoint ({_STUDENT})")
    shared = config.get("shared_encoder", True)
    needed = ["student.safetensors"] + (["encoder"] if shared else ["left_encoder", "right_encoder"])
    missing = [name for name in needed if not os.path.exists(os.path.join(model_dir, name))]
    if missing:
        raise PreflightError(f"checkpoint {model_dir!r} is incomplete: missing {', '.join(missing)} (a checkpoint "
                             f"holds config.json, student.safetensors and {' or '.join(needed[1:])}/)")


def _could_be_hub_id(value: str) -> bool:
    """Whether ``value`` has the shape of a Hugging Face hub id (``name`` or ``owner/name``), which a
    teacher may be (loaded from the local cache): only a value that cannot be one is a missing path."""
    parts = value.split("/")
    return (len(parts) <= 2 and all(parts) and not value.startswith((".", "~"))
            and all(c.isalnum() or c in "-_." for part in parts for c in part))


def _cached_hub_model(repo_id: str) -> bool | None:
    """Whether the local Hugging Face cache holds the hub model ``repo_id``; None where downloads
    are allowed (the loader may fetch it). huggingface_hub's constants only (no torch)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    if not constants.HF_HUB_OFFLINE:
        return None
    return os.path.isdir(os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--")))


def check_teacher_dir(teacher: str | None, flag: str = "--teacher", hub_ids: bool = True) -> None:
    """A local teacher checkpoint (``--teacher`` of label_pairs, a teacher ``--model`` of evaluate):
    a committed directory with config.json, safetensors weights and a tokenizer, a cross-encoder
    (a sequence-classification model), not a pairscore student. A value that does not exist is a
    missing directory unless ``hub_ids`` and it may be a hub id that the loader can find (in the
    local cache, or anywhere while downloads are allowed)."""
    if teacher is None or _is_remote(teacher):
        return
    if not os.path.exists(teacher):
        if hub_ids and _could_be_hub_id(teacher):
            if _cached_hub_model(teacher) is not False:
                return
            raise PreflightError(f"{flag} {teacher!r} does not exist: it is no local directory, nor a hub model in the "
                                 f"local cache, and downloads are off (HF_HUB_OFFLINE) (expected a teacher checkpoint "
                                 f"directory: {_TEACHER})")
        raise PreflightError(f"{flag} {teacher!r} does not exist (expected a teacher checkpoint directory: {_TEACHER})")
    config = _model_config(flag, teacher, _TEACHER)
    if config is None:
        return
    if _is_student(config):
        raise PreflightError(f"{flag} {teacher!r} is a pairscore student checkpoint, not a teacher ({_TEACHER})")
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and not any(
            isinstance(a, str) and a.endswith("ForSequenceClassification") for a in architectures):
        raise PreflightError(f"{flag} {teacher!r} is not a trained cross-encoder: its config.json names "
                             f"{', '.join(map(str, architectures))}, which has no classification head ({_TEACHER}; "
                             "train one with python -m jobs.train_teacher --base ...)")
    missing = [] if any(os.path.exists(os.path.join(teacher, w)) for w in _TEACHER_WEIGHTS) else [_TEACHER_WEIGHTS[0]]
    if not any(os.path.exists(os.path.join(teacher, t)) for t in _TOKENIZER_FILES):
        missing.append("a tokenizer (tokenizer.json or tokenizer_config.json)")
    if missing:
        raise PreflightError(f"teacher {teacher!r} is incomplete: missing {' and '.join(missing)} (a teacher "
                             "checkpoint holds config.json, model.safetensors and its tokenizer)")


def check_model_dir(source: str, flag: str = "--model") -> None:
    """An evaluated model (evaluate's ``--model [NAME=]DIR``): a local teacher or student
    checkpoint directory, checked as its config.json says it is one or the other."""
    if _is_remote(source):
        return
    if not os.path.exists(source):
        raise PreflightError(f"{flag} {source!r} is not a model directory: it does not exist (expected a teacher or "
                             "student checkpoint directory, or `baseline`)")
    config = _model_config(flag, source, "a teacher or student checkpoint directory, or `baseline`")
    if config is not None and _is_student(config):
        check_student_dir(source, flag)
    else:
        check_teacher_dir(source, flag, hub_ids=False)


# --------------------------------------------------------------------------- stores

def check_store_dir(store: str | None, model_dir: str | None) -> None:
    """A local ``--store`` of score_pairs, checked in milliseconds before the model is loaded:

    * a two-side store (``STORE/left`` and ``STORE/right`` with their manifests), else the one line
      pipeline/store_paths.py gives (a job output instead of its ``store/``, one level too deep ...);
    * written by this ``--model``. A checkpoint's record (encoders/file_fingerprint.py: its weight
      fingerprint, and each file's size, which is checked) is compared with each manifest's
      ``model_fingerprint``; without a record, the checkpoint's file fingerprint is computed from
      its files and compared with a version 2 manifest's ``model_files_fingerprint`` (equal: the
      same files; different: left to the job, which compares the weight fingerprints). A store that
      a checkpoint wrote (version 2) is refused for the zero-training baseline (no ``--model``).

    Manifests that cannot be read here are left to the job, which names what is wrong."""
    from encoders.file_fingerprint import checkpoint_file_fingerprint, read_record, record_matches_sizes
    from pipeline.store_paths import is_two_side_store, manifest_paths, not_a_store_message

    if store is None or _is_remote(store) or (model_dir is not None and _is_remote(model_dir)):
        return
    if not is_two_side_store(store):
        raise PreflightError(not_a_store_message(store))
    manifests = {}
    for side, path in manifest_paths(store).items():
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return
        if not isinstance(data, dict) or not isinstance(data.get("model_fingerprint"), str):
            return
        manifests[path] = data
    if model_dir is None:
        written = [(path, data["model_files_fingerprint"]) for path, data in manifests.items()
                   if isinstance(data.get("model_files_fingerprint"), str)]
        if written:
            raise PreflightError(f"store {written[0][0]} was written by a student checkpoint (file fingerprint "
                                 f"{written[0][1][:16]}), and this run has no --model (the zero-training baseline): "
                                 "pass the --model that wrote the store, or leave out --store to encode afresh")
        return
    if not os.path.isdir(model_dir):
        return
    record = read_record(model_dir)
    if record is not None and record.get("weight_fingerprint") and record_matches_sizes(model_dir, record):
        have, what = record["weight_fingerprint"], "model fingerprint"
        key = "model_fingerprint"
    elif any(isinstance(d.get("model_files_fingerprint"), str) for d in manifests.values()):
        have, what, key = checkpoint_file_fingerprint(model_dir), "file fingerprint", "model_files_fingerprint"
        if all(d.get(key) != have for d in manifests.values()):
            return     # other files, maybe the same weights saved again: the job compares the weights
    else:
        return
    for path, data in manifests.items():
        if isinstance(data.get(key), str) and data[key] != have:
            raise PreflightError(f"store {os.path.dirname(path)!r} was written by another model: {what} "
                                 f"{data[key][:16]} != this model's {have[:16]} (--model {model_dir!r}). Use a store "
                                 "written with this --model, or leave out --store to encode afresh")
