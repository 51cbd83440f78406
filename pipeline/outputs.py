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
1. Before anything is touched, ``--output`` is checked: not a file, not inside nor containing an
   input, ``--store``, ``--previous``, ``--model`` or ``--teacher`` path (absolute, normalised
   paths; a glob counts as its directory part), not locked by a live run, and empty — or, with
   ``--overwrite``, written by pairscore (it holds ``_SUMMARY.json``, ``_SUCCESS``, a
   ``_MANIFEST.json``, or only leftovers of an interrupted run). Anything else is refused with one
   line naming what would be deleted (exit 2).
2. ``OUT/_LOCK`` is created atomically (``O_CREAT|O_EXCL``) holding pid, host, start time and job.
   A second run on the same output fails naming the holder; the lock of a dead process on this
   host is named and taken over. Object stores (``gs://``, ``s3://``) have no exclusive create
   through Beam's FileSystems: there the lock is best effort (check, write, read back).
3. With ``--overwrite`` the old output is deleted now, its markers first (``_SUCCESS``,
   ``_SUMMARY.json``, manifests), so an interrupted delete never looks complete.
4. The run writes everything under ``OUT/_temporary-<run id>/`` (the final layout, mirrored).
5. Driver side, after ``wait_until_finish()`` and after the counts reconcile, the job writes its
   manifests (into the staging directory) and calls :meth:`OutputDir.commit`, which writes the
   summary and an empty ``_SUCCESS`` there, then moves data files, then manifests, then
   ``_SUMMARY.json``, then ``_SUCCESS`` into place, each by ``FileSystems.rename`` (an atomic
   rename locally; copy + delete on object stores), removes the staging directory and the lock.
   Jobs therefore always wait for their pipeline: a runner launched without waiting would never
   reach the commit and leave no ``_SUCCESS``.
6. A run that fails (an exception, Ctrl-C) removes what it staged and anything it had started to
   commit, and its lock (:func:`abort_output_on_failure`); a killed run leaves only
   ``_temporary-*`` and a stale ``_LOCK``, which the next ``--overwrite`` run takes over and clears.

Checkpoints are saved the same way (``encoders.remote.atomic_directory``, re-exported here): written
to a temporary directory beside the target and renamed into place, so a crash never leaves a
half-written model.
"""
from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import functools
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from encoders.remote import atomic_directory  # noqa: F401  (the checkpoints' commit; lives below pipeline/)
from pipeline.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter
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
    return any(c in part for c in "*?[")


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


def check_no_overlap(output: str, related: Mapping[str, Iterable[str | None]]) -> None:
    """Refuse an ``--output`` that contains, or is inside, any path the run reads (``related``:
    flag -> paths): ``--overwrite`` would delete it, and a run would read what it writes.

    A glob counts as its directory part, except that an output inside that directory is
    allowed when the glob cannot match it (``--input 'data/*.jsonl' --output data/store``)."""
    out = normalise(output)
    for flag, paths in related.items():
        for path in paths:
            if not path:
                continue
            base = normalise(glob_base(path))
            if _within(base, out):
                where = "is" if base == out else "contains"
                raise OutputError(f"--output {output!r} {where} {flag} {path!r}: write the output to a directory "
                                  f"that holds none of the job's inputs")
            if _within(out, base):
                if base != normalise(path) and not _glob_reaches(_normalise_glob(path), out):
                    continue
                raise OutputError(f"--output {output!r} is inside {flag} {path!r}: write the output outside "
                                  f"the job's inputs")


def _normalise_glob(path: str) -> str:
    """A glob with its directory part normalised like :func:`normalise` (the pattern part kept)."""
    base = glob_base(path)
    rest = path.replace("\\", "/")[len(base):].lstrip("/") if path.startswith(base) else path
    return normalise(base).rstrip("/") + "/" + rest


# --------------------------------------------------------------------------- the lock


@dataclass(frozen=True)
class LockHolder:
    """What ``OUT/_LOCK`` holds: who runs on this output."""
    pid: int
    host: str
    started: str
    job: str
    token: str
    pid_start: str | None = None   # the process's start time (Linux), to tell a reused pid

    def describe(self) -> str:
        return f"{self.job} (pid {self.pid} on host {self.host}, started {self.started})"

    def is_dead(self) -> bool:
        """True only when provably gone: a process of this host that no longer exists (or whose
        pid now belongs to a newer process). A holder on another host is never judged dead."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        start = _process_start(self.pid)
        return bool(self.pid_start and start and start != self.pid_start)

    @classmethod
    def me(cls, job: str) -> "LockHolder":
        return cls(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   job=job, token=uuid.uuid4().hex, pid_start=_process_start(os.getpid()))


def _process_start(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read_lock(output: str) -> LockHolder | None:
    """The holder named in ``OUT/_LOCK``; None when there is no lock. An unreadable lock (being
    written, or not ours) is reported as a holder with pid 0 that is never judged dead."""
    path = FileSystems.join(output, LOCK_FILE)
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            data = json.loads(handle.read().decode("utf-8"))
        return LockHolder(**data)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - any unreadable lock is a lock we must not take
        if not FileSystems.exists(path):
            return None
        return LockHolder(pid=0, host="?", started="?", job="an unknown process (unreadable lock)", token="?")


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
            raise OutputError(f"--output {output!r} is in use by {holder.describe()}: wait for it to finish, or "
                              f"choose another --output (remove {path} only if that run is gone)")
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
        FileSystems.delete([path])
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
            FileSystems.delete([FileSystems.join(output, LOCK_FILE)])


# --------------------------------------------------------------------------- what is in OUT


def _list_entries(path: str) -> list[str]:
    """Local: the names directly in ``path``. Remote: every object under the prefix, relative."""
    if not is_remote(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    prefix = path.rstrip("/") + "/"
    return sorted(m.path[len(prefix):] for m in FileSystems.match([prefix + "**"])[0].metadata_list)


def _top(name: str) -> str:
    return name.split("/", 1)[0]


def _why_pairscore(path: str, entries: Sequence[str], dead_run_lock: bool) -> str | None:
    """Why ``path`` counts as a pairscore output (None if it does not): a committed marker, the
    lock of a run that died (say, half-way through its commit), or only staging leftovers (only
    pairscore writes those names). ``entries`` leave out ``_LOCK`` itself."""
    tops = {_top(e) for e in entries}
    for marker in (SUCCESS_FILE, SUMMARY_FILE, MANIFEST_FILE):
        if marker in tops:
            return marker
    if is_remote(path):
        if any(e.endswith("/" + MANIFEST_FILE) for e in entries):
            return MANIFEST_FILE
    else:
        for side in ("left", "right"):
            if os.path.isfile(os.path.join(path, "store", side, MANIFEST_FILE)):
                return f"store/{side}/{MANIFEST_FILE}"
    if dead_run_lock:
        return f"{LOCK_FILE} of a pairscore run that is no longer running"
    if tops and all(t.startswith((STAGING_PREFIX, LOCK_FILE + ".stale-")) for t in tops):
        return "leftovers of an interrupted pairscore run"
    return None


def _delete_old_output(path: str, entries: Sequence[str]) -> None:
    """Delete an old pairscore output, markers first: stopped half-way it never looks complete."""
    def full(names):
        return [FileSystems.join(path, n) for n in names]

    if is_remote(path):
        markers = [e for e in entries if e.rsplit("/", 1)[-1] in MARKERS]
        rest = [e for e in entries if e not in markers]
    else:
        markers = [m for m in (SUCCESS_FILE, SUMMARY_FILE, MANIFEST_FILE) if m in entries]
        markers += [f"store/{side}/{MANIFEST_FILE}" for side in ("left", "right")
                    if os.path.isfile(os.path.join(path, "store", side, MANIFEST_FILE))]
        rest = [e for e in entries if e not in markers]
    for group in (markers, rest):
        if group:
            FileSystems.delete(full(group))


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
    _committed: list[str] = field(default_factory=list)
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
        """Move everything staged into place: data files, then manifests, then ``_SUMMARY.json``,
        then ``_SUCCESS``, each by rename. ``summary`` (a RunSummary) gets the list of files
        written (``summary.files``) and this output's notes. Returns the committed paths."""
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
        for group in (data, manifests, [SUMMARY_FILE], [SUCCESS_FILE]):
            for rel in group:
                self._move(rel, final[rel])
        self._close()
        return [FileSystems.join(self.path, final[rel]) for rel in [*data, *manifests, SUMMARY_FILE, SUCCESS_FILE]]

    def abort(self) -> None:
        """Undo a run that failed: what it committed (markers first), its staging, its lock."""
        if self._closed:
            return
        # Newest first: the markers were committed last, so they go first.
        for path in reversed(self._committed):
            with contextlib.suppress(Exception):
                FileSystems.delete([path])
        self._close()
        if not is_remote(self.path):
            _remove_empty_dirs(self.path, keep=None if self.created else self.path)

    def _close(self) -> None:
        if is_remote(self.staging):
            with contextlib.suppress(Exception):
                FileSystems.delete([self.staging.rstrip("/") + "/"])
        else:
            shutil.rmtree(self.staging, ignore_errors=True)
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
        """Files under the staging directory, relative to it, sorted."""
        if is_remote(self.staging):
            prefix = self.staging.rstrip("/") + "/"
            return sorted(m.path[len(prefix):] for m in FileSystems.match([prefix + "**"])[0].metadata_list)
        files = []
        for root, _, names in os.walk(self.staging):
            for name in names:
                files.append(os.path.relpath(os.path.join(root, name), self.staging).replace(os.sep, "/"))
        return sorted(files)

    def _write_staged(self, rel: str, content: bytes) -> None:
        with FileSystems.create(self.staged(rel)) as handle:
            handle.write(content)

    def _move(self, rel: str, final_rel: str) -> None:
        source, target = self.staged(rel), FileSystems.join(self.path, final_rel)
        if not is_remote(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
        FileSystems.rename([source], [target])
        self._committed.append(target)

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
    """Check ``--output`` (before touching anything), lock it, clear an old output (``overwrite``)
    and create the staging directory. ``reads``: flag -> paths the run reads, which the output
    may neither contain nor be inside. Raises OutputError (exit 2) with one line.

    Call it inside a function decorated with :func:`abort_output_on_failure` (every job's
    ``run``), or use the returned OutputDir as a context manager, so that a failure cleans up."""
    check_no_overlap(output, reads)
    if not is_remote(output):
        if os.path.exists(output) and not os.path.isdir(output):
            raise OutputError(f"--output {output!r} is an existing file: give a directory (new, empty, or a "
                              "pairscore output with --overwrite)")
    holder = read_lock(output)
    if holder is not None and not holder.is_dead():
        raise OutputError(f"--output {output!r} is in use by {holder.describe()}: wait for it to finish, or choose "
                          f"another --output (remove {FileSystems.join(output, LOCK_FILE)} only if that run is gone)")
    _check_contents(output, overwrite, dead_run_lock=holder is not None)

    created = not FileSystems.exists(output)
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
        entries = [e for e in _list_entries(output) if _top(e) != LOCK_FILE]
        if entries and not overwrite:
            raise OutputError(_not_empty(output, entries))
        if entries:
            if _why_pairscore(output, entries, dead_run_lock=holder is not None or stale is not None) is None:
                raise OutputError(_not_ours(output, entries))
            _delete_old_output(output, entries)
        if not is_remote(output):
            os.makedirs(out.staging)
    except BaseException:
        release_lock(output, me)
        raise
    stack = _OPEN_OUTPUTS.get()
    if stack is not None:
        stack.append(out)
    return out


def _check_contents(output: str, overwrite: bool, dead_run_lock: bool) -> None:
    entries = [e for e in _list_entries(output) if _top(e) != LOCK_FILE]
    if not entries:
        return
    if not overwrite:
        raise OutputError(_not_empty(output, entries))
    if _why_pairscore(output, entries, dead_run_lock) is None:
        raise OutputError(_not_ours(output, entries))


def _not_empty(output: str, entries: Sequence[str]) -> str:
    return (f"--output {output!r} is not empty ({_shown(entries)}): give a new or empty directory, or pass "
            "--overwrite to replace an earlier pairscore output")


def _not_ours(output: str, entries: Sequence[str]) -> str:
    return (f"--overwrite would delete {_shown(entries)} in {output!r}, which no pairscore job wrote (it has no "
            f"{SUMMARY_FILE}, {SUCCESS_FILE} or {MANIFEST_FILE}): pairscore replaces only its own outputs; "
            "choose another --output or empty it yourself")


F = TypeVar("F", bound=Callable)


def abort_output_on_failure(run: F) -> F:
    """Decorate a job's ``run``: an output opened by :func:`open_output` during the call is
    aborted (staging, partial commit and lock removed) if the call raises, Ctrl-C included.

    While it runs, SIGTERM (what schedulers send on a timeout) exits the same way, through
    SystemExit(143), so a terminated run cleans up too; only SIGKILL leaves leftovers."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        token = _OPEN_OUTPUTS.set([])
        previous = _exit_on_sigterm()
        try:
            return run(*args, **kwargs)
        except BaseException:
            for out in list(_OPEN_OUTPUTS.get() or []):
                out.abort()
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            _OPEN_OUTPUTS.reset(token)
    return wrapper  # type: ignore[return-value]


def _exit_on_sigterm():
    """Turn SIGTERM into SystemExit(143) in the main thread if nobody handles it yet; returns the
    handler to restore (None when nothing was installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None

    def terminate(signum, frame):
        raise SystemExit(128 + signum)
    return signal.signal(signal.SIGTERM, terminate)


# --------------------------------------------------------------------------- writers


def write_dead_letter_file(directory: str, letters: Sequence[DeadLetter]) -> str:
    """Dead letters of a job that runs without Beam -> ``DIR/_dead_letter/part-00000-of-00001.parquet``,
    the same schema and place as ``pipeline.beam.writes.WriteDeadLetters`` (written even when empty, as Beam does)."""
    path = FileSystems.join(directory, DEAD_LETTER_DIR, f"{STORE_FILE_PREFIX}-00000-of-00001{STORE_FILE_SUFFIX}")
    if not is_remote(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    table = pa.Table.from_pylist([letter.to_record() for letter in letters], schema=DEAD_LETTER_SCHEMA)
    return write_parquet_file(path, DEAD_LETTER_SCHEMA, [table])
