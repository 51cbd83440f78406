"""benchmarks/reproduction.py's Steps: a step runs once and is skipped when its output is complete,
a background step runs while the caller goes on, and a failed job stops the reproduction. The jobs
here are a stand-in module (fakejob) put on the jobs' path, so nothing is trained."""
from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks.reproduction import Steps

# Waits for OUTPUT.go (when given --wait), then writes OUTPUT/_SUMMARY.json; --fail exits 3.
_FAKE_JOB = '''
import json, sys, time
from pathlib import Path
args = sys.argv[1:]
output = Path(args[args.index("--output") + 1])
if "--fail" in args:
    sys.exit(3)
deadline = time.monotonic() + 600                          # hang guard only
while "--wait" in args and not output.with_suffix(".go").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
output.mkdir(parents=True, exist_ok=True)
(output / "_SUMMARY.json").write_text(json.dumps({"wall_seconds": 1.5, "overwrite": "--overwrite" in args}))
'''


@pytest.fixture
def steps(tmp_path, monkeypatch) -> Steps:
    (tmp_path / "jobsdir").mkdir()
    (tmp_path / "jobsdir" / "fakejob.py").write_text(_FAKE_JOB, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "jobsdir"))
    return Steps(tmp_path / "out")


def test_a_step_runs_once_then_is_skipped_and_keeps_its_time(steps, tmp_path):
    steps.out.mkdir()
    output = tmp_path / "out" / "a"
    steps.run("a", output, ["fakejob", "--output", str(output)])
    assert (output / "_SUMMARY.json").exists() and steps.skipped == []
    first_seconds = steps.done[0]["seconds"]
    assert first_seconds is not None and json.loads(steps.timings_file.read_text())["a"] == first_seconds

    again = Steps(steps.out)                                 # a resumed invocation
    again.run("a", output, ["fakejob", "--output", str(output)])
    assert again.skipped == ["a"] and again.done[0]["seconds"] == first_seconds
    assert again.done[0]["command"] == f"python -m fakejob --output {output}"


def test_a_background_step_runs_while_the_caller_goes_on(steps, tmp_path):
    steps.out.mkdir()
    slow, quick = tmp_path / "out" / "slow", tmp_path / "out" / "quick"
    wait = steps.run("slow", slow, ["fakejob", "--wait", "--output", str(slow)], background=True)
    # The slow job waits for its .go file, which only appears after this returned: a blocking run
    # would never get here (the fake job's hang guard would end the test after 600 s instead).
    steps.run("quick", quick, ["fakejob", "--output", str(quick)])
    assert not (slow / "_SUMMARY.json").exists()
    slow.with_suffix(".go").write_text("")
    wait()
    assert (slow / "_SUMMARY.json").exists()
    assert [s["step"] for s in steps.done] == ["quick", "slow"]          # in the order they ended
    assert all(s["seconds"] is not None for s in steps.done)


def test_a_failed_job_stops_the_reproduction(steps, tmp_path):
    steps.out.mkdir()
    output = tmp_path / "out" / "bad"
    with pytest.raises(subprocess.CalledProcessError) as failed:
        steps.run("bad", output, ["fakejob", "--fail", "--output", str(output)])
    assert failed.value.returncode == 3 and steps.done == []
    wait = steps.run("bad", output, ["fakejob", "--fail", "--output", str(output)], background=True)
    with pytest.raises(subprocess.CalledProcessError):
        wait()


def test_an_incomplete_output_is_rerun_with_overwrite(steps, tmp_path):
    steps.out.mkdir()
    output = tmp_path / "out" / "half"
    output.mkdir()                                           # a stopped earlier run left it without _SUMMARY.json
    steps.run("half", output, ["fakejob", "--output", str(output)])
    assert json.loads((output / "_SUMMARY.json").read_text())["overwrite"] is True
