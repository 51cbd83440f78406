"""File-level fingerprints of model directories: what a checkpoint's files hold, byte for byte.

Standard library only (hashlib, json, os): the pre-flight imports it before torch, Beam or
transformers, to match a model with a ``--store`` and to pin a local model in a second or so.

Two fingerprints name a model, and they answer different questions:

* the **weight fingerprint** (``Student.fingerprint``, ``CrossEncoder.fingerprint``,
  encoders/fingerprint.py): a hash of the config, tokenizer and every tensor. It is the model's
  *identity*, the same however the model was saved or loaded; stores, outputs and summaries
  record it, and it needs torch to compute.
* the **file fingerprint** (:func:`checkpoint_file_fingerprint`): a SHA-256 over the sorted
  (relative name, size, SHA-256) of the checkpoint's model files. It is a *content proof* of one
  saved copy: computed with the standard library, it tells before torch is imported whether the
  files are those a store was written from, and whether they changed since a run pinned them.
  The same model saved twice may have two file fingerprints; equal file fingerprints always mean
  equal weights.

Every checkpoint writer (``save_student``, ``save_teacher``) records both in :data:`RECORD_FILE`
inside the checkpoint (:func:`write_record`), so the pre-flight learns the weight fingerprint of
a model without loading it. The record is a claim, checked cheaply at the pre-flight (every
listed file present, of the listed size) and in full where the model is pinned (every file's
SHA-256, :func:`verify_entries`); a checkpoint without it (older ones) is fingerprinted on the
fly from its files.

Which files count (:func:`model_files`): those a loader may read and that cannot run code,
``*.safetensors``, ``*.json``, ``*.txt``, ``*.model``, in the directory and below it (a student's
``encoder/``), the same rule by which remote models are copied (encoders/remote.py). Left out:
the record itself, and top-level names starting with ``_`` or ``.``, which are a pairscore
output's bookkeeping (``_SUMMARY.json``, ``_SUCCESS``, ``_dead_letter/``) written after the save.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Sequence

from encoders.errors import ModelError

RECORD_FILE = "fingerprint.json"
RECORD_FORMAT = "pairscore-checkpoint-files"
# What a model directory may hold that is read (and copied from a remote store): data formats
# that cannot execute code.
MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".txt", ".model")

_CHUNK_BYTES = 8 << 20

# (relative name with "/" separators, size in bytes, SHA-256 hex)
FileEntry = tuple[str, int, str]


class ModelChanged(ModelError):
    """A model file differs from what was pinned or recorded; the message names the file.

    A usage error (a bad model, exit 2) where it is found before the run starts; the pipeline's
    model handlers turn it into ``pipeline.errors.InputChanged`` (exit 3) when a worker finds it."""


def counted_name(relative: str) -> bool:
    """Whether the file at ``relative`` (``/``-separated, inside a model directory) is part of the
    model (see the module docstring)."""
    top = relative.split("/", 1)[0]
    return (relative.endswith(MODEL_FILE_SUFFIXES) and relative != RECORD_FILE
            and not top.startswith(("_", ".")))


def model_files(model_dir: str | os.PathLike) -> dict[str, str]:
    """{relative name: absolute path} of the files of a local model directory that count."""
    root = os.fspath(model_dir)
    found = {}
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        for name in names:
            full = os.path.join(directory, name)
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            if counted_name(relative) and os.path.isfile(full):
                found[relative] = full
    return found


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex of a file's bytes, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(model_dir: str | os.PathLike) -> tuple[FileEntry, ...]:
    """(relative name, size, SHA-256) of every file of the model directory that counts, by name.
    Reads every such file once."""
    return tuple((relative, os.path.getsize(full), file_sha256(full))
                 for relative, full in sorted(model_files(model_dir).items()))


def files_digest(entries: Iterable[FileEntry]) -> str:
    """The file fingerprint of a set of entries: SHA-256 hex (64 characters) over each counted
    entry's name, size and content hash, in name order."""
    digest = hashlib.sha256()
    for relative, size, sha in sorted(entry for entry in entries if counted_name(entry[0])):
        digest.update(f"{relative}\0{size}\0{sha}\n".encode())
    return digest.hexdigest()


def checkpoint_file_fingerprint(model_dir: str | os.PathLike) -> str:
    """The file fingerprint of the local model directory ``model_dir`` as its files are now:
    SHA-256 hex over the sorted (relative name, size, SHA-256) of its model files (see the module
    docstring). Computed from the files (each read once, ~0.1 s per 100 MB), never taken from the
    record, so it proves what is on disk; compare it with a store manifest's
    ``model_files_fingerprint`` or with :func:`read_record`'s ``file_fingerprint``.

    Raises:
        ModelChanged: ``model_dir`` holds no model file (none of the counted kinds).
    """
    entries = file_entries(model_dir)
    if not entries:
        raise ModelChanged(f"model directory {os.fspath(model_dir)!r} holds no model file "
                           f"({', '.join('*' + s for s in MODEL_FILE_SUFFIXES)})")
    return files_digest(entries)


def write_record(model_dir: str | os.PathLike, weight_fingerprint: str | None) -> dict:
    """Write :data:`RECORD_FILE` into the checkpoint being saved at ``model_dir`` (after its model
    files): the file fingerprint, the weight fingerprint and the file entries. Returns the record."""
    entries = file_entries(model_dir)
    record = {"format": RECORD_FORMAT, "version": 1, "file_fingerprint": files_digest(entries),
              "weight_fingerprint": weight_fingerprint, "files": [list(entry) for entry in entries]}
    with open(os.path.join(model_dir, RECORD_FILE), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record, indent=1) + "\n")
    return record


def read_record(model_dir: str | os.PathLike) -> dict | None:
    """The record a checkpoint writer left in ``model_dir`` (keys ``file_fingerprint``,
    ``weight_fingerprint``, ``files`` as [name, size, sha256] lists), or None when there is none
    or it is not one (an older checkpoint, a hand-made directory): callers then compute the file
    fingerprint from the files. Only its shape is checked here, not that the files match it."""
    try:
        with open(os.path.join(model_dir, RECORD_FILE), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and record.get("format") == RECORD_FORMAT
            and isinstance(record.get("file_fingerprint"), str) and isinstance(record.get("files"), list)
            and all(isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[1], int)
                    and isinstance(e[2], str) for e in record["files"])):
        return None
    if not isinstance(record.get("weight_fingerprint"), (str, type(None))):
        return None
    return record


def record_matches_sizes(model_dir: str | os.PathLike, record: dict) -> bool:
    """The cheap proof: the directory holds exactly the recorded files, each of the recorded size
    (no content is read). True says the record very probably describes the files; the full proof
    is :func:`verify_entries`."""
    present = model_files(model_dir)
    listed = {name: size for name, size, _ in record["files"]}
    return set(present) == set(listed) and all(os.path.getsize(present[n]) == s for n, s in listed.items())


def verify_entries(model_dir: str | os.PathLike, entries: Sequence[FileEntry], what: str) -> None:
    """ModelChanged naming the first file that differs unless ``model_dir`` holds exactly the files
    of ``entries``, each of its size (checked first, for every file: cheap) and SHA-256.
    ``what`` ends the message: why the files had to stay as they were."""
    present = model_files(model_dir)
    listed = {name: (size, sha) for name, size, sha in entries}
    problem = None
    extra = sorted(set(present) - set(listed))
    missing = sorted(set(listed) - set(present))
    if extra:
        problem = f"{present[extra[0]]} was added"
    elif missing:
        problem = f"{os.path.join(os.fspath(model_dir), missing[0])} was removed"
    else:
        for name in sorted(listed):
            size = os.path.getsize(present[name])
            if size != listed[name][0]:
                problem = f"{present[name]} has {size} bytes, not {listed[name][0]}"
                break
        else:
            for name in sorted(listed):
                if file_sha256(present[name]) != listed[name][1]:
                    problem = f"{present[name]} does not hold the same bytes (SHA-256 differs)"
                    break
    if problem:
        raise ModelChanged(f"model file {problem}: {what}")
