"""The command line: light start-up, the ``pairscore`` group, shared options, timing from the
interpreter's start, and no shadowing by a user's own ``pipeline.py``."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs import cli, runner
from pipeline import stderr

REPO = Path(__file__).resolve().parents[2]
JOBS = ("encode_texts", "score_pairs", "label_pairs", "build_candidates", "train_teacher", "train_student",
        "evaluate")
HEAVY = ("torch", "apache_beam", "transformers")


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _heavy_modules_after(module: str, args: list[str]) -> tuple[int, list[str], str]:
    """Run ``python -m <module> <args>`` the way ``python -m`` does (as ``__main__``) in a fresh
    interpreter; return its exit status, the heavy modules it imported, and its output."""
    probe = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = [{module!r}] + {args!r}
        code = 0
        try:
            runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            code = exit.code or 0
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        print("HEAVY=" + ",".join(heavy), "CODE=" + str(code), file=sys.stderr)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(), cwd=REPO,
                          timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    heavy = last.split()[0].split("=", 1)[1]
    code = int(last.split()[1].split("=", 1)[1])
    return code, [m for m in heavy.split(",") if m], done.stdout + done.stderr


@pytest.mark.parametrize("job", JOBS)
def test_help_imports_no_torch_beam_or_transformers(job):
    code, heavy, output = _heavy_modules_after(f"jobs.{job}", ["--help"])
    assert code == 0 and f"python -m jobs.{job}" in output and "--output" in output
    assert heavy == [], f"--help of jobs.{job} imported {heavy}"


def test_bad_arguments_answer_before_the_heavy_imports():
    code, heavy, output = _heavy_modules_after("jobs.score_pairs", ["--pairs", "p.jsonl", "--output", "o",
                                                                    "--join", "bogus"])
    assert code == 2 and "'bogus' is not one of 'auto', 'broadcast', 'shuffle'" in output and heavy == []
    code, heavy, output = _heavy_modules_after("jobs.encode_texts", ["--input", "t.jsonl"])
    assert code == 2 and "Missing option '--output'" in output and heavy == []
    code, heavy, output = _heavy_modules_after("jobs.train_student", ["--distill", "d", "--dev", "v", "--output", "o",
                                                                      "--head", "pooled-cos"])
    assert code == 2 and "'pooled-cos' is not one of" in output and heavy == []
    code, heavy, output = _heavy_modules_after("jobs.train_teacher", ["--train", "t", "--dev", "d", "--output", "o",
                                                                      "--task", "graded", "--label-range", "0;5"])
    assert code == 2 and "--label-range '0;5' is not allowed" in output and heavy == []


def test_console_group_help_imports_nothing_heavy():
    probe = ("import sys; from jobs.cli import pairscore\n"
             "try:\n    pairscore(['score-pairs', '--help'], prog_name='pairscore')\n"
             "except SystemExit:\n    pass\n"
             f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(), timeout=120)
    assert "Usage: pairscore score-pairs" in done.stdout and done.stdout.strip().endswith("HEAVY=")


def test_python_m_jobs_cli_is_the_console_script():
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True, env=_env(),
                          cwd=REPO, timeout=120)
    assert done.returncode == 0 and "Usage: pairscore" in done.stdout
    assert all(job.replace("_", "-") in done.stdout for job in JOBS)


def test_the_heads_train_student_offers_are_the_registrys_heads_with_parameters():
    """The one list spelled twice: heads/__init__.py is the registry (torch), so the command line
    names the trainable heads in encoders/choices.py; a head added to one must be added to both."""
    from heads import HEAD_NAMES, build_head

    trainable = tuple(name for name in HEAD_NAMES
                      if any(True for _ in build_head(name, dim=8, left_tokens=2, right_tokens=3).parameters()))
    assert cli.STUDENT_HEADS == trainable and "pooled-cos" not in trainable


def test_pairscore_lists_every_job_and_each_has_the_shared_options():
    result = CliRunner().invoke(cli.pairscore, ["--help"])
    assert result.exit_code == 0
    for job in JOBS:
        assert job.replace("_", "-") in result.output
    for job in JOBS:
        result = CliRunner().invoke(cli.pairscore, [job.replace("_", "-"), "--help"])
        assert result.exit_code == 0, result.output
        for flag in ("--output", "--overwrite", "--device", "--quiet", "--verbose"):
            assert flag in result.output, (job, flag)
    # The job modules keep their `main` (the same command) for callers of jobs.<name>.main.
    from jobs import score_pairs
    assert score_pairs.main is cli.pairscore.commands["score-pairs"]


def test_a_bad_choice_is_one_line_with_what_is_allowed():
    result = CliRunner().invoke(cli.pairscore, ["score-pairs", "--pairs", "p", "--output", "o", "--join", "bogus"])
    assert result.exit_code == 2
    assert "Invalid value for '--join': 'bogus' is not one of 'auto', 'broadcast', 'shuffle'." in result.output


def test_beam_workers_are_quieted_only_for_local_runners_without_verbose():
    quiet = "--default_sdk_harness_log_level=ERROR"
    assert runner.beam_args_for_run([], verbose=False) == [quiet]
    assert runner.beam_args_for_run(["--runner=DirectRunner"], verbose=False)[-1] == quiet
    assert runner.beam_args_for_run([], verbose=True) == []
    assert runner.beam_args_for_run(["--runner", "DataflowRunner"], verbose=False) == ["--runner", "DataflowRunner"]
    assert runner.beam_args_for_run(["--default_sdk_harness_log_level=DEBUG"], verbose=False) == [
        "--default_sdk_harness_log_level=DEBUG"]


def test_worker_start_up_logs_are_dropped_and_everything_else_passes(capfd):
    """What Beam's multi-process workers print before they read their log level goes; a
    worker's progress line, an error and a traceback line stay."""
    worker = ("import sys\n"
              "sys.stderr.write('WARNING:root:apitools not found, and bigquery client libraries ...\\n')\n"
              "sys.stderr.write('INFO:__main__:Logging handler created.\\n')\n"
              "sys.stderr.write('INFO:apache_beam.runners.worker.sdk_worker:Control channel established.\\n')\n"
              "sys.stderr.write('encode_texts [worker 7] 0:05 | texts encoded 10\\n')\n"
              "sys.stderr.write('ERROR:__main__:Python sdk harness failed\\n')\n"
              "sys.stderr.write('Traceback (most recent call last):')\n")
    with stderr.through_worker_filter() as (progress_stream, _):
        subprocess.run([sys.executable, "-c", worker], check=True)
        progress_stream.write("\rlive line")
        progress_stream.flush()
    err = capfd.readouterr().err
    assert "apitools" not in err and "Logging handler" not in err and "Control channel" not in err
    assert "encode_texts [worker 7] 0:05 | texts encoded 10\n" in err
    assert "ERROR:__main__:Python sdk harness failed\n" in err and "Traceback (most recent call last):" in err
    assert "\rlive line" in err


def test_workers_progress_records_feed_the_one_line_and_other_lines_go_above_it(capfd):
    """Multi-process workers send their counts as records: the launching process's line sums
    them (it does not stay at "running"), the records are not shown, and a worker's other lines
    are written after clearing the live line, never into it."""
    from pipeline import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    worker = ("import sys\n"
              "sys.stderr.write('pairscore-progress-record {\"pid\": 11, \"counts\": {\"texts encoded\": 30}}\\n')\n"
              "sys.stderr.write('pairscore-progress-record {\"pid\": 12, \"counts\": {\"texts encoded\": 4}}\\n')\n"
              "sys.stderr.write('pairscore-progress-record {\"pid\": 11, \"counts\": {\"texts encoded\": 40}}\\n')\n"
              "sys.stderr.write('ERROR:__main__:Python sdk harness failed\\n')\n")
    terminal = Terminal()
    with stderr.through_worker_filter():
        reporter = progress.start("encode_texts", quiet=False, started=0.0, stream=terminal, collect_workers=True)
        assert os.environ[progress.ENV_COLLECT] == "1"                # what the workers inherit
        reporter.show()                                                # the live line is drawn
        subprocess.run([sys.executable, "-c", worker], check=True)
    try:                                                               # the filter has read everything
        assert reporter.counts() == {"texts encoded": 44}
        assert "| texts encoded 44" in reporter.line()
    finally:
        progress.stop()
    err = capfd.readouterr().err
    assert "pairscore-progress-record" not in err and "ERROR:__main__:Python sdk harness failed\n" in err
    drawn = terminal.getvalue()
    assert drawn.startswith("\rencode_texts ") and drawn.count("\r\x1b[K") == 1   # cleared before the error line


def test_the_run_starts_when_python_starts_pairscore_not_when_the_process_did():
    """Under a scheduler's `bash -c 'sleep 1 && python ...'` bash execs Python in its own process,
    started a second before Python: the run's start (_SUMMARY.json started_at, "done in") is
    Python's, not the process's start in /proc."""
    probe = "import jobs; print(repr(jobs.PROCESS_STARTED))"
    launched = time.time()
    done = subprocess.run(["bash", "-c", f"sleep 1 && exec {sys.executable} -c '{probe}'"], capture_output=True,
                          text=True, env=_env(), check=True)
    assert float(done.stdout) - launched >= 1.0


def test_run_time_counts_from_the_process_start_under_the_command_line(monkeypatch):
    seen = []

    def job() -> str:
        seen.append(time.monotonic() - runner.run_started())
        return "done"

    # A process started 1,000 s ago: the two counts differ by far more than any delay a loaded
    # machine adds between these lines.
    monkeypatch.setattr(runner, "PROCESS_STARTED", time.time() - 1000.0)
    runner.run_job(job, name="t", quiet=True)           # a library call or test: from run_job's start
    monkeypatch.setattr(runner, "_from_process_start", True)
    runner.run_job(job, name="t", quiet=True)           # the entry points: from the process start
    assert seen[0] < 500.0 and 1000.0 <= seen[1] < 1500.0


PROGRESS_LINE = re.compile(r"^\w+( \[worker \d+\])? \d+:\d\d(:\d\d)? \| ")


def _without_progress(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not progress lines (``score_pairs 0:31 | running``)."""
    return [line for line in stderr.strip().splitlines() if not PROGRESS_LINE.match(line.lstrip("\r"))]


def test_progress_lines_are_told_apart_from_errors():
    lines = "score_pairs 0:31 | running\nencode_texts [worker 7] 1:02:03 | texts encoded 3\nerror: x 0:31 | y\n"
    assert _without_progress(lines) == ["error: x 0:31 | y"]


def _console_script(tmp_path: Path) -> list[str]:
    """The installed ``pairscore`` script (beside the interpreter running the tests first: its
    virtual environment need not be on PATH); without an install (a bare checkout), the same
    wrapper pip writes for ``jobs.cli:console_main``, run from its own directory."""
    beside = os.path.join(os.path.dirname(sys.executable), "pairscore")
    installed = beside if os.access(beside, os.X_OK) else shutil.which("pairscore")
    if installed:
        return [installed]
    wrapper = tmp_path / "bin" / "pairscore"
    wrapper.parent.mkdir()
    wrapper.write_text("import sys\nfrom jobs.cli import console_main\nsys.exit(console_main())\n")
    return [sys.executable, str(wrapper)]


def test_a_users_pipeline_py_does_not_shadow_the_package(tmp_path):
    """Run from a folder holding its own pipeline.py: both entry points reach the job's own
    input check (which imports pipeline.readers) and name the missing file."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "pipeline.py").write_text("raise RuntimeError('the user pipeline.py was imported')\n")
    args = ["--pairs", "missing.jsonl", "--output", "out"]
    for command in (_console_script(tmp_path) + ["score-pairs"], [sys.executable, "-m", "jobs.score_pairs"]):
        done = subprocess.run(command + args, capture_output=True, text=True, cwd=folder, env=_env(), timeout=300)
        assert done.returncode == 2, (command, done.stderr)
        assert "missing.jsonl" in done.stderr and "user pipeline.py" not in done.stderr
        # One line besides any progress line: a loaded machine may reach the check after the
        # periodic progress line (tests set its interval to never, this asserts it regardless).
        assert len(_without_progress(done.stderr)) == 1, done.stderr


def test_multi_process_run_beside_a_users_pipeline_py_is_quiet_and_unshadowed(tmp_path, tiny_checkpoint):
    """Beam's worker processes start in the current directory too: they must load pairscore's
    pipeline package, not the user's pipeline.py, and their start-up logs stay hidden."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "pipeline.py").write_text("raise RuntimeError('the user pipeline.py was imported')\n")
    texts = folder / "texts.jsonl"
    texts.write_text("".join(f'{{"text": "text number {i}"}}\n' for i in range(12)))
    done = subprocess.run([sys.executable, "-m", "jobs.encode_texts", "--input", str(texts), "--model", tiny_checkpoint,
                           "--output", str(folder / "out"), "--direct_num_workers=2",
                           "--direct_running_mode=multi_processing"],
                          capture_output=True, text=True, cwd=folder, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    assert "encode_texts: done in" in done.stdout and re.search(r"texts_encoded\s+12\b", done.stdout)
    noise = [line for line in done.stderr.splitlines() if not line.startswith("encode_texts ")]
    assert noise == [], done.stderr


@pytest.mark.parametrize("user_policy", [None, "ACTIVE"])
def test_the_entry_sets_the_waiting_policy_before_the_job_imports_torch(monkeypatch, user_policy):
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: ``python -m jobs.X`` sets PASSIVE
    (idle threads sleep, not spin) before importing the job, and keeps a policy the user set."""
    import importlib
    from jobs import common

    if user_policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", user_policy)
    seen = {}

    class Job:
        class main:
            @staticmethod
            def main(prog_name):
                seen["policy"] = os.environ.get("OMP_WAIT_POLICY")

    monkeypatch.setattr(common, "shield_beam_workers", lambda: None)
    # main_module marks this process as a command-line run (its runs' clocks start with Python):
    # restored afterwards, or every later run in this test process would count from pytest's start.
    monkeypatch.setattr(runner, "_from_process_start", False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(importlib, "import_module", lambda name: Job)
    common.main_module("score_pairs")
    assert seen["policy"] == (user_policy or "PASSIVE")


def test_the_console_script_sets_the_waiting_policy(monkeypatch):
    from jobs import cli, runner

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(cli, "shield_beam_workers", lambda: None)
    monkeypatch.setattr(runner, "_from_process_start", False)     # restored afterwards (see above)
    seen = {}
    monkeypatch.setattr(cli, "pairscore", lambda prog_name: seen.setdefault("policy", os.environ.get("OMP_WAIT_POLICY")))
    cli.console_main()
    assert seen["policy"] == "PASSIVE"


def test_head_options_that_cannot_run_are_refused_in_one_line(tmp_path):
    """--compile with --head-quantize int8: exit 2, one line naming both, nothing written."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"left": "a", "right": "b"}\n')
    result = CliRunner().invoke(cli.pairscore, ["score-pairs", "--pairs", str(pairs), "--output",
                                                str(tmp_path / "out"), "--device", "cpu", "--compile",
                                                "--head-quantize", "int8"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: --compile and --head-quantize int8 do not go together: torch.compile cannot trace "
                     "dynamically quantized layers; choose one"], result.output
    assert not (tmp_path / "out").exists()


def test_importing_pairscore_leaves_logging_and_warnings_as_they_were():
    """A program using pairscore as a library keeps its own logging and warnings filters: they are
    set when a command-line run starts (pipeline/stderr.configure_logging), never at import. (The
    modules here import no third-party library: Beam's own import adds filters and a handler.)"""
    code = ("import logging, warnings\n"
            "before = (list(logging.getLogger().handlers), logging.getLogger().level, list(warnings.filters))\n"
            "import jobs, jobs.cli, jobs.score_pairs, jobs.preflight, pipeline.paths, pipeline.stderr\n"
            "after = (list(logging.getLogger().handlers), logging.getLogger().level, list(warnings.filters))\n"
            "print(before == after)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300,
                          cwd=REPO)
    assert done.stdout.strip() == "True", done.stdout + done.stderr


def test_an_unexpected_failure_keeps_its_traceback_and_says_it_is_a_bug(capsys):
    """Exit 1 is a bug (pipeline/errors.py): the traceback stays, then one line saying so, so that an
    operator paged at night tells it from a bad flag (exit 2) or a refused commit (exit 3)."""
    from jobs.runner import run_job

    def job() -> str:
        raise RuntimeError("an internal invariant broke")

    with pytest.raises(SystemExit) as ended:
        run_job(job, name="score_pairs", quiet=True)
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: an internal invariant broke" in err
    assert err.rstrip().splitlines()[-1].startswith("error: score_pairs failed unexpectedly (exit 1): a bug")
