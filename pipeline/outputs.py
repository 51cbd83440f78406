"""Where jobs write, and how a run's output is committed (THE one place for both).

Layout (the CLI contract, "one table per directory")
----------------------------------------------------
Every directory holding Parquet part files holds exactly one table, so ``pandas.read_parquet(DIR)``,
``pyarrow.dataset.dataset(DIR)``, DuckDB ``read_parquet('DIR/*.parquet')`` and Spark read it by
name. Everything else beside a table starts with ``_`` (those readers skip it): ``_SUMMARY.json``,
``_MANIFEST.json`` (stores, distillation sets), ``_SUCCESS``, ``_dead_letter/``, and while a run
is going ``_LOCK`` and ``_temporary-<run id>/``. One-table jobs write their part files directly in
``OUT/``; ``score_pairs`` writes ``OUT/scores/``, ``OUT/store/left/``, ``OUT/store/right/``.

Commit protocol (every job, through :func:`open_output` and :meth:`OutputDir.commit`)
-------------------------------------------------------------------------------------
Paths are literal: ``--output`` never acts as a pattern (an output path holding ``*``, ``?`` or
``[`` is refused, since Beam's writers would match it), and every listing, delete and existence
check of a path pairscore was given is literal (the OS calls locally, escaped patterns through
Beam's FileSystems elsewhere, pipeline/paths.py).

1. Before anything is touched, ``--output`` is checked: not a file, not inside nor containing an
   input, ``--store``, ``--previous``, ``--model`` or ``--teacher`` path (after resolving
   symlinks: each match of a glob, and every link inside a directory), not locked by a live run,
   and empty — or, with ``--overwrite``, holding only an earlier pairscore output (the files its
   ``_SUMMARY.json`` lists) and the leftovers of interrupted pairscore runs (staging directories
   holding pairscore's ``_PAIRSCORE_STAGING.json``, lock copies of dead holders). A ``_SUCCESS``,
   a manifest or a dead lock proves nothing; anything else is named and left alone (exit 2).
2. ``OUT/_LOCK`` is created atomically (``O_CREAT|O_EXCL``) holding pid, host, start time and job.
   A second run on the same output fails naming the holder; the lock of a dead process on this
   host is named and taken over. Object stores (``gs://``, ``s3://``) have no exclusive create
   through Beam's FileSystems: there the lock is best effort (check, write, read back).
3. Leftovers of interrupted runs are cleaned up under the lock: a commit that was cut short is
   rolled back from its plan (the earlier output comes back as it was), other staging removed.
   The earlier output itself is not touched: it stays complete and readable until the commit.
4. The run writes everything under ``OUT/_temporary-<run id>/`` (the final layout, mirrored),
   whose first file is the staging marker.
5. Driver side, after ``wait_until_finish()`` and after the counts reconcile, the job writes its
   manifests (into the staging directory) and calls :meth:`OutputDir.commit`: the summary and an
   empty ``_SUCCESS`` are written into staging, then the plan of every move (``_COMMIT.json``),
   then the earlier output's files are moved aside (``_SUCCESS`` first) and the new data files,
   manifests, ``_SUMMARY.json`` and ``_SUCCESS`` moved into place, each by ``FileSystems.rename``
   (an atomic rename locally; copy + delete on object stores). The run has committed when its
   ``_SUCCESS`` is in place; then the staging directory (with the earlier output) and the lock
   go. Jobs therefore always wait for their pipeline: a runner launched without waiting would
   never reach the commit and leave no ``_SUCCESS``.
6. A run that fails or is interrupted (an exception, Ctrl-C, SIGTERM) rolls back whatever part
   of its commit happened, judging each move from the files themselves, so ``OUT`` is the earlier
   output again (:func:`abort_output_on_failure`); a commit whose ``_SUCCESS`` is in place is kept
   whole. A killed run leaves only its marked staging directory and a stale ``_LOCK``, which the
   next ``--overwrite`` run takes over, rolling back the commit if it had begun.

Checkpoints are saved the same way (``encoders.remote.atomic_directory``, re-exported here): written
to a temporary directory beside the target and renamed into place, so a crash never leaves a
half-written model.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import fnmatch
import functools
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from encoders.remote import atomic_directory  # noqa: F401  (the checkpoints' commit; lives below pipeline/)
from pipeline.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter
from pipeline.lock import UNREADABLE_LOCK, LockHolder, in_use, parse_lock
from pipeline.paths import escape_glob, has_glob
from pipeline.provenance import stamped
from pipeline.store import MANIFEST_FILE, STORE_FILE_PREFIX, STORE_FILE_SUFFIX
from pipeline.writers import write_parquet_file

DEAD_LETTER_DIR = "_dead_letter"
SUMMARY_FILE = "_SUMMARY.json"
SUCCESS_FILE = "_SUCCESS"
LOCK_FILE = "_LOCK"
STAGING_PREFIX = "_temporary-"
# Inside the staging directory: a checkpoint (train_student, train_teacher) that is committed to OUT/ itself.
STAGED_CHECKPOINT = "_checkpoint"
# Names that prove a directory was written by a pairscore job (the markers it commits last).
MARKERS = (SUCCESS_FILE, SUMMARY_FILE, MANIFEST_FILE)


class OutputError(ValueError):
    """A bad or busy ``--output``: one line, exit status 2 (jobs.common.run_job)."""


# --------------------------------------------------------------------------- paths


def is_remote(path: str) -> bool:
    return "://" in path


def normalise(path: str) -> str:
    """An absolute, normalised path (symlinks resolved locally) to compare paths by containment."""
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{os.path.normpath('/' + rest).lstrip('/')}".rstrip("/")
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _is_glob(part: str) -> bool:
    return has_glob(part)


def glob_base(path: str) -> str:
    """A glob's directory part (``data/2024-*/x.jsonl`` -> ``data``); a plain path itself."""
    parts = path.replace("\\", "/").split("/")
    for index, part in enumerate(parts):
        if _is_glob(part):
            return "/".join(parts[:index]) or "."
    return path


def local_path_or_none(value: str | None) -> str | None:
    """``value`` if it names an existing local path (a model directory), else None (a hub id)."""
    return value if value and not is_remote(value) and os.path.exists(value) else None


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _glob_reaches(pattern: str, out: str) -> bool:
    """Whether a glob can match ``out`` or anything inside it (``**`` reaches everything below)."""
    pattern_parts, out_parts = pattern.split("/"), out.split("/")
    for have, want in zip(out_parts, pattern_parts):
        if "**" in want:
            return True
        if not fnmatch.fnmatchcase(have, want):
            return False
    return True


_LINK_DEPTH = 3   # how deep below a directory the overlap guard looks for links


def _resolved(path: str) -> list[tuple[str, str]]:
    """What a local path the run reads really is, as (how it was reached, absolute real path):
    the path itself (symlinks resolved), or for a glob that does not exist literally each of its
    matches; and, inside every directory among them, the target of each symlink found there (a
    store's ``left`` -> elsewhere, a model file linked from a cache), followed into linked
    directories. The overlap guard compares every one of them with ``--output``."""
    if os.path.lexists(path) or not has_glob(path):
        tops = [path]
    else:   # matched as the readers match it (Beam's ``**`` crosses directories)
        try:
            tops = sorted(m.path for m in FileSystems.match([path])[0].metadata_list)
        except Exception:  # noqa: BLE001 - a glob that cannot be listed reads nothing
            tops = []
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    pending = [(top, top) for top in tops]
    while pending:
        via, name = pending.pop()
        real = normalise(name)
        found.append((via, real))
        if real in seen or not os.path.isdir(real):
            continue
        seen.add(real)
        for root, dirs, files in os.walk(real):
            for entry in dirs + files:
                full = os.path.join(root, entry)
                if os.path.islink(full):
                    pending.append((full, full))
            if os.path.relpath(root, real).count(os.sep) >= _LINK_DEPTH - 2:
                dirs.clear()   # deeper than any job reads (store/left/part-*, model/encoder/*)
    return found


def check_no_overlap(output: str, related: Mapping[str, Iterable[str | None]]) -> None:
    """Refuse an ``--output`` that contains, or is inside, any path the run reads (``related``:
    flag -> paths): ``--overwrite`` would replace it, and a run would read what it writes.

    Every local path is resolved first (:func:`_resolved`: symlinks, each match of a glob, the
    links inside a directory). A glob also counts as its directory part, except that an output
    inside that directory is allowed when the glob cannot match it (``--input 'data/*.jsonl'
    --output data/store``)."""
    out = normalise(output)
    for flag, paths in related.items():
        for path in paths:
            if not path:
                continue
            base = normalise(glob_base(path)) if not (not is_remote(path) and os.path.lexists(path)) else None
            if base is not None:
                if _within(base, out):
                    where = "is" if base == out else "contains"
                    raise OutputError(f"--output {output!r} {where} {flag} {path!r}: write the output to a directory "
                                      f"that holds none of the job's inputs")
                if _within(out, base) and (base == normalise(path) or _glob_reaches(_normalise_glob(path), out)):
                    raise OutputError(f"--output {output!r} is inside {flag} {path!r}: write the output outside "
                                      f"the job's inputs")
            if is_remote(path):
                continue
            for via, real in _resolved(path):
                how = "" if via == path and real == normalise(path) else f" ({via} is {real})"
                if _within(real, out):
                    where = "is" if real == out else "contains"
                    raise OutputError(f"--output {output!r} {where} {flag} {path!r}{how}: write the output to a "
                                      f"directory that holds none of the job's inputs")
                if _within(out, real):
                    raise OutputError(f"--output {output!r} is inside {flag} {path!r}{how}: write the output "
                                      f"outside the job's inputs")


def _normalise_glob(path: str) -> str:
    """A glob with its directory part normalised like :func:`normalise` (the pattern part kept)."""
    base = glob_base(path)
    rest = path.replace("\\", "/")[len(base):].lstrip("/") if path.startswith(base) else path
    return normalise(base).rstrip("/") + "/" + rest


def check_literal_output(output: str) -> None:
    """Refuse an ``--output`` whose path holds ``*``, ``?`` or ``[``: pairscore itself treats it
    literally, but Beam's file writers match their own temporary files by pattern and would fail
    (or find a sibling's) half-way through the run."""
    absolute = output if is_remote(output) else os.path.abspath(output)
    if has_glob(absolute):
        chars = "".join(sorted({c for c in absolute if c in "*?["}))
        raise OutputError(f"--output {output!r} holds {chars!r} in its path ({absolute}): Beam's file writers read "
                          "*, ? and [ as patterns, so pairscore does not write there; choose a directory whose "
                          "path has none of them")


# --------------------------------------------------------------------------- the lock


def read_lock(output: str) -> LockHolder | None:
    """The holder named in ``OUT/_LOCK``; None when there is no lock. An unreadable lock (being
    written, or not ours) is reported as a holder with pid 0 that is never judged dead."""
    path = FileSystems.join(output, LOCK_FILE)
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            return parse_lock(handle.read())
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - any unreadable lock is a lock we must not take
        if not FileSystems.exists(path):
            return None
        return UNREADABLE_LOCK


def acquire_lock(output: str, job: str) -> tuple[LockHolder, LockHolder | None]:
    """Create ``OUT/_LOCK`` for this process: (me, the stale holder taken over or None).

    Raises OutputError naming the holder when a live run (or one that cannot be judged dead)
    holds it, and when the directory cannot be written."""
    me = LockHolder.me(job)
    path = FileSystems.join(output, LOCK_FILE)
    content = (json.dumps(asdict(me), indent=2) + "\n").encode("utf-8")
    stale = None
    for _ in range(3):
        if _create_exclusive(path, content, output):
            return me, stale
        holder = read_lock(output)
        if holder is None:
            continue  # released in between: try again
        if not holder.is_dead():
            raise OutputError(in_use(output, holder, path))
        _take_over(path, holder, output)
        stale = holder
        print(f"note: {path} was left by {holder.describe()}, which is no longer running; taking it over",
              file=sys.stderr)
    raise OutputError(f"--output {output!r}: could not take the lock {path} (other runs keep taking it)")


def _create_exclusive(path: str, content: bytes, output: str) -> bool:
    """True if this call created ``path``; False if it existed."""
    if is_remote(path):
        # Best effort: Beam's FileSystems has no create-if-absent; check, write, read back.
        if FileSystems.exists(path):
            return False
        with FileSystems.create(path) as handle:
            handle.write(content)
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            return handle.read() == content
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as err:
        raise OutputError(f"--output {output!r} cannot be written: {err.strerror or err}") from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
    return True


def _take_over(path: str, holder: LockHolder, output: str) -> None:
    """Remove a dead holder's lock so that the next exclusive create can win. Locally the lock
    is first renamed aside, so of two runs taking over the same stale lock only one removes it;
    a fresh lock moved aside by mistake is put back."""
    if is_remote(path):
        _delete_file(path)
        return
    aside = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        with open(aside, encoding="utf-8") as handle:
            moved = json.load(handle).get("token")
    except (OSError, ValueError):
        moved = None
    if moved != holder.token:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)   # put the live run's lock back (never over a newer one)
        os.remove(aside)
        raise OutputError(f"--output {output!r} was just locked by another run: wait for it to finish")
    os.remove(aside)


def release_lock(output: str, me: LockHolder) -> None:
    """Remove ``OUT/_LOCK`` if it is still ours."""
    holder = read_lock(output)
    if holder is not None and holder.token == me.token:
        with contextlib.suppress(Exception):
            _delete_file(FileSystems.join(output, LOCK_FILE))


# --------------------------------------------------------------------------- what is in OUT

# The first file of every staging directory: proof that pairscore made it (a ``_temporary-*``
# directory without it is not pairscore's, and is left alone).
STAGING_MARKER = "_PAIRSCORE_STAGING.json"
# Inside the staging directory: the commit's moves, written before the first one, so that a run
# killed half-way through its commit can be rolled back by the next one.
COMMIT_PLAN = "_COMMIT.json"
# Inside the staging directory: where the commit moves the earlier output's files.
REPLACED_DIR = "_REPLACED"


def _exists(path: str) -> bool:
    """Whether ``path`` itself exists (a dangling symlink counts): never a pattern."""
    return FileSystems.exists(path) if is_remote(path) else os.path.lexists(path)


def _delete_file(path: str) -> None:
    """Delete exactly ``path`` (Beam's delete matches its argument as a glob, hence the escape)."""
    if is_remote(path):
        FileSystems.delete([escape_glob(path)])
    else:
        os.unlink(path)


def _move(source: str, target: str) -> None:
    """Rename one file (an atomic rename locally; copy + delete on object stores)."""
    if not is_remote(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
    FileSystems.rename([source], [target])


def _remove_tree(path: str) -> None:
    """Remove a staging directory and everything in it."""
    if is_remote(path):
        with contextlib.suppress(Exception):
            for rel in _list_entries(path):
                _delete_file(FileSystems.join(path, rel))
    else:
        shutil.rmtree(path, ignore_errors=True)


def _list_entries(path: str) -> list[str]:
    """Everything in ``path``, relative to it, symlinks not followed: every file, symlink or other
    non-directory, and every empty directory (as ``name/``). Object stores: every object under
    the prefix."""
    if is_remote(path):
        prefix = path.rstrip("/") + "/"
        return sorted(m.path[len(prefix):]
                      for m in FileSystems.match([escape_glob(prefix) + "**"])[0].metadata_list)
    if not os.path.isdir(path):
        return []
    entries = []
    for root, dirs, files in os.walk(path):
        rel = os.path.relpath(root, path).replace(os.sep, "/")
        rel = "" if rel == "." else rel + "/"
        entries += [rel + name for name in files]
        entries += [rel + name for name in dirs if os.path.islink(os.path.join(root, name))]
        if rel and not dirs and not files:
            entries.append(rel)
    return sorted(entries)


def _top(name: str) -> str:
    return name.split("/", 1)[0]


@dataclass
class _Contents:
    """What an existing ``--output`` holds, sorted by who wrote it."""
    old: list[str]          # the earlier pairscore output: files its _SUMMARY.json lists, with the markers
    leftovers: list[str]    # top-level names left by pairscore runs that are gone (marked staging, lock copies)
    foreign: list[str]      # everything else: named in the refusal, never touched
    why_foreign: str = ""
    foreign_shown: str = ""


def _summary_files(path: str) -> list[str] | None:
    """The files an earlier run's ``_SUMMARY.json`` says it committed; None when there is no
    such summary (missing, not JSON, not a pairscore summary)."""
    try:
        with FileSystems.open(FileSystems.join(path, SUMMARY_FILE), compression_type="uncompressed") as handle:
            summary = json.loads(handle.read().decode("utf-8"))
    except Exception:  # noqa: BLE001 - an unreadable summary proves nothing
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("job"), str):
        return None
    files = summary.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) and _inside(f) for f in files):
        return None
    return files


def _inside(rel: str) -> bool:
    """Whether a relative path from a summary or a plan stays inside the output."""
    return bool(rel) and not rel.startswith(("/", "\\")) and ".." not in rel.replace("\\", "/").split("/")


def _read_plan(staging: str) -> list[tuple[str, str]] | None:
    """A staging directory's commit moves (relative to the output), None before its commit began."""
    try:
        with FileSystems.open(FileSystems.join(staging, COMMIT_PLAN), compression_type="uncompressed") as handle:
            moves = [(source, target) for source, target in json.loads(handle.read().decode("utf-8"))["moves"]]
    except Exception:  # noqa: BLE001 - no plan (or a torn one): the commit never moved anything
        return None
    return moves if all(_inside(source) and _inside(target) for source, target in moves) else None


def _is_leftover(path: str, top: str, entries: Sequence[str]) -> bool:
    """A top-level entry of ``path`` that an interrupted pairscore run left: its marked staging
    directory, or a lock it put aside while taking over another (of a holder provably dead)."""
    if top.startswith(STAGING_PREFIX):
        return f"{top}/{STAGING_MARKER}" in entries and _is_our_marker(path, top)
    if top.startswith(LOCK_FILE + ".stale-"):
        try:
            with FileSystems.open(FileSystems.join(path, top), compression_type="uncompressed") as handle:
                return parse_lock(handle.read()).is_dead()
        except Exception:  # noqa: BLE001 - not a lock of ours
            return False
    return False


def _is_our_marker(path: str, top: str) -> bool:
    """Whether the staging directory ``top``'s marker is one :func:`open_output` wrote: a JSON
    object naming the job, this directory's run id, and the run's pid, host and lock token. A
    file of that name with anything else (an empty ``{}``, say) does not make a user's
    ``_temporary-*`` folder pairscore's to delete."""
    try:
        with FileSystems.open(FileSystems.join(path, top, STAGING_MARKER), compression_type="uncompressed") as handle:
            marker = json.loads(handle.read().decode("utf-8"))
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False
    return (isinstance(marker, dict) and marker.get("run_id") == top[len(STAGING_PREFIX):]
            and all(isinstance(marker.get(key), str) and marker[key] for key in ("job", "host", "token"))
            and isinstance(marker.get("pid"), int) and not isinstance(marker.get("pid"), bool))


def _survey(path: str, entries: Sequence[str]) -> _Contents:
    """Sort what ``path`` holds (``entries``, without ``_LOCK``) into the earlier output, the
    leftovers of interrupted runs, and everything else. Only pairscore's own facts count: files
    its ``_SUMMARY.json`` lists, and the files an interrupted commit was moving (its plan). A
    ``_SUCCESS`` or a lock alone proves nothing: Spark and Hadoop write ``_SUCCESS`` too."""
    leftovers = sorted({_top(e) for e in entries if _is_leftover(path, _top(e), entries)})
    rest = [e for e in entries if _top(e) not in leftovers]
    ours: set[str] = set()
    listed = _summary_files(path) if SUMMARY_FILE in rest else None
    if listed is not None:
        ours |= {*listed, SUMMARY_FILE, SUCCESS_FILE}
    for top in leftovers:   # a commit cut short: what it was moving is pairscore's
        if top.startswith(STAGING_PREFIX):
            for move in _read_plan(FileSystems.join(path, top)) or ():
                ours |= {rel for rel in move if _top(rel) != top}
    folders = {rel.rsplit("/", 1)[0] + "/" for rel in ours if "/" in rel}
    folders |= {parent for folder in list(folders) for parent in _parents(folder)}
    old = [e for e in rest if e in ours]
    foreign = [e for e in rest if e not in ours and e not in folders]
    why = ""
    if foreign:
        if listed is None and SUCCESS_FILE in foreign:
            why = (f"it has no {SUMMARY_FILE} listing its files; a {SUCCESS_FILE} alone proves nothing, Spark and "
                   "Hadoop write one too")
        elif listed is None:
            why = f"it has no {SUMMARY_FILE} listing its files"
        else:
            why = f"its {SUMMARY_FILE} does not list them"
    # Named by their top-level name, or by their path inside one of pairscore's directories.
    names = sorted({e if _top(e) + "/" in folders else _top(e) for e in foreign})
    shown = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
    return _Contents(old=old, leftovers=leftovers, foreign=foreign, why_foreign=why, foreign_shown=shown)


def _parents(folder: str) -> list[str]:
    parts = folder.rstrip("/").split("/")
    return ["/".join(parts[:i]) + "/" for i in range(1, len(parts))]


def _committed(output: str, staging: str) -> bool:
    """Whether the commit staged in ``staging`` is done: its ``_SUCCESS`` has left the staging
    directory for ``output`` (the earlier output's ``_SUCCESS`` was moved aside before). Only
    meaningful once the commit's plan exists (the staged ``_SUCCESS`` is written before it)."""
    return not _exists(FileSystems.join(staging, SUCCESS_FILE)) and _exists(FileSystems.join(output, SUCCESS_FILE))


def _undo(output: str, moves: Sequence[tuple[str, str]]) -> None:
    """Roll back a commit's moves, newest first, judging from the files themselves whether each
    happened (so it is right after any interruption, and again if itself interrupted): the new
    ``_SUCCESS`` goes first, and the earlier output's ``_SUCCESS`` comes back last."""
    for source, target in reversed(moves):
        source, target = FileSystems.join(output, source), FileSystems.join(output, target)
        if _exists(source):
            if is_remote(target) and _exists(target):
                _delete_file(target)   # a copy whose move never finished (object stores copy, then delete)
        elif _exists(target):
            _move(target, source)


def _recover(output: str, leftovers: Sequence[str]) -> list[str]:
    """Clean up after interrupted pairscore runs (under the lock): a commit that finished keeps
    its output and loses its staging directory; a commit cut short is rolled back, which puts
    the earlier output back as it was; staging of a run that never reached its commit is
    removed. Returns a note for each."""
    notes = []
    for top in leftovers:
        full = FileSystems.join(output, top)
        if top.startswith(STAGING_PREFIX):
            moves = _read_plan(full)
            if moves is not None and not _committed(output, full):
                _undo(output, moves)
                notes.append(f"rolled back the commit of an interrupted run ({top}): the earlier output is as it was")
            _remove_tree(full)
        else:
            _delete_file(full)
    if leftovers and not is_remote(output):
        _remove_empty_dirs(output, keep=output)
    return notes


def _shown(entries: Sequence[str], limit: int = 5) -> str:
    tops = sorted({_top(e) for e in entries})
    more = f", ... ({len(tops) - limit} more)" if len(tops) > limit else ""
    return ", ".join(tops[:limit]) + more



# --------------------------------------------------------------------------- the run's output


_OPEN_OUTPUTS: contextvars.ContextVar[list | None] = contextvars.ContextVar("pairscore_open_outputs", default=None)


@dataclass
class OutputDir:
    """One run's ``--output`` while it runs: locked, with a staging directory the job writes to.

    Use :meth:`staged` for every path the job writes, then :meth:`commit` at the end; on
    failure :meth:`abort` (called by :func:`abort_output_on_failure`, or on leaving a ``with``
    block with an exception)."""
    path: str
    job: str
    holder: LockHolder
    run_id: str
    notes: list[str] = field(default_factory=list)
    created: bool = False   # this run created the directory (a failed run then removes it)
    # The earlier output this run replaces at its commit (files relative to ``path``, markers included).
    replaces: list[str] = field(default_factory=list)
    # How the run ended for this output: "committed", "rolled back" (nothing of it stays), or None while open.
    outcome: str | None = None
    _moves: list[tuple[str, str]] | None = None
    _closed: bool = False

    @property
    def staging(self) -> str:
        return FileSystems.join(self.path, STAGING_PREFIX + self.run_id)

    def staged(self, *parts: str) -> str:
        """Where the job writes what will be ``OUT/<parts>`` after the commit."""
        return FileSystems.join(self.staging, *parts) if parts else self.staging

    @property
    def checkpoint_dir(self) -> str:
        """Where a training job saves its model; committed as ``OUT/`` itself (``--model OUT``)."""
        return self.staged(STAGED_CHECKPOINT)

    def commit(self, summary) -> list[str]:
        """Replace the earlier output (if any) with what was staged, in this order: the earlier
        output's files are moved aside into the staging directory, ``_SUCCESS`` first, then its
        ``_SUMMARY.json`` and manifests, then its data; then the new data files, manifests,
        ``_SUMMARY.json`` and ``_SUCCESS`` move into place. Every move is a rename, listed in the
        staging directory's plan before the first one, so an interruption at any point is rolled
        back (by :meth:`abort`, or by the next run when this one was killed) to the earlier output.
        ``summary`` (a RunSummary) gets the list of files written (``summary.files``) and this
        output's notes. Returns the committed paths."""
        staged = self._staged_files()
        final = {rel: self._final(rel) for rel in staged}
        data = [rel for rel in staged if rel.rsplit("/", 1)[-1] != MANIFEST_FILE]
        manifests = [rel for rel in staged if rel.rsplit("/", 1)[-1] == MANIFEST_FILE]
        summary.files = sorted(final.values())
        summary.notes = list(summary.notes) + [n for n in self.notes if n not in summary.notes]
        # The summary and the marker are written (into staging) before anything moves: a full
        # disk fails here, with nothing committed.
        self._write_staged(SUMMARY_FILE, summary.to_json().encode("utf-8"))
        self._write_staged(SUCCESS_FILE, b"")
        final.update({SUMMARY_FILE: SUMMARY_FILE, SUCCESS_FILE: SUCCESS_FILE})
        old = [rel for rel in self.replaces if _exists(FileSystems.join(self.path, rel))]
        old_markers = [m for m in (SUCCESS_FILE, SUMMARY_FILE) if m in old]
        old_manifests = [rel for rel in old if rel.rsplit("/", 1)[-1] == MANIFEST_FILE]
        old_rest = [rel for rel in old if rel not in old_markers and rel not in old_manifests]
        staging_name = STAGING_PREFIX + self.run_id
        moves = [(rel, f"{staging_name}/{REPLACED_DIR}/{rel}") for rel in [*old_markers, *old_manifests, *old_rest]]
        moves += [(f"{staging_name}/{rel}", final[rel]) for rel in [*data, *manifests, SUMMARY_FILE, SUCCESS_FILE]]
        self._moves = moves   # before the plan is written: abort() then finds nothing moved
        self._write_staged(COMMIT_PLAN, (json.dumps({"moves": moves}) + "\n").encode("utf-8"))
        for source, target in moves:
            _move(FileSystems.join(self.path, source), FileSystems.join(self.path, target))
        self.outcome = "committed"
        self._close()
        if not is_remote(self.path):
            _remove_empty_dirs(self.path, keep=self.path)   # the earlier output's folders it no longer has
        return [FileSystems.join(self.path, final[rel]) for rel in [*data, *manifests, SUMMARY_FILE, SUCCESS_FILE]]

    def abort(self) -> None:
        """End a run that failed or was interrupted. A commit that reached its ``_SUCCESS`` is
        kept (it is complete: never remove what a committed marker vouches for); otherwise every
        move of the commit is rolled back, so the earlier output is back as it was, and the
        staging directory and the lock are removed. Ctrl-C and SIGTERM wait until this is done."""
        if self._closed:
            return
        with _signals_deferred():
            if self._moves is not None and _committed(self.path, self.staging):
                self.outcome = "committed"
            else:
                if self._moves is not None:
                    _undo(self.path, self._moves)
                self.outcome = "rolled back"
            self._close()
            if not is_remote(self.path):
                _remove_empty_dirs(self.path, keep=None if self.created and self.outcome != "committed"
                                   else self.path)

    def _close(self) -> None:
        _remove_tree(self.staging)
        release_lock(self.path, self.holder)
        self._closed = True
        stack = _OPEN_OUTPUTS.get()
        if stack is not None and self in stack:
            stack.remove(self)

    def _final(self, rel: str) -> str:
        if rel.startswith(STAGED_CHECKPOINT + "/"):
            return rel[len(STAGED_CHECKPOINT) + 1:]
        return rel

    def _staged_files(self) -> list[str]:
        """Files the job staged, relative to the staging directory, sorted (the staging marker,
        the plan and the earlier output's files moved aside are not the job's)."""
        return [rel for rel in _list_entries(self.staging) if not rel.endswith("/")
                and rel not in (STAGING_MARKER, COMMIT_PLAN) and _top(rel) != REPLACED_DIR]

    def _write_staged(self, rel: str, content: bytes) -> None:
        path = self.staged(rel)
        try:
            with FileSystems.create(path) as handle:
                handle.write(content)
        except OSError as err:
            if err.filename is None:   # name the file in the one-line error (a full disk, say)
                err.filename = path
            raise

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.abort()   # a no-op after a commit; otherwise nothing of this run stays


def _remove_empty_dirs(path: str, keep: str | None) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        if root != keep and not os.listdir(root):
            with contextlib.suppress(OSError):
                os.rmdir(root)


def open_output(output: str, *, job: str, overwrite: bool,
                reads: Mapping[str, Iterable[str | None]] = {}) -> OutputDir:
    """Check ``--output`` (before touching anything), lock it, clean up after interrupted runs
    and create the staging directory. ``reads``: flag -> paths the run reads, which the output
    may neither contain nor be inside. With ``overwrite`` an earlier pairscore output stays as it
    is until :meth:`OutputDir.commit` replaces it. Raises OutputError (exit 2) with one line.

    Call it inside a function decorated with :func:`abort_output_on_failure` (every job's
    ``run``), or use the returned OutputDir as a context manager, so that a failure cleans up."""
    check_literal_output(output)
    check_no_overlap(output, reads)
    if not is_remote(output):
        if os.path.exists(output) and not os.path.isdir(output):
            raise OutputError(f"--output {output!r} is an existing file: give a directory (new, empty, or a "
                              "pairscore output with --overwrite)")
    holder = read_lock(output)
    if holder is not None and not holder.is_dead():
        raise OutputError(in_use(output, holder, FileSystems.join(output, LOCK_FILE)))
    _check_contents(output, overwrite)

    created = not _exists(output)
    try:
        if not is_remote(output):
            os.makedirs(output, exist_ok=True)
        elif not FileSystems.exists(output):
            FileSystems.mkdirs(output)
    except OSError as err:
        raise OutputError(f"--output {output!r} cannot be created: {err.strerror or err}") from None
    me, stale = acquire_lock(output, job)
    out = OutputDir(path=output, job=job, holder=me, run_id=f"{time.strftime('%Y%m%d%H%M%S')}-{me.token[:8]}",
                    created=created)
    if stale is not None:
        out.notes.append(f"took over the lock of {stale.describe()}, which was no longer running")
    try:
        # Again under the lock: another run may have written here since the first look.
        contents = _check_contents(output, overwrite)
        if contents.leftovers:
            with _signals_deferred():
                out.notes += _recover(output, contents.leftovers)
            contents = _check_contents(output, overwrite)
        out.replaces = contents.old
        if not is_remote(output):
            os.makedirs(out.staging)
        marker = {"job": job, "run_id": out.run_id, "pid": me.pid, "host": me.host, "token": me.token}
        out._write_staged(STAGING_MARKER, (json.dumps(marker) + "\n").encode("utf-8"))
    except BaseException:
        if not is_remote(output):
            shutil.rmtree(out.staging, ignore_errors=True)
        release_lock(output, me)
        raise
    stack = _OPEN_OUTPUTS.get()
    if stack is not None:
        stack.append(out)
    return out


def _check_contents(output: str, overwrite: bool) -> _Contents:
    """What ``output`` holds, or OutputError: not empty without ``overwrite``; with it, anything
    that is neither an earlier pairscore output nor an interrupted run's leftovers."""
    entries = [e for e in _list_entries(output) if e != LOCK_FILE]
    if entries and not overwrite:
        raise OutputError(_not_empty(output, entries))
    contents = _survey(output, entries)
    if contents.foreign:
        raise OutputError(f"--overwrite would delete {contents.foreign_shown} in {output!r}, which no pairscore job "
                          f"wrote ({contents.why_foreign}): pairscore replaces only its own outputs and leaves "
                          "everything else alone; choose another --output, or move those files away yourself")
    return contents


def _not_empty(output: str, entries: Sequence[str]) -> str:
    return (f"--output {output!r} is not empty ({_shown(entries)}): give a new or empty directory, or pass "
            "--overwrite to replace an earlier pairscore output")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then deliver them (main thread only):
    a roll-back or clean-up cut short by a second Ctrl-C could leave a marker without its data."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if received:
            signal.raise_signal(received[0])


F = TypeVar("F", bound=Callable)



class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended the run; raised once its outputs are rolled back (or found
    committed). ``line``: the one line to print; ``exit_status``: 130 / 143. A KeyboardInterrupt,
    so that callers which stop on Ctrl-C stop on it too."""

    def __init__(self, signum: int, line: str):
        super().__init__(line)
        self.signum = signum
        self.line = line
        self.exit_status = 128 + signum


# The first interrupting signal of the run in progress (None when none came). Beam wraps an
# exception raised inside a transform in its own RuntimeError, so the run's end is judged by
# this, not by the exception that reaches :func:`abort_output_on_failure`.
_interrupted_by: int | None = None
# (output, outcome) of the outputs the last failed run closed: what the one-line error says.
_last_outcomes: list[tuple[str, str | None]] = []


def abort_output_on_failure(run: F) -> F:
    """Decorate a job's ``run``: an output opened by :func:`open_output` during the call is
    aborted (a commit that did not reach its ``_SUCCESS`` rolled back, the earlier output back in
    place, staging and lock removed) if the call raises.

    While it runs, Ctrl-C and SIGTERM (what schedulers send on a timeout) end the run the same
    way and then raise :class:`Interrupted` (exit 130 / 143 with one line, jobs.common.run_job);
    a second signal during the clean-up is ignored. Only SIGKILL leaves leftovers, which the
    next ``--overwrite`` cleans up."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        global _interrupted_by
        token = _OPEN_OUTPUTS.set([])
        _interrupted_by = None
        previous = _interrupt_handlers()
        output = getattr(args[0], "output", None) if args else None
        try:
            return run(*args, **kwargs)
        except BaseException as err:
            outcomes = []
            for out in list(_OPEN_OUTPUTS.get() or []):
                try:
                    out.abort()
                except KeyboardInterrupt:
                    pass   # a signal held back during the clean-up, delivered when it was done
                outcomes.append((out.path, out.outcome))
            _last_outcomes[:] = outcomes or [(output, None)]
            signum = _interrupted_by
            if signum is None and isinstance(err, KeyboardInterrupt):
                signum = signal.SIGINT
            if signum is not None:   # whatever Beam wrapped it in: one line, 130 / 143
                raise Interrupted(signum, _interrupted_line(signum, _last_outcomes)) from None
            raise
        finally:
            for signum, handler in previous.items():
                if signum == "excepthook":
                    threading.excepthook = handler
                else:
                    signal.signal(signum, handler)
            _OPEN_OUTPUTS.reset(token)
    return wrapper  # type: ignore[return-value]


def _interrupted_line(signum: int, outcomes: Sequence[tuple[str, str | None]]) -> str:
    name = "interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"
    committed = [path for path, outcome in outcomes if outcome == "committed"]
    if committed:
        return f"{name} after {', '.join(committed)} was committed: it is complete"
    where = ", ".join(path for path, _ in outcomes if path) or "the output"
    return f"{name}: nothing committed, {where} left as it was"


def _interrupt_handlers() -> dict:
    """In the main thread, make SIGINT (unless ignored, as for a background job) and SIGTERM
    (unless someone handles it) end the run through an exception, the first one only; returns
    the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(signum, frame):
        global _interrupted_by
        if _interrupted_by is not None:
            return   # already ending: let the clean-up finish
        _interrupted_by = signum
        # Beam logs an exception that ends a transform, traceback and all, before re-raising it.
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL + 1)
        end_worker_processes()
        raise Interrupted(signum, "interrupted")

    previous: dict = {"excepthook": threading.excepthook}

    def quiet_while_interrupted(args) -> None:
        # Beam's threads fail as the run ends ("Worker subprocess exited"): the one line says it.
        if _interrupted_by is None:
            previous["excepthook"](args)
    threading.excepthook = quiet_while_interrupted
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, interrupt)
    return previous


def interrupted() -> bool:
    """Whether a Ctrl-C or SIGTERM is ending the run in progress."""
    return _interrupted_by is not None


def end_worker_processes() -> None:
    """SIGTERM every Beam worker process below this one. Beam's multi-process workers (``sh -c
    python -m ...sdk_worker_main``) wait to be told to stop while the runner, cleaning up after the
    interrupt, waits for them to exit: ending them lets the run clean up and exit. Only processes
    whose command line names ``apache_beam`` are ended: a program calling a job as a library may
    have children of its own (a Spark session's JVM, say) that must live on. Linux only (/proc);
    elsewhere nothing is done."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    pending, below = [os.getpid()], []
    while pending:
        for child in children.get(pending.pop(), []):
            below.append(child)
            pending.append(child)
    for pid in below:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"apache_beam" not in handle.read():
                    continue
            os.kill(pid, signal.SIGTERM)


def one_line_failure(err: BaseException) -> tuple[str, int] | None:
    """The one line and exit status for a run that ended with ``err``, where a traceback would
    not help: an interrupt, or a full disk (naming the file). None for anything else."""
    if isinstance(err, Interrupted):
        return err.line, err.exit_status
    full = _disk_full_path(err)
    if full is not None:
        where = ", ".join(path for path, _ in _last_outcomes if path)
        kept = f": nothing committed, {where} left as it was" if where and all(
            outcome != "committed" for _, outcome in _last_outcomes) else ""
        return f"error: no space left on device writing {full}{kept}", 1
    return None


_ERRNO_NOSPC = re.compile(r"\[Errno %d\][^:]*(?::\s*'([^']+)')?" % errno.ENOSPC)


def _disk_full_path(err: BaseException) -> str | None:
    """The file a full disk failed to write, from ``err`` or what it wraps (Beam turns a
    worker's OSError into a RuntimeError holding its text); None if ``err`` is not a full disk."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return str(err.filename) if err.filename else _fallback_path()
        found = _ERRNO_NOSPC.search(str(err))
        if found:
            return found.group(1) or _fallback_path()
        err = err.__cause__ or err.__context__
    return None


def _fallback_path() -> str:
    return next((path for path, _ in _last_outcomes if path), "the output")


# --------------------------------------------------------------------------- writers


def write_dead_letter_file(directory: str, letters: Sequence[DeadLetter],
                           provenance: Mapping[str, str] | None = None) -> str:
    """Dead letters of a job that runs without Beam -> ``DIR/_dead_letter/part-00000-of-00001.parquet``,
    the same schema and place as ``pipeline.beam.writes.WriteDeadLetters`` (written even when empty, as Beam does)."""
    path = FileSystems.join(directory, DEAD_LETTER_DIR, f"{STORE_FILE_PREFIX}-00000-of-00001{STORE_FILE_SUFFIX}")
    if not is_remote(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    schema = stamped(DEAD_LETTER_SCHEMA, provenance)
    table = pa.Table.from_pylist([letter.to_record() for letter in letters], schema=schema)
    return write_parquet_file(path, schema, [table])
