"""Model directories on any Beam filesystem, loaded from a verified local copy, and saved
atomically.

The one module of encoders/ that touches Beam (its ``FileSystems`` only).

A student checkpoint or a teacher is a directory of JSON, safetensors and tokenizer files, and
Hugging Face and safetensors load from local files only. So a directory on ``gs://``, ``s3://``,
``hdfs://`` (any scheme Beam's ``FileSystems`` knows) is copied into a local cache first::

    local_model_dir("gs://bucket/students/v3")   ->  "~/.cache/pairscore/models/3f1c0a…"
    local_model_dir("students/v3")               ->  "students/v3"   (local: unchanged)

* Only files that hold data and cannot run code are copied: ``*.safetensors``, ``*.json`` and
  the tokenizer vocabularies (``*.txt`` such as vocab.txt and merges.txt, SentencePiece
  ``*.model``). Pickles (``*.bin``, ``*.pt``, ``*.pkl`` ...) and anything else stay on the
  remote store, so nothing copied here can ever be unpickled.
* A copy is described by a :class:`ModelPin`: every copied file's relative name, size and
  SHA-256. The copy's directory is named by a SHA-256 over them (:attr:`ModelPin.digest`), so a
  model that changes on the remote store gets a new directory and processes that copied the same
  model share one. A copy is written under a temporary name and committed by rename, so a
  half-copied model is never loaded.
* **One model per run.** The launching process pins the model (:func:`pin_model_dir`): it copies
  it and passes the pin, inside the path it hands to the workers (:class:`PinnedModelDir`, a
  ``str``), so every worker loads exactly those bytes. A worker that finds the pinned copy in its
  cache uses it; otherwise it copies the pinned files (and only those) and checks each against
  the pin as it arrives: a file replaced on the remote store since the launch stops the run with
  an error naming it, instead of mixing two models' embeddings under one fingerprint.
* **Verified on every use.** Each time a copy is handed out (first use or not, made by this
  process or found in the cache) its files are checked against the pin: exactly the pinned
  files, each of the pinned size and SHA-256. A copy changed in the cache is refused, naming the
  file, never loaded.
* **Local models are pinned too** (:func:`pin_model_dir`): the pin lists their files' sizes and
  SHA-256 where they are, and every load checks the directory against it first, so a model
  directory replaced after the run checked it stops the run (``ModelChanged``, naming the file).
* Without a pin (a process that loads a remote model on its own) each load lists the remote
  directory again (one call), so a model replaced on the remote store is copied afresh.

The cache lives in ``$PAIRSCORE_MODEL_CACHE``, by default the user's own
``$XDG_CACHE_HOME/pairscore/models`` (``~/.cache/pairscore/models``), created readable and
writable by that user only (mode 0700): not a directory every user of the machine can write.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import shutil
import stat
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from encoders.file_fingerprint import (MODEL_FILE_SUFFIXES, ModelChanged, file_entries, file_sha256, files_digest,
                                       verify_entries)
from encoders.errors import ModelError, UsageError

CACHE_ENV = "PAIRSCORE_MODEL_CACHE"
# What a model directory may hold that is copied: data formats that cannot execute code.
COPIED_SUFFIXES = MODEL_FILE_SUFFIXES

_COPY_CHUNK_BYTES = 8 << 20
_LOG = logging.getLogger(__name__)
# remote directory -> (its listing when copied, the copy's pin), for this process. The lock makes
# threads of one worker (DoFn.setup may run in several) wait for one copy instead of each making one.
_COPIES: dict[str, tuple[tuple, "ModelPin"]] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelPin:
    """The exact files of one copy of a model: (relative name, size in bytes, SHA-256 hex) each,
    sorted by name."""
    files: tuple[tuple[str, int, str], ...]

    @property
    def digest(self) -> str:
        """The copy's directory name: a SHA-256 over every file's name and content hash."""
        digest = hashlib.sha256()
        for relative, _, sha in self.files:
            digest.update(f"{relative}\0{sha}\n".encode())
        return digest.hexdigest()[:32]

    @property
    def fingerprint(self) -> str:
        """The model's file fingerprint (encoders/file_fingerprint.py): what a store written with
        this model records as ``model_files_fingerprint``."""
        return files_digest(self.files)


class PinnedModelDir(str):
    """A model directory (the string, as given; local or remote) that carries the
    :class:`ModelPin` the launching process took. It travels wherever the job's model path
    travels (settings pickled to the workers), and :func:`local_model_dir` loads exactly the
    pinned bytes from it."""

    pin: ModelPin

    def __new__(cls, path: str, pin: ModelPin) -> "PinnedModelDir":
        pinned = super().__new__(cls, path)
        pinned.pin = pin
        return pinned

    def __reduce__(self):
        return PinnedModelDir, (str(self), self.pin)


def is_remote(path: str) -> bool:
    """True for a path on a Beam filesystem other than the local disk (it has a ``scheme://``)."""
    return FileSystems.get_scheme(path) is not None


def cache_root() -> str:
    """``$PAIRSCORE_MODEL_CACHE``, or this user's own cache directory (see the module docstring)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pairscore", "models")


def _private_cache_root() -> str:
    """The cache root, made if missing with mode 0700 (the user's own). Refused (ValueError, one
    line) when another user could put files there that this process would load: a root owned by
    another user (root aside), or one that others may write without the sticky bit. The default
    root, when it is ours but open to others (an old umask), is closed instead."""
    root = cache_root()
    os.makedirs(root, mode=0o700, exist_ok=True)
    info = os.stat(root)
    ours = info.st_uid == os.getuid()
    if ours and os.environ.get(CACHE_ENV) is None and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        os.chmod(root, 0o700)   # ours, but open to others (an old umask): close it
        return root
    where = f"model cache {root}" + (f" (${CACHE_ENV})" if os.environ.get(CACHE_ENV) else "")
    if not ours and info.st_uid != 0:
        raise UsageError(f"{where} belongs to {_user_name(info.st_uid)}, not to this user "
                         f"({_user_name(os.getuid())}): models copied there could be replaced by its owner; "
                         f"set {CACHE_ENV} to a directory of your own")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise UsageError(f"{where} may be written by other users (mode {stat.S_IMODE(info.st_mode):o}, no sticky "
                         f"bit): models copied there could be replaced; make it private (chmod 700) or set "
                         f"{CACHE_ENV} to a directory of your own")
    return root


def _user_name(uid: int) -> str:
    try:
        import pwd
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def pin_model_dir(path: str | None) -> str | None:
    """What the launching process hands on as the model path: a :class:`PinnedModelDir` carrying
    the size and SHA-256 of every model file, so that every worker loads exactly these bytes.
    A remote directory is copied now (the pin is of the copy); a local directory is pinned where it
    is (its files are read once to hash them). A hub id or None is returned as it is."""
    if path is None or isinstance(path, PinnedModelDir):
        return path
    if not is_remote(str(path)):
        if not os.path.isdir(path):
            return path
        return PinnedModelDir(str(path), ModelPin(file_entries(path)))
    with _LOCK:
        _, pin = _current_copy(str(path))
    return PinnedModelDir(str(path), pin)


def pinned_file_fingerprint(path: str | None) -> str | None:
    """The file fingerprint (encoders/file_fingerprint.py) of a :class:`PinnedModelDir`'s pinned
    files, what a store written with that model records; None for anything unpinned (the
    baseline, a hub id)."""
    pin = getattr(path, "pin", None)
    return pin.fingerprint if pin is not None else None


def local_model_dir(path: str) -> str:
    """A local directory holding the model directory ``path``: ``path`` itself when it is local
    (or a hub id), else a verified copy of it in the cache (see the module docstring): the pinned
    files when ``path`` is a :class:`PinnedModelDir`, what the remote directory holds now otherwise.
    A pinned local directory is verified against its pin first (sizes, then SHA-256).

    Raises:
        ModelChanged (a ValueError): a pinned local directory whose files differ from the pin,
            naming the first file that does.
        ValueError: a remote ``path`` with no model files under it, or with a file whose name
            would land outside the copy; a pinned file that changed on the remote store since the
            pin was taken (ModelChanged too); a cached copy that no longer matches its pin (each
            naming the file).
    """
    pin = getattr(path, "pin", None)
    path = str(path)
    if not is_remote(path):
        if pin is not None:
            verify_entries(path, pin.files, f"it changed after this run pinned the model {path} at its start. Every "
                           "worker must load the model the run checked: the run is stopped rather than label one "
                           "model's scores with another's name; start it again once the model is in place")
        return path
    with _LOCK:
        if pin is None:
            local, pin = _current_copy(path)
        else:
            local = os.path.join(_private_cache_root(), pin.digest)
            if not os.path.isdir(local):
                local, _ = _copy(path, [(relative, FileSystems.join(path.rstrip("/"), relative))
                                        for relative, _, _ in pin.files], pin)
        _verify(local, pin, path)
        return local


def _current_copy(path: str) -> tuple[str, ModelPin]:
    """(local copy, pin) of what the remote directory holds now; copied again only when its
    listing changed since this process copied it. The caller holds ``_LOCK``."""
    files, skipped = _list_model_files(path)
    # A listing (names, sizes, modification times) is one cheap call; it tells whether the copy
    # this process made still stands for what is on the remote store now.
    listing = tuple((name, metadata.size_in_bytes, metadata.last_updated_in_seconds)
                    for name, metadata in sorted(files.items()))
    known = _COPIES.get(path)
    if known is None or known[0] != listing or not os.path.isdir(os.path.join(cache_root(), known[1].digest)):
        if skipped:
            _LOG.info("model directory %s: not copied (not safetensors, JSON or a tokenizer vocabulary): %s",
                      path, ", ".join(sorted(skipped)))
        _, pin = _copy(path, [(relative, files[relative].path) for relative in sorted(files)], None)
        known = _COPIES[path] = (listing, pin)
    return os.path.join(cache_root(), known[1].digest), known[1]


def _list_model_files(remote: str) -> tuple[dict, list[str]]:
    """({relative name: FileMetadata} of the files to copy, [relative names left behind])."""
    base = remote.rstrip("/")
    files, skipped = {}, []
    for metadata in _list_recursively(base):
        relative = posixpath.normpath(metadata.path[len(base):].lstrip("/"))
        if relative.startswith("..") or posixpath.isabs(relative):
            raise ModelError(f"model directory {remote!r}: file {metadata.path!r} lies outside it")
        if relative.endswith(COPIED_SUFFIXES):
            files[relative] = metadata
        else:
            skipped.append(relative)
    if not files:
        raise ModelError(f"model directory {remote!r} does not exist (no model files under it: expected "
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


def _copy(remote: str, files: list[tuple[str, str]], pin: ModelPin | None) -> tuple[str, ModelPin]:
    """Copy ``files`` ((relative name, remote path) each) into the cache -> (the copy's local
    path, the pin of what was copied).

    With ``pin``, each file must arrive with the pinned size and SHA-256 (ValueError naming it
    otherwise: the remote model changed since the pin was taken)."""
    root = _private_cache_root()
    partial = os.path.join(root, f".partial-{os.getpid()}-{uuid.uuid4().hex}")
    expected = {relative: (size, sha) for relative, size, sha in pin.files} if pin is not None else {}
    found = []
    try:
        for relative, source_path in files:
            target = os.path.join(partial, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            file_digest = hashlib.sha256()
            size = 0
            # UNCOMPRESSED: a file named *.gz must arrive as its bytes, not decompressed.
            try:
                with FileSystems.open(source_path, compression_type=CompressionTypes.UNCOMPRESSED) as source, \
                        open(target, "wb") as sink:
                    while chunk := source.read(_COPY_CHUNK_BYTES):
                        file_digest.update(chunk)
                        size += len(chunk)
                        sink.write(chunk)
            except (BeamIOError, OSError) as err:
                if pin is None:
                    raise
                raise ModelChanged(f"model file {source_path} cannot be read any more ({err}); this run pinned "
                                 f"the model {remote} at its start and every worker must load those files: "
                                 "restore it, or start the run again") from None
            if pin is not None and (size, file_digest.hexdigest()) != expected[relative]:
                raise ModelChanged(f"model file {source_path} changed after this run started (pinned: "
                                 f"{expected[relative][0]} bytes, SHA-256 {expected[relative][1][:16]}…; now: {size} "
                                 f"bytes, SHA-256 {file_digest.hexdigest()[:16]}…). Every worker must score with "
                                 "the model the run started with: the run is stopped rather than mix two models; "
                                 "start it again once the model is in place")
            found.append((relative, size, file_digest.hexdigest()))
        copied = ModelPin(tuple(sorted(found)))
        final = os.path.join(root, copied.digest)
        try:
            os.rename(partial, final)
        except OSError:
            if not os.path.isdir(final):  # not "another process committed the same model first"
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _LOG.info("model directory %s copied to %s", remote, final)
    return final, copied


def _cached_files(local: str) -> dict[str, str]:
    """{relative name: absolute path} of every file under a cached copy."""
    found = {}
    for directory, _, names in os.walk(local):
        for name in names:
            full = os.path.join(directory, name)
            found[os.path.relpath(full, local).replace(os.sep, "/")] = full
    return found


def _verify(local: str, pin: ModelPin, remote: str) -> None:
    """ValueError naming the file unless ``local`` holds exactly the pinned files, each of the
    pinned size (checked first: cheap) and SHA-256."""
    present = _cached_files(local)
    problem = None
    extra = sorted(set(present) - {relative for relative, _, _ in pin.files})
    if extra:
        problem = f"{os.path.join(local, extra[0])} is not part of the model"
    for relative, size, sha in pin.files:
        if problem:
            break
        full = present.get(relative)
        if full is None:
            problem = f"{os.path.join(local, relative)} is missing"
        elif os.path.getsize(full) != size:
            problem = f"{full} has {os.path.getsize(full)} bytes, not the {size} copied"
        elif file_sha256(full) != sha:
            problem = f"{full} does not hold the bytes copied (SHA-256 differs)"
    if problem:
        raise ModelError(f"the cached copy of model {remote} was changed after it was made: {problem}. It is not "
                         f"loaded; delete {local} (pairscore copies the model again)")


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
            raise UsageError(f"{str(directory)!r} holds {', '.join(foreign[:5])}, which a save would delete: "
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
