"""A bad night fails loudly (CLI contract, "Exit codes and bad nights"): too many dead letters
refuse the commit (exit 3, one line, the previous output stays), bad numbers answer at once."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs import encode_texts
from pipeline.dead_letters import check_dead_letter_limit
from pipeline.errors import DeadLetterLimit


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def good_rows(count: int) -> list[bytes]:
    return [json.dumps({"text": f"text number {i}"}).encode() for i in range(count)]


def encode(source: Path, output: Path, model: str, *extra: str):
    return CliRunner().invoke(encode_texts.main, ["--input", str(source), "--output", str(output), "--model", model,
                                                  "--quiet", *extra])


# --------------------------------------------------------------------------- the rule

def test_the_limit_counts_rows_and_names_the_top_reasons():
    check_dead_letter_limit(100, 10, {"null_text": 10}, 0.1, "rows read 100 = kept 90 + dead-lettered 10")
    check_dead_letter_limit(100, 0, {}, 0.0, "rows read 100 = kept 100")
    with pytest.raises(DeadLetterLimit) as raised:
        check_dead_letter_limit(100, 11, {"null_text": 2, "invalid_json": 5, "invalid_utf8": 3, "empty_text": 1},
                                0.1, "rows read 100 = kept 89 + dead-lettered 11")
    line = str(raised.value)
    assert "\n" not in line and "11 of 100 rows dead-lettered (11.0% > --max-dead-letter-fraction 0.1)" in line
    assert "rows read 100 = kept 89 + dead-lettered 11" in line
    assert "top reasons: invalid_json 5, invalid_utf8 3, null_text 2 and 1 more" in line


def test_a_run_whose_every_row_is_dead_fails_whatever_the_limit():
    with pytest.raises(DeadLetterLimit, match=r"3 of 3 rows dead-lettered \(every row\)"):
        check_dead_letter_limit(3, 3, {"invalid_utf8": 3}, 1.0, "rows read 3 = dead-lettered 3")


# --------------------------------------------------------------------------- a job

def test_too_many_dead_letters_exit_3_and_keep_the_previous_output(tmp_path, tiny_checkpoint):
    output = tmp_path / "store"
    first = encode(write_lines(tmp_path / "good.jsonl", good_rows(10)), output, tiny_checkpoint)
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in output.rglob("*") if p.is_file()}

    # 3 of 10 rows are dead (30% > the default 10%): nothing is committed, the old store stays.
    bad = write_lines(tmp_path / "bad.jsonl", good_rows(7) + [b'{"text": ""}', b'{"text": null}', b"{oops"])
    refused = encode(bad, output, tiny_checkpoint, "--overwrite")
    assert refused.exit_code == 3, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("refused to commit: 3 of 10 rows dead-lettered (30.0% > "
                                                       "--max-dead-letter-fraction 0.1)")
    assert "rows read 10 = kept 7 + duplicates 0 + dead-lettered 3" in lines[0]
    assert "empty_text 1, invalid_json 1, null_text 1" in lines[0]
    assert {p.name: p.read_bytes() for p in output.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    allowed = encode(bad, output, tiny_checkpoint, "--overwrite", "--max-dead-letter-fraction", "0.3")
    assert allowed.exit_code == 0, allowed.output
    assert json.loads((output / "_SUMMARY.json").read_text())["counts"]["rows_dead_lettered"] == 3


def test_every_row_dead_exits_3_even_with_a_limit_of_1(tmp_path, tiny_checkpoint):
    # What a gzip file read as plain JSONL used to give: every row invalid UTF-8, and exit 0.
    source = write_lines(tmp_path / "texts.jsonl", [b'{"text": "bad \xff bytes"}'] * 4)
    result = encode(source, tmp_path / "store", tiny_checkpoint, "--max-dead-letter-fraction", "1")
    assert result.exit_code == 3, result.output
    assert "refused to commit: 4 of 4 rows dead-lettered (every row)" in result.output
    assert "invalid_utf8 4" in result.output
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("value", ["nan", "-0.1", "1.5", "inf", "lots"])
def test_the_limit_flag_refuses_what_is_not_a_fraction(tmp_path, value):
    result = CliRunner().invoke(encode_texts.main, ["--input", "t.jsonl", "--output", str(tmp_path / "o"),
                                                    "--max-dead-letter-fraction", value])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --max-dead-letter-fraction ")
    assert lines[0].endswith("is not allowed: give a fraction in [0, 1]")


# --------------------------------------------------------------------------- gzip inputs

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "apache_beam", "transformers")


def run_module(module: str, args: list[str], cwd: Path) -> tuple[int, list[str], list[str]]:
    """``python -m <module> <args>`` in a fresh interpreter: (exit status, the heavy modules it had
    imported when it exited, the lines of its stderr)."""
    import os
    import subprocess
    import sys
    import textwrap

    probe = textwrap.dedent(f"""
        import atexit, runpy, sys
        atexit.register(lambda: print("HEAVY=" + ",".join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr))
        sys.argv = [{module!r}] + {args!r}
        runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    heavy = [m for m in lines[-1].split("=", 1)[1].split(",") if m] if lines and lines[-1].startswith("HEAVY=") else []
    return done.returncode, heavy, [line for line in lines if not line.startswith("HEAVY=")]


def test_a_gzip_input_is_read_like_zst(tmp_path, tiny_checkpoint):
    import gzip

    source = tmp_path / "texts.jsonl.gz"
    # Two members, as `cat a.gz b.gz` writes.
    first, second = b"\n".join(good_rows(3)) + b"\n", b"\n".join(good_rows(5)[3:]) + b"\n"
    source.write_bytes(gzip.compress(first) + gzip.compress(second))
    result = encode(source, tmp_path / "store", tiny_checkpoint)
    assert result.exit_code == 0, result.output
    counts = json.loads((tmp_path / "store" / "_SUMMARY.json").read_text())["counts"]
    assert counts["rows_read"] == 5 and counts["rows_kept"] == 5 and counts["rows_dead_lettered"] == 0


def test_a_truncated_gzip_input_is_one_line_naming_it_before_the_imports(tmp_path):
    import gzip

    source = tmp_path / "texts.jsonl.gz"
    source.write_bytes(gzip.compress(b"\n".join(good_rows(2000)) + b"\n")[:-50])
    code, heavy, lines = run_module("jobs.encode_texts", ["--input", str(source), "--output", str(tmp_path / "o")],
                                    tmp_path)
    assert code == 2 and heavy == [], lines
    assert lines == [f"error: {source} is truncated: its gzip data ends in the middle of a member, so rows at the "
                     "end are missing (was the file cut off while being written or copied?)"]


def test_gzip_parquet_is_refused_at_pre_flight(tmp_path):
    source = tmp_path / "pairs.parquet.gz"
    source.write_bytes(b"whatever")
    code, heavy, lines = run_module("jobs.score_pairs", ["--pairs", str(source), "--output", str(tmp_path / "o")],
                                    tmp_path)
    assert code == 2 and heavy == [], lines
    assert len(lines) == 1 and lines[0].startswith(f"error: {source}: gzip-compressed Parquet files are not supported")


# --------------------------------------------------------------------------- numbers

@pytest.mark.parametrize("job, args, line", [
    ("encode_texts", ["--stall-timeout", "nan"], "--stall-timeout nan is not allowed: give a finite number >= 0"),
    ("score_pairs", ["--stall-timeout", "inf"], "--stall-timeout inf is not allowed: give a finite number >= 0"),
    ("train_student", ["--weight-decay", "nan"], "--weight-decay nan is not allowed: give a finite number >= 0"),
    ("train_teacher", ["--weight-decay", "nan"], "--weight-decay nan is not allowed: give a finite number >= 0"),
    ("train_student", ["--max-grad-norm", "inf"], "--max-grad-norm inf is not allowed: give a finite number > 0"),
    ("train_teacher", ["--lr", "nan"], "--lr nan is not allowed: give a learning rate > 0"),
    ("train_student", ["--encoder-lr", "-1e-5"], "--encoder-lr -1e-05 is not allowed: give a learning rate > 0"),
    ("train_student", ["--warmup", "nan"], "--warmup nan is not allowed: give the fraction of a stage's steps spent "
                                           "warming up, 0 <= WARMUP < 1"),
    ("train_student", ["--virt-weight", "inf"], "--virt-weight inf is not allowed: give a number >= 0 (0: VIRT off)"),
    ("build_candidates", ["--top-k", "-1"], "--top-k -1 is not allowed: give an integer >= 0"),
    ("build_candidates", ["--seed", "-3"], "--seed -3 is not allowed: give an integer in [0, 2**32 - 1]"),
    ("label_pairs", ["--temperature", "nan"], "--temperature nan is not allowed: give a number > 0 (1 = the teacher's "
                                              "own probabilities; > 1 softer labels)"),
    ("evaluate", ["--limit", "0"], "--limit 0 is not allowed: give a positive integer"),
    ("score_pairs", ["--batch-size", "two"], "--batch-size 'two' is not allowed: give a positive integer"),
])
def test_a_number_out_of_range_is_one_line_at_once(tmp_path, job, args, line):
    import importlib

    required = {"encode_texts": ["--input", "t.jsonl"], "score_pairs": ["--pairs", "p.jsonl"],
                "label_pairs": ["--pairs", "p.jsonl", "--teacher", "t"],
                "build_candidates": ["--left-texts", "l.jsonl", "--right-texts", "r.jsonl", "--top-k", "1"],
                "train_teacher": ["--train", "t.jsonl", "--dev", "d.jsonl"],
                "train_student": ["--distill", "d", "--dev", "d.jsonl"],
                "evaluate": ["--pairs", "p.jsonl", "--model", "baseline"]}[job]
    main = importlib.import_module(f"jobs.{job}").main
    result = CliRunner().invoke(main, required + ["--output", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {line}"]


def test_numbers_are_checked_before_the_heavy_imports(tmp_path):
    for module, args, flag in [
            ("jobs.train_student", ["--distill", "d", "--dev", "v", "--lr", "nan"], "--lr nan"),
            ("jobs.build_candidates", ["--left-texts", "l", "--right-texts", "r", "--top-k", "-1"], "--top-k -1")]:
        code, heavy, lines = run_module(module, args + ["--output", str(tmp_path / "o")], tmp_path)
        assert code == 2 and heavy == [] and len(lines) == 1 and lines[0].startswith(f"error: {flag} is not allowed")


# --------------------------------------------------------------------------- non-finite weights

def test_a_checkpoint_with_a_nan_weight_is_refused_at_load(tmp_path, tiny_checkpoint):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    poisoned = tmp_path / "poisoned"
    shutil.copytree(tiny_checkpoint, poisoned)
    tensors = load_file(str(poisoned / "student.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(poisoned / "student.safetensors"), metadata={"format": "pairscore-student"})
    source = write_lines(tmp_path / "texts.jsonl", good_rows(3))
    result = encode(source, tmp_path / "store", str(poisoned))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "has weights that are not finite numbers (NaN or infinity) in 1 tensor" in lines[0]
    assert name in lines[0] and not (tmp_path / "store").exists()


# --------------------------------------------------------------------------- the stall watchdog

def test_a_short_stall_timeout_ends_a_multi_process_run_instead_of_hanging(tmp_path):
    """--stall-timeout shorter than the workers' start: the run used to hang for ever in Beam's
    clean-up (it joins a worker that is still starting). The workers here start slowly on purpose
    (a sitecustomize that sleeps in them), so the watchdog fires while they are alive."""
    import os
    import subprocess
    import sys

    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import time\n"
        "try:\n"
        "    command = open('/proc/self/cmdline', 'rb').read()\n"
        "except OSError:\n"
        "    command = b''\n"
        "if b'sdk_worker_main' in command:\n"
        "    time.sleep(600)\n")
    source = write_lines(tmp_path / "texts.jsonl", good_rows(4))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(slow), str(REPO)]))
    done = subprocess.run([sys.executable, "-m", "jobs.encode_texts", "--input", str(source), "--output",
                           str(tmp_path / "out"), "--stall-timeout", "0.5", "--direct_num_workers=2",
                           "--direct_running_mode=multi_processing"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("encode_texts ")]
    assert done.returncode == 3, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: stalled: no Beam worker has connected"), done.stderr[-3000:]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- --keep-cols

def test_keep_cols_mistakes_answer_at_pre_flight(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"left": "a", "right": "b", "pair_id": 1}) + "\n")
    base = ["--pairs", str(pairs), "--output", str(tmp_path / "o")]
    for keep, expected in [
            ("pair_id,pair_id",
             "error: --keep-cols pair_id,pair_id names pair_id more than once: give each column once"),
            ("score", "error: --keep-cols score would overwrite output columns left_id, right_id, score, probs: "
                      "rename the column or leave it out"),
            ("pair_id,nope", f"error: {pairs} has no column 'nope' (required: 'left', 'right', 'pair_id', 'nope'); its "
                             "first JSON object (line 1) has columns 'left', 'right', 'pair_id'")]:
        code, heavy, lines = run_module("jobs.score_pairs", base + ["--keep-cols", keep], tmp_path)
        assert (code, heavy, lines) == (2, [], [expected])


# --------------------------------------------------------------------------- locks and markers

def lock_of(pid, **changes) -> str:
    import socket

    return json.dumps({"pid": pid, "host": socket.gethostname(), "started": "now", "job": "score_pairs",
                       "token": "t0", **changes})


def test_a_lock_whose_pid_is_not_a_number_is_one_line_not_a_traceback(tmp_path):
    from pipeline.output.commit import open_output
    from pipeline.output.layout import OutputError

    target = tmp_path / "out"
    target.mkdir()
    (target / "_LOCK").write_text(lock_of("abc"))
    with pytest.raises(OutputError, match=r"is in use by an unknown process \(unreadable lock\)"):
        open_output(str(target), job="t", overwrite=True)
    assert (target / "_LOCK").read_text() == lock_of("abc")


def test_an_empty_staging_marker_does_not_make_a_users_folder_pairscores(tmp_path):
    from pipeline.output.commit import open_output
    from pipeline.output.layout import OutputError

    target = tmp_path / "out"
    mine = target / "_temporary-mine"
    mine.mkdir(parents=True)
    (mine / "_PAIRSCORE_STAGING.json").write_text("{}")
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match=r"--overwrite would delete _temporary-mine in .* which no pairscore job"):
        open_output(str(target), job="t", overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_an_output_held_by_a_running_job_is_said_before_not_empty(tmp_path):
    import os

    from pipeline.preflight import PreflightError, check_output

    target = tmp_path / "out"
    target.mkdir()
    (target / "part-0.parquet").write_text("its data")
    (target / "_LOCK").write_text(lock_of(os.getpid()))       # this process: alive
    for overwrite in (False, True):
        with pytest.raises(PreflightError, match=rf"--output '{target}' is in use by score_pairs \(pid {os.getpid()}"):
            check_output(str(target), overwrite)


# --------------------------------------------------------------------------- one file, two paths

def test_one_file_given_twice_through_a_symlink_is_refused(tmp_path):
    from pipeline.preflight import PreflightError, local_files
    from pipeline.readers import InputError, expand_inputs

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"left": "a", "right": "b"}) + "\n")
    (tmp_path / "tonight.jsonl").symlink_to(pairs)
    with pytest.raises(PreflightError, match=rf"inputs {pairs} and {tmp_path / 'tonight.jsonl'} are the same file "
                                             r"\(--pairs\): its rows would be read twice"):
        local_files("--pairs", [str(pairs), str(tmp_path / "tonight.jsonl")])
    with pytest.raises(InputError, match="are the same file: its rows would be read twice"):
        expand_inputs([str(tmp_path / "*.jsonl")])
    assert len(expand_inputs([str(pairs), str(pairs)])) == 1          # one path given twice: read once


# --------------------------------------------------------------------------- Beam's own report of a bad file

@pytest.mark.parametrize("workers", [[], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]],
                         ids=["in-process", "multi-process"])
def test_a_corrupt_parquet_row_group_is_one_line_without_beams_error_log(tmp_path, tiny_checkpoint, workers):
    """The footer is whole (the pre-flight passes it); a row group in the middle is not, which only
    reading finds, in a Beam worker: an InputError (the usage-error family), which Beam hands back
    as the same class with its step's name appended (in process) or as a RuntimeError holding the
    worker's traceback (multi-process). Beam's DoFn runner, the worker processes and the job
    service logged the failed step, ERROR and tracebacks, before the job's one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": [f"text number {i} " * 5 for i in range(6000)]}), source,
                   row_group_size=2000, compression="zstd")
    data = bytearray(source.read_bytes())
    data[len(data) // 2: len(data) // 2 + 2000] = b"\0" * 2000
    source.write_bytes(bytes(data))
    code, heavy, lines = run_module("jobs.encode_texts", ["--input", str(source), "--output", str(tmp_path / "o"),
                                                          "--model", tiny_checkpoint, "--quiet", *workers], tmp_path)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"error: {source} is corrupt: reading Parquet data after row"), lines
    assert lines[0].endswith("the rest of the file cannot be read"), lines       # no " [while running 'STEP']"
    assert not (tmp_path / "o").exists()
