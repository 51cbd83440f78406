"""What a run reads stays what it checked (issue 24, items 3 and 4).

A real ``score_pairs`` run is paused between its checks and its reads (the tests-only
``$PAIRSCORE_TEST_PAUSE_FILE`` hook in ``pipeline.beam.runner.make_pipeline``); the test then swaps
the ``--store`` or the ``--model`` directory for another student's, releases the run, and expects
exit 3 with one line naming the file, and nothing committed. In process and on the multi-process
runner, where the worker's exception reaches the launcher wrapped in Beam's RuntimeError.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from encoders.checkpoint import build_student, save_student
from jobs.score_pairs import ScorePairsJob, run
from pipeline.beam.runner import PAUSE_ENV

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [{"left": f"question {i}", "right": f"answer {i % 3}"} for i in range(6)]
MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


@pytest.fixture(scope="module")
def students(tmp_path_factory, tiny_student_config) -> tuple[str, str]:
    """Two tiny students of one layout (seeds 11 and 12): their stores are interchangeable files."""
    root = tmp_path_factory.mktemp("students")
    return tuple(str(save_student(build_student(tiny_student_config, seed=seed), root / f"student-{seed}"))
                 for seed in (11, 12))


@pytest.fixture(scope="module")
def nights(tmp_path_factory, students) -> Path:
    """pairs.jsonl, and one finished run per student: night-a/store (student A), night-b/store (B)."""
    tmp = tmp_path_factory.mktemp("nights")
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    for name, model in zip("ab", students):
        run(ScorePairsJob(pairs=(str(tmp / "pairs.jsonl"),), output=str(tmp / f"night-{name}"), model_dir=model),
            [], argv=[])
    return tmp


def paused_run(tmp_path: Path, args: list[str], swap) -> subprocess.CompletedProcess:
    """Run ``python -m jobs.score_pairs ARGS`` until it pauses after its checks, call ``swap()``,
    release it and wait for it to end."""
    release = tmp_path / "release"
    env = {**os.environ, PAUSE_ENV: str(release), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "jobs.score_pairs", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (tmp_path / "release.paused").exists():
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"the run ended before its pause (exit {process.returncode}):\n{out}\n{err}")
            time.sleep(0.1)
        swap()
        release.write_text("")
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def replace_dir(target: str | Path, source: str | Path) -> None:
    """``target`` becomes a copy of ``source``, as another run's commit would leave it."""
    shutil.rmtree(target)
    shutil.copytree(source, target)


def assert_refused(result: subprocess.CompletedProcess, output: Path, names: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 3, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("refused to commit: ") and names in lines[0], lines[0]
    assert "changed after this run" in lines[0] and "[while running" not in lines[0]
    assert not (output / "_SUCCESS").exists() and not (output / "scores").exists()


@pytest.mark.parametrize("beam_args", [[], MULTI_PROCESS], ids=["in-process", "multi-process"])
def test_a_store_replaced_mid_run_stops_the_run(tmp_path, nights, students, beam_args):
    store = Path(shutil.copytree(nights / "night-a" / "store", tmp_path / "store"))
    output = tmp_path / "tonight"
    result = paused_run(tmp_path, ["--pairs", str(nights / "pairs.jsonl"), "--model", students[0],
                                   "--store", str(store), "--output", str(output), *beam_args],
                        swap=lambda: replace_dir(store, nights / "night-b" / "store"))
    assert_refused(result, output, f"store part {store}{os.sep}")


@pytest.mark.parametrize("beam_args", [[], MULTI_PROCESS], ids=["in-process", "multi-process"])
def test_a_local_model_replaced_mid_run_stops_the_run(tmp_path, nights, students, beam_args):
    model = Path(shutil.copytree(students[0], tmp_path / "model"))
    output = tmp_path / "tonight"
    result = paused_run(tmp_path, ["--pairs", str(nights / "pairs.jsonl"), "--model", str(model),
                                   "--output", str(output), *beam_args],
                        swap=lambda: replace_dir(model, students[1]))
    assert_refused(result, output, f"model file {model}{os.sep}")


def test_an_unchanged_store_and_model_pass_the_pause(tmp_path, nights, students):
    """The same run, nothing swapped: it commits, and its scores equal night A's (the pins do not
    refuse what did not change)."""
    import pyarrow.parquet as pq

    output = tmp_path / "tonight"
    result = paused_run(tmp_path, ["--pairs", str(nights / "pairs.jsonl"), "--model", students[0],
                                   "--store", str(nights / "night-a" / "store"), "--output", str(output)],
                        swap=lambda: None)
    assert result.returncode == 0, result.stderr
    scores = pq.read_table(output / "scores").sort_by([("left_id", "ascending"), ("right_id", "ascending")])
    before = pq.read_table(nights / "night-a" / "scores").sort_by([("left_id", "ascending"),
                                                                    ("right_id", "ascending")])
    assert scores.column("score").to_pylist() == before.column("score").to_pylist()
