"""What an existing ``--output`` holds, and the clean-up after interrupted runs (steps 1 and 3 of
the protocol, pipeline/output/__init__.py).

Only pairscore's own facts count: the files an earlier run's ``_SUMMARY.json`` lists, the marked
staging directories of interrupted runs, and the moves their commit plans list. Everything else
is named in the refusal and never touched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline.output.layout import (COMMIT_PLAN, LOCK_FILE, STAGING_MARKER, STAGING_PREFIX, SUCCESS_FILE, SUMMARY_FILE,
                                    OutputError, is_remote)
from pipeline.output.lock import parse_lock
from pipeline.output.paths import delete_file, exists, list_entries, move, remove_empty_dirs, remove_tree, top_of

# --------------------------------------------------------------------------- what is in OUT


@dataclass
class Contents:
    """What an existing ``--output`` holds, sorted by who wrote it."""
    old: list[str]          # the earlier pairscore output: files its _SUMMARY.json lists, with the markers
    leftovers: list[str]    # top-level names left by pairscore runs that are gone (marked staging, lock copies)
    foreign: list[str]      # everything else: named in the refusal, never touched
    why_foreign: str = ""
    foreign_shown: str = ""


def check_contents(output: str, overwrite: bool) -> Contents:
    """What ``output`` holds, or OutputError: not empty without ``overwrite``; with it, anything
    that is neither an earlier pairscore output nor an interrupted run's leftovers."""
    entries = [e for e in list_entries(output) if e != LOCK_FILE]
    if entries and not overwrite:
        raise OutputError(_not_empty(output, entries))
    contents = survey(output, entries)
    if contents.foreign:
        raise OutputError(f"--overwrite would delete {contents.foreign_shown} in {output!r}, which no pairscore job "
                          f"wrote ({contents.why_foreign}): pairscore replaces only its own outputs and leaves "
                          "everything else alone; choose another --output, or move those files away yourself")
    return contents


def _not_empty(output: str, entries: Sequence[str]) -> str:
    return (f"--output {output!r} is not empty ({_shown(entries)}): give a new or empty directory, or pass "
            "--overwrite to replace an earlier pairscore output")


def _shown(entries: Sequence[str], limit: int = 5) -> str:
    tops = sorted({top_of(e) for e in entries})
    more = f", ... ({len(tops) - limit} more)" if len(tops) > limit else ""
    return ", ".join(tops[:limit]) + more


def survey(path: str, entries: Sequence[str]) -> Contents:
    """Sort what ``path`` holds (``entries``, without ``_LOCK``) into the earlier output, the
    leftovers of interrupted runs, and everything else. Only pairscore's own facts count: files
    its ``_SUMMARY.json`` lists, and the files an interrupted commit was moving (its plan). A
    ``_SUCCESS`` or a lock alone proves nothing: Spark and Hadoop write ``_SUCCESS`` too."""
    leftovers = sorted({top_of(e) for e in entries if _is_leftover(path, top_of(e), entries)})
    rest = [e for e in entries if top_of(e) not in leftovers]
    ours: set[str] = set()
    listed = _summary_files(path) if SUMMARY_FILE in rest else None
    if listed is not None:
        ours |= {*listed, SUMMARY_FILE, SUCCESS_FILE}
    for top in leftovers:   # a commit cut short: what it was moving is pairscore's
        if top.startswith(STAGING_PREFIX):
            for move in _read_plan(FileSystems.join(path, top)) or ():
                ours |= {rel for rel in move if top_of(rel) != top}
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
    names = sorted({e if top_of(e) + "/" in folders else top_of(e) for e in foreign})
    shown = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
    return Contents(old=old, leftovers=leftovers, foreign=foreign, why_foreign=why, foreign_shown=shown)


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
    """Whether the staging directory ``top``'s marker is one ``commit.open_output`` wrote: a JSON
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


def _parents(folder: str) -> list[str]:
    parts = folder.rstrip("/").split("/")
    return ["/".join(parts[:i]) + "/" for i in range(1, len(parts))]


# --------------------------------------------------------------------------- after interrupted runs


def committed(output: str, staging: str) -> bool:
    """Whether the commit staged in ``staging`` is done: its ``_SUCCESS`` has left the staging
    directory for ``output`` (the earlier output's ``_SUCCESS`` was moved aside before). Only
    meaningful once the commit's plan exists (the staged ``_SUCCESS`` is written before it)."""
    return not exists(FileSystems.join(staging, SUCCESS_FILE)) and exists(FileSystems.join(output, SUCCESS_FILE))


def undo(output: str, moves: Sequence[tuple[str, str]]) -> None:
    """Roll back a commit's moves, newest first, judging from the files themselves whether each
    happened (so it is right after any interruption, and again if itself interrupted): the new
    ``_SUCCESS`` goes first, and the earlier output's ``_SUCCESS`` comes back last."""
    for source, target in reversed(moves):
        source, target = FileSystems.join(output, source), FileSystems.join(output, target)
        if exists(source):
            if is_remote(target) and exists(target):
                delete_file(target)   # a copy whose move never finished (object stores copy, then delete)
        elif exists(target):
            move(target, source)


def recover(output: str, leftovers: Sequence[str]) -> list[str]:
    """Clean up after interrupted pairscore runs (under the lock): a commit that finished keeps
    its output and loses its staging directory; a commit cut short is rolled back, which puts
    the earlier output back as it was; staging of a run that never reached its commit is
    removed. Returns a note for each."""
    notes = []
    for top in leftovers:
        full = FileSystems.join(output, top)
        if top.startswith(STAGING_PREFIX):
            moves = _read_plan(full)
            if moves is not None and not committed(output, full):
                undo(output, moves)
                notes.append(f"rolled back the commit of an interrupted run ({top}): the earlier output is as it was")
            remove_tree(full)
        else:
            delete_file(full)
    if leftovers and not is_remote(output):
        remove_empty_dirs(output, keep=output)
    return notes
