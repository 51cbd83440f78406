"""The benchmark scripts are imported by these tests as modules of ``benchmarks`` (a folder at the
repository root, not an installed package), so the root goes on the import path."""
from __future__ import annotations

import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
