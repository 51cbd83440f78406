"""The stall watchdog: a run whose Beam workers never connect ends with one line and exit 3;
a run with a connected worker, with progress, or with no worker to wait for is left alone."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.beam import watchdog
from pipeline.beam.watchdog import LEDGER, Observation, Stalled, Watchdog, WorkerLedger, observe

REPO = Path(__file__).resolve().parents[2]
POOL = "the worker asked of the worker pool at localhost:1 (--environment_type=EXTERNAL)"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fires_only_when_workers_were_asked_for_none_came_and_nothing_moved():
    clock, seen = Clock(), {"obs": Observation(None, (), 0, 0)}
    dog = Watchdog(60, lambda: seen["obs"], clock)
    clock.now += 3600
    assert dog.check() is None                                   # nothing asked for: in-process, nothing to miss
    seen["obs"] = Observation(clock.now, (POOL,), 0, 0)
    clock.now += 59
    assert dog.check() is None
    clock.now += 1
    message = dog.check()
    assert message.startswith("stalled: no Beam worker has connected in 60 s and nothing was processed")
    assert POOL in message and "--stall-timeout" in message


def test_progress_restarts_the_count_and_a_connected_worker_stops_it():
    clock = Clock()
    seen = {"obs": Observation(clock.now, (POOL,), 0, 0)}
    dog = Watchdog(60, lambda: seen["obs"], clock)
    assert dog.check() is None
    clock.now += 50
    seen["obs"] = Observation(seen["obs"].first_request, (POOL,), 0, 7)   # this process counted rows
    assert dog.check() is None
    clock.now += 59
    assert dog.check() is None
    clock.now += 1
    assert dog.check() is not None
    seen["obs"] = Observation(seen["obs"].first_request, (POOL,), 1, 7)   # one worker is there
    clock.now += 10_000
    assert dog.check() is None


def test_the_ledger_names_the_workers_that_never_connected():
    ledger = WorkerLedger()
    ledger.asked("1", "worker one", 5.0)
    ledger.asked("2", "worker two", 3.0)
    ledger.joined("1")
    assert observe(ledger, 4) == Observation(3.0, ("worker two",), 1, 4)


def test_a_stalled_run_wakes_the_blocked_main_thread():
    before = signal.getsignal(signal.SIGUSR1)
    stop = watchdog.watch(0.01, lambda: 0, poll=0.01)
    try:
        LEDGER.asked("w", "the test's worker", time.monotonic() - 100)
        with pytest.raises(Stalled, match="the test's worker"):
            threading.Event().wait(300)        # a blocking wait, as Beam's: the signal wakes it at once
    finally:
        stop()
    assert signal.getsignal(signal.SIGUSR1) == before                # the handler is given back


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.fixture
def broken_worker_pool(tmp_path, worker_pool_env):
    """A real EXTERNAL worker pool whose worker command fails at once (as a pool whose Python lacks
    Beam does): the Beam args that send a job's work to it."""
    broken = tmp_path / "worker"
    broken.write_text("#!/bin/sh\necho 'No module named apache_beam' >&2\nexit 1\n")
    broken.chmod(0o755)
    port = _free_port()
    pool = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                             f"--service_port={port}", f"--container_executable={broken}"],
                            env=worker_pool_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while True:                                   # until the pool listens (or has died)
            with socket.socket() as probe:
                if probe.connect_ex(("localhost", port)) == 0:
                    break
            assert pool.poll() is None, "the worker pool did not start"
            time.sleep(0.2)
        yield ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
               f"--environment_config=localhost:{port}"]
    finally:
        os.killpg(pool.pid, signal.SIGTERM)
        pool.wait(timeout=60)


def test_score_pairs_with_a_worker_pool_whose_workers_cannot_start(tmp_path, tiny_checkpoint, broken_worker_pool,
                                                                   worker_pool_env):
    """The command line: the job ends with exit 3 and one line naming the pool, and leaves no output."""
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"left": "a red fox", "right": "a fox"}) + "\n")
    port = broken_worker_pool[-1].rsplit(":", 1)[1]
    done = subprocess.run(
        [sys.executable, "-m", "jobs.score_pairs", "--pairs", str(tmp_path / "pairs.jsonl"), "--model",
         tiny_checkpoint, "--output", str(tmp_path / "out"), "--stall-timeout", "2", *broken_worker_pool],
        capture_output=True, text=True, env=worker_pool_env, timeout=600)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 3, done.stderr[-3000:]   # refused to commit (pipeline/errors.py)
    assert len(errors) == 1 and "stalled: no Beam worker has connected" in errors[0], done.stderr[-3000:]
    assert f"worker pool at localhost:{port}" in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


LIBRARY_CALL = """
import os, sys
from pipeline.beam import watchdog
watchdog.DEFAULT_STALL_SECONDS = 2.0    # the library default (300 s), shortened for the test
from jobs.score_pairs import ScorePairsJob, run
try:
    run(ScorePairsJob(pairs=(sys.argv[1],), output=sys.argv[2], model_dir=sys.argv[3]), sys.argv[4:], [])
except watchdog.Stalled as err:
    print("STALLED", err, flush=True)
    os._exit(7)       # Beam's threads still wait for the worker that never came
print("FINISHED", flush=True)
"""


def test_a_job_called_as_a_library_function_is_guarded_by_the_watchdog_too(tmp_path, tiny_checkpoint,
                                                                            broken_worker_pool, worker_pool_env):
    """No command line, no --stall-timeout: the job's library function raises Stalled (with the
    default limit) instead of waiting without end, and commits nothing."""
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"left": "a red fox", "right": "a fox"}) + "\n")
    done = subprocess.run([sys.executable, "-c", LIBRARY_CALL, str(tmp_path / "pairs.jsonl"), str(tmp_path / "out"),
                           tiny_checkpoint, *broken_worker_pool],
                          capture_output=True, text=True, env=worker_pool_env, timeout=600)
    assert done.returncode == 7, done.stdout[-2000:] + done.stderr[-3000:]
    assert "STALLED stalled: no Beam worker has connected" in done.stdout
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
