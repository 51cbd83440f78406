"""One run's ``--output`` while it runs, and its commit (steps 4 and 5 of the protocol,
pipeline/output/__init__.py): :func:`open_output` checks, locks and stages it, the job writes
under :meth:`OutputDir.staged`, and :meth:`OutputDir.commit` moves it into place by renames
listed in a plan first; :meth:`OutputDir.abort` rolls an unfinished commit back.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from pipeline.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter
from pipeline.output.guard import current_run, signals_deferred
from pipeline.output.layout import (COMMIT_PLAN, DEAD_LETTER_DIR, LOCK_FILE, REPLACED_DIR, STAGED_CHECKPOINT,
                                    STAGING_MARKER, STAGING_PREFIX, SUCCESS_FILE, SUMMARY_FILE, OutputError, is_remote)
from pipeline.output.lock import LockHolder, acquire_lock, in_use, read_lock, release_lock
from pipeline.output.paths import (check_literal_output, check_no_overlap, exists, list_entries, move,
                                   remove_empty_dirs, remove_tree, top_of)
from pipeline.output.recovery import check_contents, committed, recover, undo
from pipeline.provenance import stamped
from pipeline.store import MANIFEST_FILE, STORE_FILE_PREFIX, STORE_FILE_SUFFIX
from pipeline.writers import write_parquet_file


@dataclass
class OutputDir:
    """One run's ``--output`` while it runs: locked, with a staging directory the job writes to.

    Use :meth:`staged` for every path the job writes, then :meth:`commit` at the end; on
    failure :meth:`abort` (called by ``guard.abort_output_on_failure``, or on leaving a ``with``
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
        old = [rel for rel in self.replaces if exists(FileSystems.join(self.path, rel))]
        old_markers = [m for m in (SUCCESS_FILE, SUMMARY_FILE) if m in old]
        old_manifests = [rel for rel in old if rel.rsplit("/", 1)[-1] == MANIFEST_FILE]
        old_rest = [rel for rel in old if rel not in old_markers and rel not in old_manifests]
        staging_name = STAGING_PREFIX + self.run_id
        moves = [(rel, f"{staging_name}/{REPLACED_DIR}/{rel}") for rel in [*old_markers, *old_manifests, *old_rest]]
        moves += [(f"{staging_name}/{rel}", final[rel]) for rel in [*data, *manifests, SUMMARY_FILE, SUCCESS_FILE]]
        self._moves = moves   # before the plan is written: abort() then finds nothing moved
        self._write_staged(COMMIT_PLAN, (json.dumps({"moves": moves}) + "\n").encode("utf-8"))
        for source, target in moves:
            move(FileSystems.join(self.path, source), FileSystems.join(self.path, target))
        self.outcome = "committed"
        self._close()
        if not is_remote(self.path):
            remove_empty_dirs(self.path, keep=self.path)   # the earlier output's folders it no longer has
        return [FileSystems.join(self.path, final[rel]) for rel in [*data, *manifests, SUMMARY_FILE, SUCCESS_FILE]]

    def abort(self) -> None:
        """End a run that failed or was interrupted. A commit that reached its ``_SUCCESS`` is
        kept (it is complete: never remove what a committed marker vouches for); otherwise every
        move of the commit is rolled back, so the earlier output is back as it was, and the
        staging directory and the lock are removed. Ctrl-C and SIGTERM wait until this is done."""
        if self._closed:
            return
        with signals_deferred():
            if self._moves is not None and committed(self.path, self.staging):
                self.outcome = "committed"
            else:
                if self._moves is not None:
                    undo(self.path, self._moves)
                self.outcome = "rolled back"
            self._close()
            if not is_remote(self.path):
                remove_empty_dirs(self.path, keep=None if self.created and self.outcome != "committed"
                                   else self.path)

    def _close(self) -> None:
        remove_tree(self.staging)
        release_lock(self.path, self.holder)
        self._closed = True

    @property
    def closed(self) -> bool:
        """Committed, or aborted: nothing of this run is left to clean up."""
        return self._closed

    def _final(self, rel: str) -> str:
        if rel.startswith(STAGED_CHECKPOINT + "/"):
            return rel[len(STAGED_CHECKPOINT) + 1:]
        return rel

    def _staged_files(self) -> list[str]:
        """Files the job staged, relative to the staging directory, sorted (the staging marker,
        the plan and the earlier output's files moved aside are not the job's)."""
        return [rel for rel in list_entries(self.staging) if not rel.endswith("/")
                and rel not in (STAGING_MARKER, COMMIT_PLAN) and top_of(rel) != REPLACED_DIR]

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


def open_output(output: str, *, job: str, overwrite: bool,
                reads: Mapping[str, Iterable[str | None]] = {}) -> OutputDir:
    """Check ``--output`` (before touching anything), lock it, clean up after interrupted runs
    and create the staging directory. ``reads``: flag -> paths the run reads, which the output
    may neither contain nor be inside. With ``overwrite`` an earlier pairscore output stays as it
    is until :meth:`OutputDir.commit` replaces it. Raises OutputError (exit 2) with one line.

    Call it inside a function decorated with ``guard.abort_output_on_failure`` (every job's
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
    check_contents(output, overwrite)

    created = not exists(output)
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
        contents = check_contents(output, overwrite)
        if contents.leftovers:
            with signals_deferred():
                out.notes += recover(output, contents.leftovers)
            contents = check_contents(output, overwrite)
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
    run = current_run()
    if run is not None:   # the run guard aborts it if the run fails (guard.abort_output_on_failure)
        run.track(out)
    return out


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
