"""What a run writes to stderr besides its progress line: the log levels of a run, and the
filter in front of Beam's multi-process workers, which write to this process's stderr.

- :func:`configure_logging`: Beam's messages only with ``--verbose``; a full disk never (the job
  says it in one line).
- :func:`through_worker_filter`: the workers' progress records go to ``pipeline/progress.py``
  (one line for the whole run), their start-up log lines and their records of a usage error
  (which the job reports in one line) are dropped unless ``--verbose``, and every other line
  (errors) is written above the live progress line.

Used by the command line (``jobs.common.run_job``). Stdlib only, so it is imported before Beam
and torch.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import threading
from typing import Callable, Iterator, TextIO

from pipeline import progress
from pipeline.errors import UsageError, mentions_refusal, mentions_usage_error, refusal_in


class _DropImportNoise(logging.Filter):
    """Beam warns at import that optional Google Cloud clients are missing; irrelevant here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def configure_logging(verbose: bool) -> None:
    """The logging and warnings of a command-line run, set when the run starts (``run_job``) and
    never at import, so that a program using pairscore as a library keeps its own: a root handler
    (if the program has none), Beam's INFO and WARNING messages (runner, workers, file renames)
    only with --verbose, its report of a full disk never (the job's one line names the file), and
    neither its import-time note on missing Google Cloud clients nor the FutureWarning of
    Beam's pattern matching on an escaped glob (pipeline/paths.py)."""
    import warnings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Beam turns the escaped ``[[]`` into the regular expression ``[[]``, which means exactly "[" but
    # makes Python's ``re`` warn that a nested set may be meant one day.
    warnings.filterwarnings("ignore", message="Possible nested set", category=FutureWarning,
                            module=r"apache_beam\.io\.filesystem")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("apache_beam").setLevel(logging.INFO if verbose else logging.ERROR)
    quiet_refusal_logs()
    for handler in logging.getLogger().handlers:
        for kind in (_DropImportNoise, _DiskFullLogFilter, _RefusalLogFilter):
            if not any(isinstance(f, kind) for f in handler.filters):
                handler.addFilter(kind())


class _RefusalLogFilter(logging.Filter):
    """Drops Beam's log records (message and traceback) of a step that raised a
    ``pipeline.errors.RefusedToCommit`` (an input changed mid-run ...), whether the record holds
    the exception or, forwarded from a worker process, its text: the job reports it in one line,
    exit 3."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and refusal_in(record.exc_info[1]) is not None:
            return False
        return not mentions_refusal(record.getMessage())


# The loggers through which Beam reports a failed step: the DoFn runner (in the process that ran the
# step), the SDK worker (forwarded to the launching process) and the launcher's job service.
_BEAM_FAILURE_LOGGERS = ("apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker",
                         "apache_beam.runners.portability.local_job_service")


def quiet_refusal_logs(raising: bool = False) -> None:
    """Keep Beam from logging a refusal (see _RefusalLogFilter) in this process. Called by the
    launching process (configure_logging) and, with ``raising``, by the step about to raise the
    refusal, in whatever process runs it: Beam logs the failed step there with its traceback,
    forwards that record to the launcher, and a Beam worker process also prints the traceback to
    its stderr (``sdk_worker._execute``), which :class:`_RefusalDroppingStream` keeps back. Idempotent."""
    for name in _BEAM_FAILURE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RefusalLogFilter) for f in logger.filters):
            logger.addFilter(_RefusalLogFilter())
    if raising and not isinstance(sys.stderr, _RefusalDroppingStream):
        sys.stderr = _RefusalDroppingStream(sys.stderr)


class _RefusalDroppingStream:
    """A text stream that passes every write on except one reporting a refusal (a traceback that
    ends in ``pipeline.errors.InputChanged: ...``, written at once by ``print``) and the newline
    ``print`` writes after it."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._dropped = False

    def write(self, text: str) -> int:
        dropped, self._dropped = self._dropped, False
        if mentions_refusal(text):
            self._dropped = True
            return len(text)
        if dropped and text == "\n":
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _DiskFullLogFilter(logging.Filter):
    """Drops the log records (Beam logs a failed transform with its traceback before raising it
    again) of a full disk, which the job reports in one line naming the file."""

    def filter(self, record: logging.LogRecord) -> bool:
        error, seen = (record.exc_info[1] if record.exc_info else None), set()
        while error is not None and id(error) not in seen:
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                return False
            seen.add(id(error))
            error = error.__cause__ or error.__context__
        return f"[Errno {errno.ENOSPC}]" not in record.getMessage()


# What a Beam worker process logs through its default handler ("INFO:__main__:...", from its
# start-up, before it has read the pipeline options that set its log level).
_WORKER_LOG_LINE = re.compile(rb"^(DEBUG|INFO|WARNING):(root|__main__|apache_beam[\w.]*):")
_RECORD_PREFIX = progress.RECORD_PREFIX.encode("utf-8")


@contextlib.contextmanager
def through_worker_filter(drop_logs: bool = True, interrupted: Callable[[], bool] = lambda: False
                          ) -> Iterator[tuple[TextIO, Callable[[], None]]]:
    """Route file descriptor 2 (inherited by Beam's worker processes) through a thread that takes
    the workers' progress records (pipeline/progress.py adds them to this process's line), drops
    the workers' start-up log lines and their records of a usage error (the job's one line says
    it) unless ``drop_logs`` is False (--verbose), and passes every other line on, above the live
    progress line. Yields a stream on the real stderr for the
    progress line (which redraws in place, so it bypasses the line filter) and ``drain()``, which
    ends the filtering once everything written so far (the workers' last records) is through.
    ``interrupted``: whether a Ctrl-C or SIGTERM is ending the run (the run guard's, from the
    runner: ``pipeline.output.guard.RunGuard.interrupted``); the workers then die of it, and
    whatever they print is dropped, the job's one line says it."""
    sys.stderr.flush()
    try:
        real = os.dup(2)
    except OSError:  # no file descriptor 2 to filter (embedded use): leave it alone
        yield sys.stderr, lambda: None
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as source:
            while chunk := source.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                if interrupted():   # workers dying of the same Ctrl-C: the job's one line says it
                    continue
                kept = b"".join(out + b"\n" for line in lines if keep(line) for out in errors(line))
                if kept:
                    progress.write_above(lambda: os.write(real, kept))
        rest = b"".join(out + b"\n" for out in (usage_errors.flush() if drop_logs else []))
        if pending and keep(pending):
            rest += pending
        if rest:
            progress.write_above(lambda: os.write(real, rest))

    usage_errors = _WorkerUsageErrors()

    def errors(line: bytes) -> list[bytes]:
        return usage_errors.feed(line) if drop_logs else [line]

    def keep(line: bytes) -> bool:
        if line.startswith(_RECORD_PREFIX) and progress.receive_record(line.decode("utf-8", "replace")):
            return False
        return not (drop_logs and _WORKER_LOG_LINE.match(line))

    thread = threading.Thread(target=pump, name="pairscore-stderr", daemon=True)
    thread.start()
    stream = os.fdopen(os.dup(real), "w", buffering=1)
    drained = []

    def drain() -> None:
        if not drained:
            drained.append(True)
            sys.stderr.flush()
            os.dup2(real, 2)   # closes the pipe's last write end held here: the pump sees its end
            thread.join(timeout=5)
    try:
        yield stream, drain
    finally:
        drain()
        stream.close()
        os.close(real)


class _OneLineErrorLogFilter(logging.Filter):
    """Drops Beam's log record (message, ERROR and traceback) of a step that raised an error the
    job reports in one line itself: a bad input or argument (the UsageError family: a Parquet row
    group that will not decompress, a truncated .gz ...). Kept with --verbose, and for any other
    error (a bug: its traceback is what the user reports)."""
    verbose = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        error, seen = (record.exc_info[1] if record.exc_info else None), set()
        while error is not None and id(error) not in seen:
            if isinstance(error, UsageError):
                return False
            seen.add(id(error))
            error = error.__cause__ or error.__context__
        return not mentions_usage_error(record.getMessage())   # forwarded from a worker: its text


def quiet_one_line_error_logs(verbose: bool) -> None:
    """Keep Beam's DoFn runner, which logs a failed step with its traceback before raising it
    again, and the job service, which logs what a worker process reported, from printing an error
    that ``jobs.common.run_job`` prints as one line (exit 2)."""
    for name in _BEAM_FAILURE_LOGGERS:
        logger = logging.getLogger(name)
        found = next((f for f in logger.filters if isinstance(f, _OneLineErrorLogFilter)), None)
        if found is None:
            found = _OneLineErrorLogFilter()
            logger.addFilter(found)
        found.verbose = verbose


# A Beam worker process's own record of a failed step or bundle, as its default log handler prints
# it to the stderr this process filters, and the lines of the traceback that follow it.
_WORKER_ERROR_LINE = re.compile(rb"^(ERROR|CRITICAL):(root|__main__|apache_beam[\w.]*):")
_TRACEBACK_LINE = re.compile(rb"^(\s|$|Traceback \(most recent call last\):|The above exception|"
                             rb"During handling of the above exception|(?:[a-z_]\w*\.)*[A-Z]\w*: )")


class _WorkerUsageErrors:
    """Holds a worker's error record back until its traceback ends, then drops it when it reports
    a usage error (the job says that in one line, exit 2) and passes it on otherwise."""

    def __init__(self) -> None:
        self._held: list[bytes] = []

    def feed(self, line: bytes) -> list[bytes]:
        """The lines to write now, ``line`` included or held."""
        if self._held and _TRACEBACK_LINE.match(line):
            self._held.append(line)
            return []
        out = self.flush()
        if _WORKER_ERROR_LINE.match(line):
            self._held = [line]
        else:
            out.append(line)
        return out

    def flush(self) -> list[bytes]:
        held, self._held = self._held, []
        return [] if held and mentions_usage_error(b"\n".join(held).decode("utf-8", "replace")) else held
