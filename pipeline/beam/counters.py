"""Beam counters: how every stage counts what it did, and how a job reads the counts back.

Counters live in the ``pairscore`` namespace; a ``prefix`` (``pairs.``, ``left.``) keeps apart the
inputs of one job. The ones the progress line shows also count in this process's progress
tally (``pipeline/progress.py``). Per-worker counters (``pairscore.workers``) show how the work
spread.
"""
from __future__ import annotations

import os
import socket

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from pipeline import progress


COUNTER_NAMESPACE = "pairscore"


def counter(name: str, prefix: str = ""):
    """A Beam counter. ``prefix`` keeps apart the counts of several inputs of one job
    (``pairs.``, ``left.``): counters with one name are summed across steps. The ones the
    progress line shows (``pipeline.progress.LABELS``) also count there."""
    beam_counter = Metrics.counter(COUNTER_NAMESPACE, prefix + name)
    return _ProgressCounter(beam_counter, prefix + name) if prefix + name in progress.LABELS else beam_counter


class _ProgressCounter:
    """A Beam counter whose increments also go to this process's progress tally: one integer
    add per call (it is called per row), which the reporter's thread reads."""

    def __init__(self, beam_counter, name: str):
        self._counter = beam_counter
        self._name = name
        self._tally: list[int] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tally": None}  # a tally belongs to the process that made it

    def inc(self, n: int = 1) -> None:
        self._counter.inc(n)
        if self._tally is None:
            self._tally = progress.tally(self._name)
        self._tally[0] += n


def dead_letter_counter(reason: str, prefix: str = ""):
    return counter(f"dead_letter.{reason}", prefix)


DEAD_LETTER_PREFIX = "dead_letter."


def read_counters(result) -> dict[str, int]:
    """All ``pairscore`` counters of a finished pipeline, summed over steps."""
    counts: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    for metric in query["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        counts[metric.key.metric.name] = counts.get(metric.key.metric.name, 0) + int(value or 0)
    return counts


def split_dead_letters(counters: dict[str, int], prefix: str = "") -> tuple[dict[str, int], dict[str, int]]:
    """(counts under ``prefix`` without it, dead letters under ``prefix`` by reason)."""
    mine = {k[len(prefix):]: v for k, v in counters.items() if k.startswith(prefix)}
    plain = {k: v for k, v in mine.items() if not k.startswith(DEAD_LETTER_PREFIX)}
    by_reason = {k[len(DEAD_LETTER_PREFIX):]: v for k, v in mine.items() if k.startswith(DEAD_LETTER_PREFIX)}
    return plain, dict(sorted(by_reason.items()))


# Rows read and scored per worker process (``read.HOST:PID``), apart from the job's own counters:
# they show how the work spread (benchmarks/score_pairs.py reports them).
WORKER_NAMESPACE = "pairscore.workers"


def worker_counter(stage: str):
    """Rows of ``stage`` (read, scored) in this worker process: ``pairscore.workers/STAGE.HOST:PID``."""
    return Metrics.counter(WORKER_NAMESPACE, f"{stage}.{socket.gethostname()}:{os.getpid()}")


def report_threads(stage: str) -> None:
    """The torch threads this worker process runs ``stage`` with (``encode``, ``head``, ``teacher``):
    a gauge ``pairscore.workers/torch_threads.STAGE.HOST:PID``, so a run shows how its workers
    were sized (:func:`worker_threads` reads them back). Called where the work runs (Beam drops
    metrics set in ``setup``, outside a bundle); one gauge update per batch."""
    import torch

    Metrics.gauge(WORKER_NAMESPACE, f"torch_threads.{stage}.{socket.gethostname()}:{os.getpid()}").set(
        torch.get_num_threads())


def worker_threads(result) -> dict[str, int]:
    """``STAGE.HOST:PID`` -> torch threads, for each worker process of a finished pipeline."""
    query = result.metrics().query(MetricsFilter().with_namespace(WORKER_NAMESPACE))
    found = {}
    for metric in query["gauges"]:
        name = metric.key.metric.name
        if name.startswith("torch_threads."):
            value = metric.committed if metric.committed is not None else metric.attempted
            found[name[len("torch_threads."):]] = int(value.value)
    return found
