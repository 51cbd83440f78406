"""The run guard (step 6 of the protocol, pipeline/output/__init__.py): a run that fails or is
interrupted leaves every output as it was, and says so in one line.

A :class:`RunGuard` is one run's state: the outputs it opened, the signal that is ending it, and
how each output ended. The job's runner (``jobs.common.run_job``) makes one and hands it to whoever
needs it: the worker-log filter asks :meth:`RunGuard.interrupted` (pipeline/stderr.py), the runner
asks :meth:`RunGuard.one_line_failure` for the last line. While the runner holds it
(:meth:`RunGuard.current`) it is this context's run, which is how the job's ``run`` (decorated
with :func:`abort_output_on_failure`) and ``open_output`` (called by job code that never sees the
guard) find it. A job called as a library (tests, ``pipeline.spark.api.write_scores``) gets a guard
of its own from the decorator.

Standard library only: the runner makes its guard before the job imports Beam.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import logging
import os
import re
import signal
import threading
from typing import Callable, Iterator, Protocol, TypeVar

from pipeline.errors import EXIT_SIGINT

F = TypeVar("F", bound=Callable)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended the run; raised once its outputs are rolled back (or found
    committed). ``line``: the one line to print; ``exit_status``: 130 / 143. A KeyboardInterrupt,
    so that callers which stop on Ctrl-C stop on it too."""

    def __init__(self, signum: int, line: str):
        super().__init__(line)
        self.signum = signum
        self.line = line
        self.exit_status = 128 + signum


class GuardedOutput(Protocol):
    """What the guard needs of an open output (``commit.OutputDir``)."""
    path: str
    outcome: str | None   # "committed", "rolled back", or None while open
    closed: bool

    def abort(self) -> None: ...


# The run of this context (thread, or asyncio task): set while a runner holds its guard, and
# during a guarded call. Only a reference: the state itself is the RunGuard's.
_CURRENT: contextvars.ContextVar[RunGuard | None] = contextvars.ContextVar("pairscore_run_guard", default=None)


def current_run() -> RunGuard | None:
    """The guard of the run in progress in this context; None outside a run."""
    return _CURRENT.get()


class RunGuard:
    """One run's outputs and interrupts: see the module docstring.

    ``interrupted_by``: the first SIGINT / SIGTERM of the run (None when none came). Beam wraps an
    exception raised inside a transform in its own RuntimeError, so how the run ended is judged by
    this, not by the exception that reaches the guarded call. ``outcomes``: (output, outcome) of the
    outputs the failed guarded call closed, what the one line says."""

    def __init__(self) -> None:
        self.interrupted_by: int | None = None
        self.outcomes: list[tuple[str | None, str | None]] = []
        self._opened: list[GuardedOutput] | None = None   # during a guarded call: what it opened

    def interrupted(self) -> bool:
        """Whether a Ctrl-C or SIGTERM is ending the run (any thread may ask)."""
        return self.interrupted_by is not None

    @contextlib.contextmanager
    def current(self) -> Iterator[RunGuard]:
        """Make this the run of this context while the block runs (the runner, around the job)."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    def track(self, out: GuardedOutput) -> None:
        """``open_output`` opened ``out``: abort it if the guarded call fails before it is closed."""
        if self._opened is not None:
            self._opened.append(out)

    def call(self, run: Callable, *args, **kwargs):
        """``run(*args, **kwargs)``, guarded (see :func:`abort_output_on_failure`). A call inside
        another guarded call of the same run aborts what it opened itself; the outer one holds
        the signal handlers."""
        outer, self._opened = self._opened, []
        token = _CURRENT.set(self)
        previous = self._interrupt_handlers() if outer is None else {}
        if outer is None:
            self.interrupted_by = None
        output = getattr(args[0], "output", None) if args else None
        try:
            return run(*args, **kwargs)
        except BaseException as err:
            outcomes = []
            for out in [out for out in self._opened if not out.closed]:
                try:
                    out.abort()
                except KeyboardInterrupt:
                    pass   # a signal held back during the clean-up, delivered when it was done
                outcomes.append((out.path, out.outcome))
            self.outcomes = outcomes or [(output, None)]
            signum = self.interrupted_by
            if signum is None and isinstance(err, KeyboardInterrupt):
                signum = signal.SIGINT
            if signum is not None:   # whatever Beam wrapped it in: one line, 130 / 143
                raise Interrupted(signum, self._interrupted_line(signum)) from None
            raise
        finally:
            for signum, handler in previous.items():
                if signum == "excepthook":
                    threading.excepthook = handler
                else:
                    signal.signal(signum, handler)
            self._opened = outer
            _CURRENT.reset(token)

    def _interrupt_handlers(self) -> dict:
        """In the main thread, make SIGINT (unless ignored, as for a background job) and SIGTERM
        (unless someone handles it) end the run through an exception, the first one only; returns
        the handlers to restore."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def interrupt(signum, frame):
            if self.interrupted_by is not None:
                return   # already ending: let the clean-up finish
            self.interrupted_by = signum
            # Beam logs an exception that ends a transform, traceback and all, before re-raising it.
            logging.getLogger("apache_beam").setLevel(logging.CRITICAL + 1)
            end_worker_processes()
            raise Interrupted(signum, "interrupted")

        previous: dict = {"excepthook": threading.excepthook}

        def quiet_while_interrupted(args) -> None:
            # Beam's threads fail as the run ends ("Worker subprocess exited"): the one line says it.
            if self.interrupted_by is None:
                previous["excepthook"](args)
        threading.excepthook = quiet_while_interrupted
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, interrupt)
        return previous

    def _interrupted_line(self, signum: int) -> str:
        name = "interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"
        committed = [path for path, outcome in self.outcomes if outcome == "committed"]
        if committed:
            return f"{name} after {', '.join(committed)} was committed: it is complete"
        where = ", ".join(path for path, _ in self.outcomes if path) or "the output"
        return f"{name}: nothing committed, {where} left as it was"

    def one_line_failure(self, err: BaseException) -> tuple[str, int] | None:
        """The one line and exit status for a run that ended with ``err``, where a traceback would
        not help: an interrupt, or a full disk (naming the file). None for anything else. A
        Ctrl-C outside the guarded call (the job still importing its modules) has opened nothing."""
        if isinstance(err, Interrupted):
            return err.line, err.exit_status
        full = _disk_full_path(err)
        if full is not None:
            paths = [path for path, _ in self.outcomes if path]
            kept = f": nothing committed, {', '.join(paths)} left as it was" if paths and all(
                outcome != "committed" for _, outcome in self.outcomes) else ""
            return f"error: no space left on device writing {full or next(iter(paths), 'the output')}{kept}", 1
        if isinstance(err, KeyboardInterrupt):
            return "interrupted: nothing committed", EXIT_SIGINT
        return None


def abort_output_on_failure(run: F) -> F:
    """Decorate a job's ``run``: an output opened by ``open_output`` during the call is aborted (a
    commit that did not reach its ``_SUCCESS`` rolled back, the earlier output back in place,
    staging and lock removed) if the call raises.

    While it runs, Ctrl-C and SIGTERM (what schedulers send on a timeout) end the run the same
    way and then raise :class:`Interrupted` (exit 130 / 143 with one line, jobs.common.run_job);
    a second signal during the clean-up is ignored. Only SIGKILL leaves leftovers, which the
    next ``--overwrite`` cleans up. The state goes to the runner's guard (:func:`current_run`),
    or to a guard of the call's own when there is no runner."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        return (current_run() or RunGuard()).call(run, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then deliver them (main thread only):
    a roll-back or clean-up cut short by a second Ctrl-C could leave a marker without its data."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if received:
            signal.raise_signal(received[0])


def end_worker_processes() -> None:
    """SIGTERM every Beam worker process below this one. Beam's multi-process workers (``sh -c
    python -m ...sdk_worker_main``) wait to be told to stop while the runner, cleaning up after the
    interrupt, waits for them to exit: ending them lets the run clean up and exit. Only processes
    whose command line names ``apache_beam`` are ended: a program calling a job as a library may
    have children of its own (a Spark session's JVM, say) that must live on. Linux only (/proc);
    elsewhere nothing is done."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    pending, below = [os.getpid()], []
    while pending:
        for child in children.get(pending.pop(), []):
            below.append(child)
            pending.append(child)
    for pid in below:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"apache_beam" not in handle.read():
                    continue
            os.kill(pid, signal.SIGTERM)


_ERRNO_NOSPC = re.compile(r"\[Errno %d\][^:]*(?::\s*'([^']+)')?" % errno.ENOSPC)


def _disk_full_path(err: BaseException | None) -> str | None:
    """The file a full disk failed to write, from ``err`` or what it wraps (Beam turns a worker's
    OSError into a RuntimeError holding its text): "" when the error names none; None if ``err``
    is not a full disk."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return str(err.filename) if err.filename else ""
        found = _ERRNO_NOSPC.search(str(err))
        if found:
            return found.group(1) or ""
        err = err.__cause__ or err.__context__
    return None
