"""The run guard (pipeline/output/guard.py) on its own: one run's state, held by the runner and
handed to whoever needs it. A scheduler's SIGTERM ends a run in one line with exit 143 and leaves
its output as it was; the worker-log filter learns of the interrupt from the guard it was given;
a second run in the same process starts with a guard that knows nothing of the first."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import stderr
from pipeline.output.commit import open_output
from pipeline.output.guard import Interrupted, RunGuard, abort_output_on_failure, end_worker_processes


def test_sigterm_rolls_the_run_back_and_the_runners_guard_knows(tmp_path):
    """What a scheduler's timeout does: the output the run created goes (staging, lock and all),
    the one line and 143 come from the guard the runner holds, and the handler is given back."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM is handled by someone else here: the guard leaves it alone")
    target = tmp_path / "out"
    guard = RunGuard()

    @abort_output_on_failure
    def run():
        out = open_output(str(target), job="t", overwrite=False)
        Path(out.staged("part-00000-of-00001.parquet")).write_text("half a table")
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("the run went on after SIGTERM")

    with guard.current(), pytest.raises(Interrupted) as ended:
        run()
    line = f"terminated (SIGTERM): nothing committed, {target} left as it was"
    assert (ended.value.line, ended.value.exit_status) == (line, 143)
    assert guard.interrupted()
    assert guard.one_line_failure(ended.value) == (line, 143)
    assert not target.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_second_run_gets_a_guard_of_its_own(tmp_path):
    """Two runs in one process (a scheduler's worker running jobs one after another): once the
    first filled the disk and was interrupted, the second is not taken for interrupted, and its
    full disk, before it opened its output, does not name the first run's output."""
    first_output = tmp_path / "first"
    first = RunGuard()

    @abort_output_on_failure
    def fill_the_disk():
        out = open_output(str(first_output), job="t", overwrite=False)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), out.staged("part-0.parquet"))

    with first.current(), pytest.raises(OSError) as full:
        fill_the_disk()
    said, status = first.one_line_failure(full.value)
    assert status == 1 and said.startswith(f"error: no space left on device writing {first_output}/_temporary-")
    assert said.endswith(f": nothing committed, {first_output} left as it was")
    first.interrupted_by = signal.SIGINT

    second = RunGuard()
    assert not second.interrupted()
    assert second.one_line_failure(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) == (
        "error: no space left on device writing the output", 1)


def test_the_worker_filter_drops_what_workers_print_once_the_run_is_interrupted(capfd):
    """Beam's workers die of the same Ctrl-C with tracebacks of their own: once the guard it was
    given says the run is ending, the filter drops them (the job's one line says it)."""
    guard = RunGuard()
    guard.interrupted_by = signal.SIGINT
    worker = "import sys\nsys.stderr.write('Traceback (most recent call last):\\nKeyboardInterrupt\\n')\n"
    with stderr.through_worker_filter(interrupted=guard.interrupted):
        subprocess.run([sys.executable, "-c", worker], check=True)
    assert "KeyboardInterrupt" not in capfd.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="ending workers reads /proc (Linux)")
def test_ending_the_workers_ends_beams_workers_and_spares_other_children():
    """An interrupt or a stall ends Beam's worker processes so that the run can clean up; a library
    caller's own children (a Spark session's JVM, say) live on."""
    sleep = "import time; time.sleep(600)"
    bystander = subprocess.Popen([sys.executable, "-c", sleep, "spark-jvm"])
    worker = subprocess.Popen([sys.executable, "-c", sleep, "-m", "apache_beam.runners.worker.sdk_worker_main"])
    try:
        end_worker_processes()
        assert worker.wait(timeout=600) == -15          # SIGTERM (the timeout only guards a hang)
        assert bystander.poll() is None
    finally:
        for process in (bystander, worker):
            process.kill()
            process.wait()
