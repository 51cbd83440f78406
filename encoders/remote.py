"""Model directories on any Beam filesystem, loaded from a local copy, and saved atomically.

The one module of encoders/ that touches Beam (its ``FileSystems`` only).

A student checkpoint or a teacher is a directory of JSON, safetensors and tokenizer files, and
Hugging Face and safetensors load from local files only. So a directory on ``gs://``, ``s3://``,
``hdfs://`` (any scheme Beam's ``FileSystems`` knows) is copied into a local cache first::

    local_model_dir("gs://bucket/students/v3")   ->  "/tmp/pairscore-models/3f1c0a…"
    local_model_dir("students/v3")               ->  "students/v3"   (local: unchanged)

* Only files that hold data and cannot run code are copied: ``*.safetensors``, ``*.json`` and
  the tokenizer vocabularies (``*.txt`` such as vocab.txt and merges.txt, SentencePiece
  ``*.model``). Pickles (``*.bin``, ``*.pt``, ``*.pkl`` ...) and anything else stay on the
  remote store, so nothing copied here can ever be unpickled.
* The copy's directory is named by a SHA-256 over every copied file's relative name and bytes:
  a model that changes on the remote store gets a new directory, and processes that copied the
  same model share one. A copy is written under a temporary name and committed by rename, so a
  half-copied model is never loaded.
* Each process copies a given directory once: the driver and every ``DoFn.setup`` of one worker
  process that load the same ``--model`` (stage one, stage two, both sides) share the copy. Each
  load lists the remote directory again (one call), so a model replaced on the remote store is
  copied afresh rather than served stale.

The cache lives in ``$PAIRSCORE_MODEL_CACHE``, by default ``<tempdir>/pairscore-models``.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Callable, Iterator

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

CACHE_ENV = "PAIRSCORE_MODEL_CACHE"
# What a model directory may hold that is copied: data formats that cannot execute code.
COPIED_SUFFIXES = (".safetensors", ".json", ".txt", ".model")

_COPY_CHUNK_BYTES = 8 << 20
_LOG = logging.getLogger(__name__)
# remote directory -> (its listing when copied, its local copy), for this process. The lock makes
# threads of one worker (DoFn.setup may run in several) wait for one copy instead of each making one.
_COPIES: dict[str, str] = {}
_LOCK = threading.Lock()


def is_remote(path: str) -> bool:
    """True for a path on a Beam filesystem other than the local disk (it has a ``scheme://``)."""
    return FileSystems.get_scheme(path) is not None


def cache_root() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "pairscore-models")


def local_model_dir(path: str) -> str:
    """A local directory holding the model directory ``path``: ``path`` itself when it is local
    (or a hub id), else this process's copy of it (made on first use; see the module docstring).

    Raises:
        ValueError: a remote ``path`` with no model files under it, or with a file whose name
            would land outside the copy.
    """
    path = str(path)
    if not is_remote(path):
        return path
    files, skipped = _list_model_files(path)
    # A listing (names, sizes, modification times) is one cheap call; it tells whether the copy
    # this process made still stands for what is on the remote store now.
    listing = tuple((name, metadata.size_in_bytes, metadata.last_updated_in_seconds)
                    for name, metadata in sorted(files.items()))
    with _LOCK:
        known = _COPIES.get(path)
        if known is None or known[0] != listing or not os.path.isdir(known[1]):
            if skipped:
                _LOG.info("model directory %s: not copied (not safetensors, JSON or a tokenizer vocabulary): %s",
                          path, ", ".join(sorted(skipped)))
            known = _COPIES[path] = (listing, _copy(path, files))
        return known[1]


def _list_model_files(remote: str) -> tuple[dict, list[str]]:
    """({relative name: FileMetadata} of the files to copy, [relative names left behind])."""
    base = remote.rstrip("/")
    files, skipped = {}, []
    for metadata in _list_recursively(base):
        relative = posixpath.normpath(metadata.path[len(base):].lstrip("/"))
        if relative.startswith("..") or posixpath.isabs(relative):
            raise ValueError(f"model directory {remote!r}: file {metadata.path!r} lies outside it")
        if relative.endswith(COPIED_SUFFIXES):
            files[relative] = metadata
        else:
            skipped.append(relative)
    if not files:
        raise ValueError(f"model directory {remote!r} does not exist (no model files under it: expected "
                         f"config.json and *.safetensors)")
    return files, skipped


def _list_recursively(base: str, depth: int = 3) -> list:
    """FileMetadata of every file under ``base``.

    Object stores (gs://, s3://) have no directories: one listing of the prefix returns every
    object under it. Filesystems with directories (hdfs://) list one level at a time, showing
    subdirectories (a checkpoint's ``encoder/``) as entries, which are listed in turn."""
    if not FileSystems.get_filesystem(base).has_dirs():
        return FileSystems.match([FileSystems.join(base, "**")])[0].metadata_list
    found = []
    for metadata in FileSystems.match([FileSystems.join(base, "*")])[0].metadata_list:
        name = metadata.path.rstrip("/").rsplit("/", 1)[-1]
        if depth and "." not in name:  # no extension: perhaps a directory
            try:
                inside = _list_recursively(metadata.path.rstrip("/"), depth - 1)
            except BeamIOError:  # a file after all (listing a file fails)
                inside = None
            if inside:
                found.extend(inside)
                continue
        found.append(metadata)
    return found


def _copy(remote: str, files: dict) -> str:
    """Copy ``files`` (see :func:`_list_model_files`) into the cache; the copy's local path."""
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    partial = os.path.join(root, f".partial-{os.getpid()}-{uuid.uuid4().hex}")
    digest = hashlib.sha256()
    try:
        for relative in sorted(files):
            target = os.path.join(partial, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            file_digest = hashlib.sha256()
            # UNCOMPRESSED: a file named *.gz must arrive as its bytes, not decompressed.
            with FileSystems.open(files[relative].path, compression_type=CompressionTypes.UNCOMPRESSED) as source, \
                    open(target, "wb") as sink:
                while chunk := source.read(_COPY_CHUNK_BYTES):
                    file_digest.update(chunk)
                    sink.write(chunk)
            digest.update(f"{relative}\0{file_digest.hexdigest()}\n".encode())
        final = os.path.join(root, digest.hexdigest()[:32])
        try:
            os.rename(partial, final)
        except OSError:
            if not os.path.isdir(final):  # not "another process committed the same model first"
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _LOG.info("model directory %s copied to %s", remote, final)
    return final


# --------------------------------------------------------------------------- checkpoints


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, allowed: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Yield a fresh directory beside ``directory``; when the block succeeds it replaces
    ``directory`` by rename (the old one is renamed aside first, then removed), so ``directory``
    is always either the old complete tree, the new complete tree, or briefly absent — never
    half-written. On failure the temporary directory is removed and ``directory`` is untouched.

    ``allowed(name)``: which entries an existing ``directory`` may hold (a previous save); any
    other entry is refused rather than deleted. Local paths only (checkpoints are local).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists():
        foreign = sorted(n for n in os.listdir(directory) if allowed is not None and not allowed(n))
        if foreign:
            raise ValueError(f"{str(directory)!r} holds {', '.join(foreign[:5])}, which a save would delete: "
                             "save a checkpoint to a new or empty directory")
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.saving-", dir=directory.parent))
    try:
        yield temporary
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(directory, old)
        os.rename(temporary, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
