"""Where a two-side ``--store`` keeps its manifests, and why a directory is not one.

Standard library only: the pre-flight (pipeline/preflight.py) answers a wrong ``--store`` with it
before Beam or torch is imported, on local paths; pipeline/store.py gives the same answers on any
Beam filesystem, through the few calls of :class:`StoreFs`.
"""
from __future__ import annotations

import json
import os
from typing import Protocol

from encoders.config import SIDES

MANIFEST_FILE = "_MANIFEST.json"


class StoreFs(Protocol):
    """The filesystem calls these messages need (local: :data:`LOCAL_FS`; Beam: pipeline/store.py)."""

    def exists(self, path: str) -> bool: ...
    def join(self, base: str, *parts: str) -> str: ...
    def split(self, path: str) -> tuple[str, str]: ...
    def read_text(self, path: str) -> str: ...
    def names(self, directory: str) -> list[str]: ...


class _LocalFs:
    exists = staticmethod(os.path.exists)
    join = staticmethod(os.path.join)
    split = staticmethod(os.path.split)

    @staticmethod
    def read_text(path: str) -> str:
        with open(path, encoding="utf-8") as handle:
            return handle.read()

    @staticmethod
    def names(directory: str) -> list[str]:
        return sorted(os.listdir(directory))


LOCAL_FS: StoreFs = _LocalFs()


def other_side(side: str) -> str:
    return "right" if side == "left" else "left"


def manifest_paths(root: str, fs: StoreFs = LOCAL_FS) -> dict[str, str]:
    """{side: ROOT/<side>/_MANIFEST.json}."""
    return {side: fs.join(root, side, MANIFEST_FILE) for side in SIDES}


def is_two_side_store(root: str, fs: StoreFs = LOCAL_FS) -> bool:
    return all(fs.exists(path) for path in manifest_paths(root, fs).values())


def side_of(manifest_path: str, fs: StoreFs = LOCAL_FS) -> str | None:
    """The ``side`` a manifest claims, or None when it cannot be read (for messages only)."""
    try:
        data = json.loads(fs.read_text(manifest_path))
        return data.get("side") if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def not_a_store_message(root: str, fs: StoreFs = LOCAL_FS) -> str:
    """Why ``root`` is not a two-side store: what was expected, what is there, and how to fix it."""
    expected = " and ".join(manifest_paths(root, fs).values())
    head = f"--store {root!r} is not a two-side embedding store: expected {expected}"
    own_side = side_of(fs.join(root, MANIFEST_FILE), fs)
    if own_side is not None:
        parent, name = fs.split(root.rstrip("/"))
        up = (f"; it looks one level too deep: pass --store {parent!r}"
              if name in SIDES and fs.exists(fs.join(parent, other_side(name), MANIFEST_FILE)) else "")
        return (f"{head}, found {fs.join(root, MANIFEST_FILE)} of a one-side {own_side!r} store "
                f"(as encode_texts writes){up}. --store takes a directory DIR holding DIR/left (a left store) "
                "and DIR/right (a right store): put this store at DIR/" + own_side + " and a "
                f"{other_side(own_side)} store at DIR/{other_side(own_side)}, then pass --store DIR")
    nested = fs.join(root, "store")
    if is_two_side_store(nested, fs):
        return f"{head}, found a job output holding its store in {nested}: pass --store {nested!r}"
    entries = _entries(root, fs)
    if entries is None and not fs.exists(root):
        return (f"{head}, but {root} does not exist (a first run goes without --store; later runs pass "
                "the previous run's OUTPUT/store)")
    found = []
    for side, manifest in manifest_paths(root, fs).items():
        side_dir = fs.join(root, side)
        if fs.exists(manifest):
            found.append(manifest)
        elif side_entries := _entries(side_dir, fs):
            found.append(f"{side_dir} holding {side_entries} but no {MANIFEST_FILE} (deleted?)")
    if not found:
        return f"{head}, found no left/ or right/ store in it ({root} holds {entries or 'nothing'})"
    return f"{head}, found {'; '.join(found)}"


def _entries(directory: str, fs: StoreFs, limit: int = 6) -> str | None:
    """A short listing of a directory's entries for messages, or None when it has none."""
    try:
        names = fs.names(directory)
    except Exception:  # noqa: BLE001 - a listing is only for the message
        return None
    if not names:
        return None
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
