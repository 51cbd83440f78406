"""How a Beam worker holds the student: once per worker process, through ``shared.Shared``
(:func:`acquire`), so the DoFn threads of one process share one copy. The handlers themselves
(what to load, how to run it) are engine-free, in ``pipeline/models.py``.

The DoFns do not use Beam's ``RunInference``: stage one sorts texts by length within a window
before cutting batches, and stage two scores Arrow tables of pairs joined with the store;
RunInference's element-wise batching would undo both.
"""
from __future__ import annotations

from typing import Any, Callable

from apache_beam.utils import shared

from pipeline.models import EncoderHandler, HeadBatch, HeadHandler, LoadedEncoder  # noqa: F401  (engine-free, re-exported)


def acquire(handle: shared.Shared, load: Callable[[], Any], tag: str) -> Any:
    """The object ``load`` builds, once per worker process and ``tag`` (``shared.Shared``)."""
    return handle.acquire(load, tag=tag)
