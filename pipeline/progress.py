"""Progress while a job runs: rows read, texts encoded, pairs scored, their rates, time elapsed,
and, where the input's size is known up front (:func:`expect`), its total, percentage and ETA.

One reporter per process. The Beam DoFns count through ``pipeline.beam.encode.counter`` (the Beam
counters the summary reads); the counters named in ``LABELS`` also add to a tally, a plain
integer of this process, so counting costs no lock, clock or output on the DoFn's thread (it
runs per row). A daemon thread of the reporter sums the tallies twice a second and writes:

- on a terminal (stderr is a TTY): one live line, redrawn in place every ``LIVE_SECONDS``;
- otherwise (schedulers, log files): a plain line every ``LOG_SECONDS``;
- nothing with ``--quiet``.

The command line switches it on with ``start`` and off with ``stop``. ``start`` also puts the
mode in the environment, which Beam's multi-process workers inherit. When the launching process
reads its workers' stderr (``collect_workers``: the multi-process runner, pipeline/stderr.py), each
worker sends its counts there as a record line (:data:`RECORD_PREFIX`) about once a second; the
launching process adds them to its own and shows one line for the whole run, and lines the
workers print otherwise (errors) are written above the live line, never into it
(:func:`write_above`). A worker whose launching process does not collect prints its own share as
plain lines tagged with its process id, only when its counts moved. Workers of a remote runner do
not inherit the mode and stay silent: their progress is the runner's own UI. Stdlib only, so the
command line can import it before Beam and torch.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from typing import TextIO

# Beam counter (prefix + name, see pipeline/beam/encode.py, score.py, label.py) -> what the line calls it.
# Counters with one label are summed (both sides' texts encoded are "texts encoded").
LABELS = {
    "rows_read": "rows read",                    # encode_texts, label_pairs
    "pairs.rows_read": "pairs read",             # score_pairs
    "left_texts.rows_read": "text rows read",    # score_pairs, pairs of ids
    "right_texts.rows_read": "text rows read",
    "texts_encoded": "texts encoded",            # encode_texts
    "left.texts_encoded": "texts encoded",       # score_pairs, texts not yet in a store
    "right.texts_encoded": "texts encoded",
    "pairs.rows_scored": "pairs scored",         # score_pairs
    "pairs_labeled": "pairs labeled",            # label_pairs
    "input_bytes_read": "input read",            # every job's JSONL/CSV/TSV inputs (pipeline/readers/streams.py)
}
# Labels counting bytes: shown in MB.
BYTE_LABELS = frozenset({"input read"})
MODES = ("live", "log", "off")
LIVE_SECONDS = 0.5
WORKER_LIVE_SECONDS = 5.0   # a worker's plain lines while the launching process has a terminal
WORKER_RECORD_SECONDS = 1.0  # a worker's records to a launching process that collects them
LOG_SECONDS = 30.0
# Environment the launching process sets for itself and the Beam workers it starts.
ENV_MODE = "PAIRSCORE_PROGRESS"                  # live | log | off
ENV_OWNER = "PAIRSCORE_PROGRESS_PID"             # the launching process; others are workers
ENV_JOB = "PAIRSCORE_PROGRESS_JOB"               # e.g. score_pairs
ENV_STARTED = "PAIRSCORE_STARTED"                # wall-clock time the launching process started
ENV_INTERVAL = "PAIRSCORE_PROGRESS_SECONDS"      # overrides the interval (tests)
ENV_COLLECT = "PAIRSCORE_PROGRESS_COLLECT"       # "1": the launching process reads its workers' records
# A worker's counts, one line on its stderr: RECORD_PREFIX + {"pid": ..., "counts": {label: n}}.
RECORD_PREFIX = "pairscore-progress-record "


def bar_options(stream: TextIO | None = None) -> dict:
    """``file`` and ``mininterval`` for a tqdm bar (the jobs without Beam: training, mining), so
    that it behaves as the line here: redrawn every second on a terminal, a plain line every
    ``LOG_SECONDS`` otherwise."""
    stream = stream if stream is not None else sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return {"file": stream, "mininterval": 1.0}
    return {"file": LineStream(stream), "mininterval": LOG_SECONDS}


def tqdm_bars(stream: TextIO | None = None):
    """The progress callback of the library (``encoders/progress.py``): tqdm bars drawn with
    :func:`bar_options`."""
    def bars(total: int, description: str, unit: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=description, unit=unit, **bar_options(stream))
    return bars


class LineStream:
    """A stream for tqdm off a terminal: each redraw (``\r`` + bar) becomes one plain line, so a
    log file gets readable lines instead of carriage returns."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self._stream.write(text + "\n")

    def flush(self) -> None:
        self._stream.flush()


def choose_mode(quiet: bool, stream: TextIO | None = None) -> str:
    """``off`` with --quiet, ``live`` on a terminal, else ``log``."""
    if quiet:
        return "off"
    stream = stream if stream is not None else sys.stderr
    return "live" if getattr(stream, "isatty", lambda: False)() else "log"


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def _amount(label: str, value: float) -> str:
    return f"{value / 1e6:,.1f} MB" if label in BYTE_LABELS else f"{value:,.0f}"


def format_line(job: str, elapsed: float, counts: dict[str, int], rates: dict[str, float],
                totals: dict[str, int] | None = None) -> str:
    """``score_pairs 1:02 | pairs read 12,000 (980/s) | pairs scored 8,192 (1,950/s)``; a count
    whose total is known up front (``totals``) shows it with a percentage and, once it has a
    rate, the time left at that rate: ``pairs labeled 1,200 of 48,000 (2%, 35/s, ETA 22:17)``.
    ASCII only, whatever the log's encoding."""
    parts = [f"{job} {_clock(elapsed)}"]
    for label, value in counts.items():
        rate, total = rates.get(label), (totals or {}).get(label)
        shown = f"{label} {_amount(label, value)}"
        notes = []
        if total:
            shown += f" of {_amount(label, total)}"
            notes.append(f"{min(100, 100 * value // total)}%")
        if rate:
            notes.append(f"{_amount(label, rate)}/s")
            if total and value < total:
                notes.append(f"ETA {_clock((total - value) / rate)}")
        parts.append(shown + (f" ({', '.join(notes)})" if notes else ""))
    if len(parts) == 1:
        parts.append("running")
    return " | ".join(parts)


class Reporter:
    """The counts of this process and the thread that shows them. ``clock`` is wall time (it is
    compared with the launching process's start, which a worker process reads from the
    environment); ``stream`` is where lines go."""

    def __init__(self, job: str, mode: str, started: float, worker: bool, interval: float | None = None,
                 stream: TextIO | None = None, clock=time.time, records: bool = False):
        self.job, self.mode, self.started, self.worker = job, mode, started, worker
        self.records = records and worker     # a worker sending its counts to its launching process
        if interval is None:
            interval = (WORKER_RECORD_SECONDS if self.records else LOG_SECONDS if mode == "log"
                        else WORKER_LIVE_SECONDS if worker else LIVE_SECONDS)
        self.interval = interval
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._lock = threading.Lock()
        self._tallies: list[tuple[str, list[int]]] = []   # (label, [count]) per counting DoFn
        self._direct: dict[str, list[int]] = {}
        self._first_seen: dict[str, float] = {}
        self._last_moved: dict[str, tuple[int, float]] = {}  # label -> (count, when the line saw it move)
        self._shown: dict[str, int] = {}
        self._live_drawn = False
        self._workers: dict[int, dict[str, int]] = {}   # worker pid -> its latest counts (records)
        self.totals: dict[str, int] = {}                # label -> its total, when known up front
        self._output_lock = threading.Lock()            # the live line and the lines written above it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tally(self, label: str) -> list[int]:
        """A new one-integer tally under ``label`` for one counting object to add to."""
        counter = [0]
        with self._lock:
            self._tallies.append((label, counter))
        return counter

    def add(self, label: str, n: int) -> None:
        """Add ``n`` under ``label`` (for counting outside a Beam counter)."""
        if label not in self._direct:
            self._direct[label] = self.tally(label)
        self._direct[label][0] += n

    def counts(self) -> dict[str, int]:
        """Label -> the sum of its tallies, in the order the labels first counted."""
        with self._lock:
            tallies = list(self._tallies)
            workers = list(self._workers.values())
        totals: dict[str, int] = {}
        for label, counter in tallies:
            if counter[0]:
                totals[label] = totals.get(label, 0) + counter[0]
        for counts in workers:
            for label, value in counts.items():
                totals[label] = totals.get(label, 0) + value
        return totals

    def receive(self, pid: int, counts: dict[str, int]) -> None:
        """A worker's latest counts (its record): they replace its earlier ones in the totals."""
        with self._lock:
            self._workers[pid] = counts

    def line(self) -> str:
        """The line for now. A rate is over the time its count was seen moving, so a finished
        stage keeps the rate it ran at."""
        now = self._clock()
        counts = self.counts()
        rates = {}
        for label, value in counts.items():
            self._first_seen.setdefault(label, now)
            if self._last_moved.get(label, (None,))[0] != value:
                self._last_moved[label] = (value, now)
            seconds = self._last_moved[label][1] - self._first_seen[label]
            if seconds >= 1.0:
                rates[label] = value / seconds
        job = f"{self.job} [worker {os.getpid()}]" if self.worker else self.job
        return format_line(job, now - self.started, counts, rates, self.totals)

    def show(self, final: bool = False) -> None:
        """Write the current line (a worker only when its counts moved since the last one)."""
        if self.mode == "off":
            return
        counts = self.counts()
        moved, self._shown = counts != self._shown, counts
        if self.worker and not moved:
            return
        if self.records:
            self._stream.write(RECORD_PREFIX + json.dumps({"pid": os.getpid(), "counts": counts}) + "\n")
            self._stream.flush()
            return
        text = self.line()
        with self._output_lock:
            if self.mode == "live" and not self.worker:
                self._stream.write("\r" + text + "\x1b[K" + ("\n" if final else ""))
                self._live_drawn = not final
            else:
                self._stream.write(text + "\n")
            self._stream.flush()

    def write_above(self, write) -> None:
        """Call ``write()`` (which writes whole lines to the same terminal) with the live line
        cleared first, so the two never run together; the next tick draws the live line again."""
        with self._output_lock:
            if self._live_drawn:
                self._stream.write("\r\x1b[K")
                self._stream.flush()
                self._live_drawn = False
            write()

    def start_thread(self) -> None:
        if self.mode == "off" or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="pairscore-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_at = self._clock() + self.interval
        while not self._stop.wait(min(self.interval, 0.5)):
            if self._clock() >= next_at:
                next_at = self._clock() + self.interval
                try:
                    self.show()
                except (OSError, ValueError):  # stream closed under us (interpreter exit)
                    return

    def close(self) -> None:
        """Stop the thread; a live line gets its final state and a line end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.mode == "live" and not self.worker and self._live_drawn:
            self.show(final=True)


_reporter: Reporter | None = None
_reporter_lock = threading.Lock()


def start(job: str, quiet: bool, started: float, stream: TextIO | None = None,
          collect_workers: bool = False) -> Reporter:
    """Report progress of ``job`` from this process (and its Beam workers) until ``stop``.
    ``started``: wall-clock time the process started (the elapsed time counts from it).
    ``collect_workers``: the caller passes the workers' record lines to :func:`receive_record`."""
    global _reporter, _silent_pid
    _silent_pid = None
    mode = choose_mode(quiet, stream)
    os.environ.update({ENV_MODE: mode, ENV_OWNER: str(os.getpid()), ENV_JOB: job, ENV_STARTED: repr(started)})
    if collect_workers:
        os.environ[ENV_COLLECT] = "1"
    with _reporter_lock:
        _reporter = Reporter(job, mode, started, worker=False, interval=_interval_from_env(), stream=stream)
        _reporter.start_thread()
    return _reporter


def active() -> bool:
    """Whether this process shows a progress line (a job run without --quiet)."""
    reporter = _reporter
    return reporter is not None and reporter.mode != "off" and not reporter.worker


def expect(totals: dict[str, int]) -> None:
    """Totals known before the run (Parquet footers' rows, text inputs' bytes), by counter name
    (one of ``LABELS``): this process's line shows each with a percentage and an ETA. Counters
    that share a label share a total (left and right text rows read)."""
    reporter = _reporter
    if reporter is None:
        return
    for name, total in totals.items():
        label = LABELS[name]
        reporter.totals[label] = reporter.totals.get(label, 0) + int(total)


def stop() -> None:
    """End the report (the live line keeps its last state) and forget the settings."""
    global _reporter
    with _reporter_lock:
        reporter, _reporter = _reporter, None
    if reporter is not None:
        reporter.close()
    for name in (ENV_MODE, ENV_OWNER, ENV_JOB, ENV_STARTED, ENV_COLLECT):
        os.environ.pop(name, None)


def receive_record(line: str) -> bool:
    """If ``line`` is a worker's record, add its counts to this process's report and return True
    (the line is not shown); otherwise False."""
    if not line.startswith(RECORD_PREFIX):
        return False
    reporter = _reporter
    try:
        record = json.loads(line[len(RECORD_PREFIX):])
        if reporter is not None:
            reporter.receive(int(record["pid"]), {str(k): int(v) for k, v in record["counts"].items()})
    except (ValueError, KeyError, TypeError, AttributeError):
        return False              # not one of ours after all: shown as it is
    return True


def write_above(write) -> None:
    """Call ``write()`` (whole lines for the terminal) above this process's live line, if any."""
    reporter = _reporter
    if reporter is None:
        write()
    else:
        reporter.write_above(write)


def counted() -> int:
    """Everything this process's reporter has counted so far (0 when none reports): a number that
    moves while the run makes progress here."""
    reporter = _reporter
    return sum(reporter.counts().values()) if reporter is not None else 0


def tally(name: str) -> list[int]:
    """A tally for the Beam counter ``name`` (prefix + name, one of ``LABELS``) to add to: shown
    by this process's reporter, or a tally nobody reads when this process does not report."""
    reporter = _reporter or _worker_reporter()
    return reporter.tally(LABELS[name]) if reporter is not None else [0]


_silent_pid: int | None = None  # a process found not to report (e.g. a remote worker): no more lookups


def _worker_reporter() -> Reporter | None:
    """In a Beam worker process started by a reporting job: its own reporter, made once."""
    global _reporter, _silent_pid
    if _silent_pid == os.getpid():
        return None
    mode = os.environ.get(ENV_MODE)
    if mode not in ("live", "log"):
        _silent_pid = os.getpid()
        return None
    with _reporter_lock:
        if _reporter is None:
            try:
                started = float(os.environ.get(ENV_STARTED, ""))
            except ValueError:
                started = time.time()
            worker = os.environ.get(ENV_OWNER) != str(os.getpid())
            records = os.environ.get(ENV_COLLECT) == "1"
            # A record interval of its own: the launching process's interval is for lines people read.
            _reporter = Reporter(os.environ.get(ENV_JOB, "pairscore"), mode, started, worker=worker,
                                 interval=None if records else _interval_from_env(), records=records)
            if _reporter.records:
                # A worker ends when the pipeline does: its last counts go out as it exits.
                atexit.register(_reporter.show)
            _reporter.start_thread()
        return _reporter


def _interval_from_env() -> float | None:
    try:
        return float(os.environ[ENV_INTERVAL])
    except (KeyError, ValueError):
        return None
