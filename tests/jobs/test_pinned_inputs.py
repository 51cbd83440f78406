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


# ------------------------------------------------------------------- --store matched at the pre-flight

def probe(args: list[str], cwd: Path) -> tuple[int, list[str], list[str]]:
    """``python -m jobs.score_pairs ARGS`` in a fresh interpreter: (exit status, stderr lines, the heavy
    modules it had imported when it exited)."""
    code = ("import runpy, sys\n"
            f"sys.argv = ['jobs.score_pairs'] + {args!r}\n"
            "status = 0\n"
            "try:\n"
            "    runpy.run_module('jobs.score_pairs', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as exit:\n"
            "    status = exit.code or 0\n"
            "print('HEAVY=' + ','.join(m for m in ('torch', 'apache_beam', 'transformers') if m in sys.modules), "
            "'STATUS=' + str(status), file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    *lines, last = done.stderr.strip().splitlines()
    heavy, status = (part.split("=", 1)[1] for part in last.split())
    return int(status), lines, [m for m in heavy.split(",") if m]


def assert_preflight_refuses(tmp_path: Path, args: list[str], expected: str) -> None:
    output = tmp_path / "tonight"
    status, lines, heavy = probe([*args, "--output", str(output)], tmp_path)
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert heavy == [], f"answered after importing {heavy}"
    assert not output.exists()


def test_a_job_output_given_as_store_is_answered_at_the_preflight(tmp_path, nights, students):
    assert_preflight_refuses(tmp_path, ["--pairs", str(nights / "pairs.jsonl"), "--model", students[0],
                                        "--store", str(nights / "night-a")],
                             f"found a job output holding its store in {nights / 'night-a' / 'store'}: pass --store")


def test_another_models_store_is_answered_at_the_preflight(tmp_path, nights, students):
    assert_preflight_refuses(tmp_path, ["--pairs", str(nights / "pairs.jsonl"), "--model", students[0],
                                        "--store", str(nights / "night-b" / "store")],
                             f"store {str(nights / 'night-b' / 'store' / 'left')!r} was written by another model: "
                             "model fingerprint")


def test_another_models_store_is_answered_at_the_preflight_without_a_record(tmp_path, nights, students):
    """An older checkpoint (no fingerprint.json): its file fingerprint, computed from its files, is not
    the one the store records... and may still be the same weights saved again, so the pre-flight
    leaves that to the job; a store written from the very same files passes."""
    from encoders.file_fingerprint import RECORD_FILE

    old = Path(shutil.copytree(students[0], tmp_path / "old-student"))
    (old / RECORD_FILE).unlink()
    status, lines, heavy = probe(["--pairs", str(nights / "pairs.jsonl"), "--model", str(old),
                                  "--store", str(nights / "night-a" / "store"), "--output", str(tmp_path / "out"),
                                  "--quiet"], tmp_path)
    assert status == 0, lines
    # Another model's store: found by the job once the model is loaded (the weight fingerprints differ).
    status, lines, heavy = probe(["--pairs", str(nights / "pairs.jsonl"), "--model", str(old),
                                  "--store", str(nights / "night-b" / "store"), "--output", str(tmp_path / "out2")],
                                 tmp_path)
    assert status == 2 and "was written by another model" in lines[-1], lines


def test_a_checkpoints_store_with_the_baseline_is_answered_at_the_preflight(tmp_path, nights):
    assert_preflight_refuses(tmp_path, ["--pairs", str(nights / "pairs.jsonl"),
                                        "--store", str(nights / "night-a" / "store")],
                             "was written by a student checkpoint")


def test_a_version_1_store_is_still_read(tmp_path, nights, students):
    """A store written before schema version 2 (no part sizes or hashes): used, pinned by what its
    files hold, and its scores are those of the run that wrote it."""
    import pyarrow.parquet as pq

    store = Path(shutil.copytree(nights / "night-a" / "store", tmp_path / "store"))
    for side in ("left", "right"):
        path = store / side / "_MANIFEST.json"
        data = json.loads(path.read_text())
        for key in ("part_bytes", "part_sha256", "model_files_fingerprint"):
            del data[key]
        path.write_text(json.dumps({**data, "schema_version": 1}))
    output = tmp_path / "tonight"
    run(ScorePairsJob(pairs=(str(nights / "pairs.jsonl"),), output=str(output), model_dir=students[0],
                      store=str(store)), [], argv=[])
    summary = json.loads((output / "_SUMMARY.json").read_text())
    assert summary["counts"]["left_texts_reused"] == 6 and summary["counts"]["left_texts_encoded"] == 0
    keys = [("left_id", "ascending"), ("right_id", "ascending")]
    assert (pq.read_table(output / "scores").sort_by(keys).column("score").to_pylist()
            == pq.read_table(nights / "night-a" / "scores").sort_by(keys).column("score").to_pylist())


def test_a_local_teacher_is_pinned_and_a_worker_refuses_a_replaced_one(tmp_path, tiny_teacher_dir):
    """label_pairs pins its --teacher like score_pairs its --model: a worker that finds the teacher
    directory changed since the pin stops the run (InputChanged, exit 3) naming the file."""
    import pyarrow as pa

    from encoders.remote import pin_model_dir
    from pipeline.beam.label import LabelSettings, load_labeling_teacher
    from pipeline.errors import InputChanged

    teacher = Path(shutil.copytree(tiny_teacher_dir, tmp_path / "teacher"))
    pinned = pin_model_dir(str(teacher))
    settings = LabelSettings(teacher=pinned, fingerprint=json.loads((teacher / "fingerprint.json").read_text())[
        "weight_fingerprint"], schema=pa.schema([]))
    assert load_labeling_teacher(settings).fingerprint == settings.fingerprint
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-5}))
    with pytest.raises(InputChanged, match=f"model file {teacher / 'config.json'} has .* bytes|"
                                           f"model file {teacher / 'config.json'} does not hold the same bytes"):
        load_labeling_teacher(settings)
