"""A DoFn that gathers elements into windows and turns each window into one output.

Stage one (``pipeline/beam/encode.py``) and labeling (``pipeline/beam/label.py``) both run a transformer
over many short texts: they buffer a *sort window* of elements, tokenize them together, sort by
token count and batch, so each batch pads only to its own longest text. This is the buffering
half, shared; the subclass's ``flush`` does the model work.
"""
from __future__ import annotations

from typing import Any, Iterator

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue


class SortWindowDoFn(beam.DoFn):
    """Buffers up to ``window`` elements of a bundle and emits ``flush(elements)`` for each full
    buffer, and for the last partial one when the bundle ends. Subclasses implement ``flush``."""

    def __init__(self, window: int):
        self._window = window

    def start_bundle(self):
        self._buffer: list = []

    def process(self, element: Any) -> Iterator[Any]:
        self._buffer.append(element)
        if len(self._buffer) >= self._window:
            elements, self._buffer = self._buffer, []
            yield self.flush(elements)

    def finish_bundle(self):
        if self._buffer:
            elements, self._buffer = self._buffer, []
            # finish_bundle has no input element to inherit a window from: say it is the global one.
            yield WindowedValue(self.flush(elements), GlobalWindow().max_timestamp(), [GlobalWindow()])

    def flush(self, elements: list) -> Any:
        """One window of elements -> one output (e.g. a pyarrow Table of their rows)."""
        raise NotImplementedError
