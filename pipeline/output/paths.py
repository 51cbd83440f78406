"""Paths of an output, taken literally: what ``--output`` may be (no glob characters, nothing the
run reads inside it or around it), and the listings, deletes and moves of the commit, each of
exactly the path it names (the OS calls locally, escaped patterns through Beam's FileSystems
elsewhere, pipeline/paths.py).
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from typing import Iterable, Mapping

from apache_beam.io.filesystems import FileSystems

from pipeline.output.layout import OutputError, is_remote
from pipeline.paths import escape_glob, has_glob

# --------------------------------------------------------------------------- what --output may be


def normalise(path: str) -> str:
    """An absolute, normalised path (symlinks resolved locally) to compare paths by containment."""
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{os.path.normpath('/' + rest).lstrip('/')}".rstrip("/")
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def glob_base(path: str) -> str:
    """A glob's directory part (``data/2024-*/x.jsonl`` -> ``data``); a plain path itself."""
    parts = path.replace("\\", "/").split("/")
    for index, part in enumerate(parts):
        if has_glob(part):
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


# --------------------------------------------------------------------------- literal file operations


def exists(path: str) -> bool:
    """Whether ``path`` itself exists (a dangling symlink counts): never a pattern."""
    return FileSystems.exists(path) if is_remote(path) else os.path.lexists(path)


def delete_file(path: str) -> None:
    """Delete exactly ``path`` (Beam's delete matches its argument as a glob, hence the escape)."""
    if is_remote(path):
        FileSystems.delete([escape_glob(path)])
    else:
        os.unlink(path)


def move(source: str, target: str) -> None:
    """Rename one file (an atomic rename locally; copy + delete on object stores)."""
    if not is_remote(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
    FileSystems.rename([source], [target])


def remove_tree(path: str) -> None:
    """Remove a staging directory and everything in it."""
    if is_remote(path):
        with contextlib.suppress(Exception):
            for rel in list_entries(path):
                delete_file(FileSystems.join(path, rel))
    else:
        shutil.rmtree(path, ignore_errors=True)


def list_entries(path: str) -> list[str]:
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


def top_of(name: str) -> str:
    """The top-level name of a path relative to the output (``scores/part-0.parquet`` -> ``scores``)."""
    return name.split("/", 1)[0]


def remove_empty_dirs(path: str, keep: str | None) -> None:
    """Remove the empty directories below ``path`` (local only), ``path`` itself too unless it is ``keep``."""
    for root, dirs, files in os.walk(path, topdown=False):
        if root != keep and not os.listdir(root):
            with contextlib.suppress(OSError):
                os.rmdir(root)
