"""Paths as pairscore means them: a path that exists is that path, never a pattern.

Beam's ``FileSystems.match`` and ``FileSystems.delete`` read ``*``, ``?`` and ``[...]`` in a path
as a glob, so ``runs/run[1]`` would match ``runs/run1``. Every place that lists, matches or deletes
a path pairscore was given (an output, a store, a directory of inputs) goes through
:func:`escape_glob` first, or uses the operating system's literal calls for local paths.
"""
from __future__ import annotations

import re
import warnings

GLOB_CHARS = "*?["
_GLOB_CHAR = re.compile(r"([*?\[])")

# Beam turns the escaped ``[[]`` into the regular expression ``[[]``, which means exactly "[" but
# makes Python's ``re`` warn that a nested set may be meant one day.
warnings.filterwarnings("ignore", message="Possible nested set", category=FutureWarning,
                        module=r"apache_beam\.io\.filesystem")


def has_glob(path: str) -> bool:
    """Whether ``path`` holds a character that Beam (and the shell) read as a glob."""
    return any(c in path for c in GLOB_CHARS)


def escape_glob(path: str) -> str:
    """``path`` as a Beam ``FileSystems.match`` pattern that matches exactly ``path``
    (``run[1]`` -> ``run[[]1]``: a one-character class holds its character literally)."""
    return _GLOB_CHAR.sub(r"[\1]", path)
