"""The stall watchdog: a run whose Beam workers never start ends with one line instead of waiting forever.

Beam's portable runner (the multi-process DirectRunner, ``--runner=PortableRunner
--job_endpoint=embed`` with EXTERNAL, PROCESS or DOCKER workers) asks for an SDK worker and then
waits for it to connect to the control service it runs in this process, without a time limit. A
worker that cannot start (an EXTERNAL pool whose Python lacks Beam or pairscore, a broken worker
command) leaves the job waiting with no message until it is killed.

The watchdog counts, in the launching process, the workers Beam has asked for and those that have
connected (:func:`instrument_beam_workers` wraps Beam's worker start and its control service), and
the progress this process has seen (pipeline/progress.py). When workers have been asked for, none
has connected, and nothing has progressed for ``seconds``, it ends the run: the main thread gets
:class:`Stalled` (the output is cleaned up as for any failure) and the command line prints one line
naming what is missing and exits 3 (the run refused to commit, pipeline/errors.py).

It never fires when there is nothing to watch: the in-process runner's worker is this process, and
remote runners' workers (Dataflow, Flink, Spark) connect to their own services. Standard library
only; Beam is touched only by :func:`instrument_beam_workers`, which the pipeline builder calls.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from pipeline.errors import RefusedToCommit


# The limit when nobody sets one (the command lines' --stall-timeout default, a job called as a
# library function).
DEFAULT_STALL_SECONDS = 300.0


class Stalled(RefusedToCommit):
    """Raised in the main thread when the watchdog ends a stalled run; its text is the one line."""


@dataclass
class WorkerLedger:
    """What this process has seen of its Beam workers: (when, what) for each one asked for, and
    the ids of those that connected. Shared by Beam's threads and the watchdog's."""
    requested: dict[str, tuple[float, str]] = field(default_factory=dict)
    connected: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def asked(self, worker_id: str, what: str, when: float) -> None:
        with self.lock:
            self.requested.setdefault(worker_id, (when, what))

    def joined(self, worker_id: str) -> None:
        with self.lock:
            self.connected.add(worker_id)


LEDGER = WorkerLedger()


@dataclass(frozen=True)
class Observation:
    """One look at the run: the ledger's state and the progress count of this process."""
    first_request: float | None       # when the first worker was asked for (None: none asked for)
    missing: tuple[str, ...]          # what was asked for and has not connected
    connected: int                    # workers that connected
    progress: int                     # rows, texts, pairs counted so far in this process


def observe(ledger: WorkerLedger, progress: int) -> Observation:
    with ledger.lock:
        requests = dict(ledger.requested)
        connected = len(ledger.connected)
    missing = tuple(dict.fromkeys(what for worker, (_, what) in requests.items() if worker not in ledger.connected))
    first = min((when for when, _ in requests.values()), default=None)
    return Observation(first, missing, connected, progress)


class Watchdog:
    """Decides, from successive observations, whether the run has stalled.

    ``look()`` gives an :class:`Observation`; ``clock`` is monotonic seconds. Pure logic, so a
    test drives it with a fake clock and fake observations (:meth:`check`)."""

    def __init__(self, seconds: float, look: Callable[[], Observation], clock: Callable[[], float] = time.monotonic):
        self.seconds, self._look, self._clock = seconds, look, clock
        self._last_progress: int | None = None
        self._progress_at = clock()

    def check(self) -> str | None:
        """The one line to end the run with, or None while it is not stalled."""
        now, seen = self._clock(), self._look()
        if seen.progress != self._last_progress:
            self._last_progress, self._progress_at = seen.progress, now
        if seen.first_request is None or seen.connected or not seen.missing:
            return None
        waited = now - max(seen.first_request, self._progress_at)
        if waited < self.seconds:
            return None
        return (f"stalled: no Beam worker has connected in {waited:.0f} s and nothing was processed; still waiting "
                f"for {', '.join(seen.missing)}. Check that the workers' Python can import apache_beam and "
                f"pairscore (the worker pool's log says why they did not start); --stall-timeout SECONDS to wait "
                f"longer, 0 to wait forever")


_watching = threading.Event()   # set while a watchdog guards this process's run


def watch(seconds: float, progress: Callable[[], int], poll: float = 1.0) -> Callable[[], None]:
    """Start watching this run in a daemon thread; returns the function that stops it. When the
    run stalls, the main thread gets :class:`Stalled` (through SIGUSR1, which also wakes it from
    the blocking waits Beam makes it do). ``seconds`` <= 0: no watching. While a watchdog already
    guards the run (the command line's, which knows --stall-timeout), a second one is not started:
    the function that runs the pipeline (pipeline/beam/runner.py ``run_to_end``) asks for one with
    the default limit, so that a job called as a library function is guarded too."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or _watching.is_set():
        return lambda: None
    _watching.set()
    with LEDGER.lock:
        LEDGER.requested.clear()
        LEDGER.connected.clear()
    dog = Watchdog(seconds, lambda: observe(LEDGER, progress()))
    stop = threading.Event()
    verdict: list[str] = []

    def interrupt(signum, frame):
        if verdict:
            # Beam's clean-up (a `finally` around the run) joins every worker it started, and a
            # worker still starting (its interpreter importing Beam) exits only once it has
            # connected and been told to stop: without this the run hung there for ever, Stalled
            # never reaching the command line (--stall-timeout 2 on the multi-process runner).
            # End them as an interrupt does, and keep Beam from logging the exception.
            from pipeline.output.guard import end_worker_processes

            logging.getLogger("apache_beam").setLevel(logging.CRITICAL + 1)
            end_worker_processes()
            raise Stalled(verdict[0])

    previous = signal.signal(signal.SIGUSR1, interrupt)
    previous_hook = threading.excepthook

    def quiet_once_stalled(args) -> None:
        # Beam's threads fail as the ended workers go ("Worker subprocess exited"): the one line says it.
        if not verdict:
            previous_hook(args)
    threading.excepthook = quiet_once_stalled

    def run() -> None:
        while not stop.wait(poll):
            message = dog.check()
            if message is not None:
                verdict.append(message)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                return

    thread = threading.Thread(target=run, name="pairscore-watchdog", daemon=True)
    thread.start()

    def end() -> None:
        stop.set()
        thread.join(timeout=5)
        signal.signal(signal.SIGUSR1, previous)
        _watching.clear()
        if threading.excepthook is quiet_once_stalled:
            threading.excepthook = previous_hook
    return end


_instrumented = False


def instrument_beam_workers() -> None:
    """Record in :data:`LEDGER` every SDK worker Beam's portable runner asks for in this process
    and every one that connects to its control service. Wraps two methods of Beam's
    ``worker_handlers`` (the worker handlers' ``start_worker`` and the control service's
    ``Control`` stream); idempotent. Called when a pipeline is built (Beam is imported then)."""
    global _instrumented
    if _instrumented:
        return
    from apache_beam.runners.portability.fn_api_runner import worker_handlers as handlers

    def describe(handler) -> str:
        payload = getattr(handler, "_external_payload", None)
        if payload is not None:
            return f"the worker asked of the worker pool at {payload.endpoint.url} (--environment_type=EXTERNAL)"
        return f"a {type(handler).__name__.replace('WorkerHandler', '')} worker"

    def wrap_start(cls) -> None:
        original = cls.__dict__["start_worker"]

        def start_worker(self):
            LEDGER.asked(self.worker_id, describe(self), time.monotonic())
            return original(self)
        cls.start_worker = start_worker

    for cls in (handlers.ExternalWorkerHandler, handlers.SubprocessSdkWorkerHandler,
                handlers.DockerSdkWorkerHandler):
        wrap_start(cls)

    control = handlers.BeamFnControlServicer.Control

    def Control(self, iterator, context):  # noqa: N802 - Beam's gRPC method name
        worker_id = dict(context.invocation_metadata()).get("worker_id")
        if worker_id:
            LEDGER.joined(worker_id)
        yield from control(self, iterator, context)
    handlers.BeamFnControlServicer.Control = Control
    _instrumented = True

