"""The commit protocol of pipeline/outputs.py on its own (no models, no Beam pipeline): which
``--output`` is refused, the lock, the order of the commit, what a failure leaves behind, and
atomic checkpoint directories."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import outputs
from pipeline.outputs import (LOCK_FILE, STAGING_PREFIX, SUCCESS_FILE, SUMMARY_FILE, OutputError,
                              abort_output_on_failure, atomic_directory, check_no_overlap, open_output, read_lock)
from pipeline.store import MANIFEST_FILE
from pipeline.summary import RunSummary

REPO = Path(__file__).resolve().parents[2]


def summary_for(path: Path) -> RunSummary:
    return RunSummary(job="test", arguments=[], output=str(path), model_fingerprints={}, wall_seconds=0.0,
                      counts={"rows": 1}, dead_letters={}, reconciliation="ok")


def stage_a_store(out) -> None:
    """What a one-table job stages: two parts, dead letters, a manifest (after the counts)."""
    for name in ("part-00000-of-00002.parquet", "part-00001-of-00002.parquet", "_dead_letter/part-0.parquet"):
        path = Path(out.staged(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"data " + name.encode())
    Path(out.staged(MANIFEST_FILE)).write_text("{}")


def everything(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --------------------------------------------------------------------------- --output vs the inputs


@pytest.mark.parametrize("output, flag, path", [
    ("data", "--input", "data/texts.jsonl"),                 # output holds the input (deleted by --overwrite)
    ("data", "--input", "data/*.jsonl"),                     # ... a glob's directory
    ("runs/x", "--store", "runs/x/store"),                   # last night's store inside tonight's output
    ("runs/x/store", "--store", "runs/x/store"),             # the same directory
    ("runs/x/new", "--previous", "runs/x"),                  # output inside a directory the run reads
    ("data/part.jsonl", "--input", "data/*.jsonl"),          # the glob would read the output back
    ("data/deep", "--input", "data/**/*.jsonl"),             # ... recursively
    ("./data/../data", "--input", "data/t.jsonl"),           # normalised before comparing
])
def test_output_overlapping_what_the_run_reads_is_refused(tmp_path, monkeypatch, output, flag, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match=rf"--output .* {flag} "):
        check_no_overlap(output, {flag: [path]})


@pytest.mark.parametrize("output, path", [
    ("data/store", "data/*.jsonl"),          # beside the inputs, the glob cannot match it
    ("runs/b", "runs/a"),
    ("runs/ab", "runs/a"),                   # a shared name prefix is not containment
    ("gs://bucket/out", "gs://bucket/in/*.parquet"),
])
def test_outputs_beside_the_inputs_are_fine(tmp_path, monkeypatch, output, path):
    monkeypatch.chdir(tmp_path)
    check_no_overlap(output, {"--input": [path], "--model": [None]})


def test_symlinked_output_is_compared_by_its_target(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "t.jsonl").write_text("{}\n")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(OutputError, match="contains --input"):
        check_no_overlap(str(tmp_path / "alias"), {"--input": [str(tmp_path / "real" / "t.jsonl")]})


# --------------------------------------------------------------------------- what --overwrite may replace


def test_a_new_output_is_staged_locked_and_committed_in_order(tmp_path, monkeypatch):
    target = tmp_path / "out"
    out = open_output(str(target), job="encode_texts", overwrite=False)
    holder = json.loads((target / LOCK_FILE).read_text())
    assert (holder["pid"], holder["host"], holder["job"]) == (os.getpid(), socket.gethostname(), "encode_texts")
    assert holder["started"]
    assert Path(out.staging).is_dir() and Path(out.staging).name.startswith(STAGING_PREFIX)
    stage_a_store(out)
    moved = []
    real_rename = outputs.FileSystems.rename

    def recording_rename(sources, targets):
        moved.extend(Path(t).relative_to(target).as_posix() for t in targets)
        return real_rename(sources, targets)
    monkeypatch.setattr(outputs.FileSystems, "rename", recording_rename)
    summary = summary_for(target)
    out.commit(summary)
    # Data first, then the manifest, then the summary, then _SUCCESS: whatever a reader sees
    # before _SUCCESS is never a complete-looking output.
    assert moved[-3:] == [MANIFEST_FILE, SUMMARY_FILE, SUCCESS_FILE]
    assert sorted(moved[:-3]) == ["_dead_letter/part-0.parquet", "part-00000-of-00002.parquet",
                                  "part-00001-of-00002.parquet"]
    assert everything(target) == ["_MANIFEST.json", "_SUCCESS", "_SUMMARY.json", "_dead_letter",
                                  "_dead_letter/part-0.parquet", "part-00000-of-00002.parquet",
                                  "part-00001-of-00002.parquet"]
    written = json.loads((target / SUMMARY_FILE).read_text())
    assert written["files"] == ["_MANIFEST.json", "_dead_letter/part-0.parquet", "part-00000-of-00002.parquet",
                                "part-00001-of-00002.parquet"]
    assert "wrote: ./ (3 files), _dead_letter/ (1 file)" in summary.table()
    assert (target / SUCCESS_FILE).read_bytes() == b""


def test_non_empty_output_is_refused_without_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_SUMMARY.json").write_text("{}")
    with pytest.raises(OutputError, match=r"is not empty \(_SUMMARY.json\).*--overwrite"):
        open_output(str(tmp_path / "out"), job="t", overwrite=False)
    assert not (tmp_path / "out" / LOCK_FILE).exists()


def test_overwrite_refuses_a_directory_pairscore_did_not_write_and_touches_nothing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    for name in ("notes.txt", "a.parquet", "b.csv", "c", "d", "e"):
        (target / name).write_text("mine")
    before = everything(target)
    with pytest.raises(OutputError) as error:
        open_output(str(target), job="t", overwrite=True)
    message = str(error.value)
    assert "would delete a.parquet, b.csv, c, d, e, ... (1 more)" in message and "no pairscore job wrote" in message
    assert "\n" not in message
    assert everything(target) == before


OLD_DATA = ["scores/part-0.parquet", "dead_letter/part-0.parquet"]


@pytest.mark.parametrize("files, first_deleted", [
    ([SUMMARY_FILE, *OLD_DATA], [SUMMARY_FILE]),
    ([SUCCESS_FILE, SUMMARY_FILE, *OLD_DATA], [SUCCESS_FILE, SUMMARY_FILE]),
    ([MANIFEST_FILE, "part-0.parquet"], [MANIFEST_FILE]),
    ([f"store/left/{MANIFEST_FILE}", *OLD_DATA], [f"store/left/{MANIFEST_FILE}"]),
    # a run killed before its commit: its staging directory (and a lock put aside by a take-over)
    ([f"{STAGING_PREFIX}20260101-abc/part-0.parquet", f"{LOCK_FILE}.stale-x"], None),
], ids=["summary", "success", "manifest", "store-manifest", "leftovers"])
def test_overwrite_replaces_a_pairscore_output_markers_first(tmp_path, monkeypatch, files, first_deleted):
    target = tmp_path / "out"
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text("old")
    deleted = []
    real_delete = outputs.FileSystems.delete
    monkeypatch.setattr(outputs.FileSystems, "delete", lambda paths: (deleted.append(list(paths)), real_delete(paths)))
    out = open_output(str(target), job="t", overwrite=True)
    if first_deleted:   # an interrupted delete never leaves a complete-looking output
        assert [Path(p).relative_to(target).as_posix() for p in deleted[0]] == first_deleted
    assert everything(target) == sorted([LOCK_FILE, Path(out.staging).name])
    out.abort()
    assert everything(target) == []


def test_output_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputError, match="is an existing file"):
        open_output(str(tmp_path / "out"), job="t", overwrite=True)


def test_read_only_output_is_refused_in_one_line(read_only_dir):
    with pytest.raises(OutputError, match="cannot be written") as error:
        open_output(str(read_only_dir), job="t", overwrite=False)
    assert "\n" not in str(error.value)
    with pytest.raises(OutputError, match="cannot be created"):
        open_output(str(read_only_dir / "sub"), job="t", overwrite=False)


# --------------------------------------------------------------------------- the lock


def hold_lock(target: Path) -> subprocess.Popen:
    """A real second process holding the lock on ``target`` (it waits until killed)."""
    code = ("import sys, time\nfrom pipeline.outputs import open_output\n"
            f"open_output({str(target)!r}, job='holder', overwrite=False)\n"
            "print('locked', flush=True)\ntime.sleep(3600)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_live_holder_blocks_and_a_dead_one_is_taken_over(tmp_path):
    target = tmp_path / "out"
    holder = hold_lock(target)
    try:
        with pytest.raises(OutputError, match=rf"in use by holder \(pid {holder.pid} on host "):
            open_output(str(target), job="t", overwrite=True)
    finally:
        holder.kill()
        holder.wait()
    # Killed: its lock and its staging directory are left behind, and are recognised as such.
    assert read_lock(str(target)).pid == holder.pid
    with pytest.raises(OutputError, match="is not empty"):
        open_output(str(target), job="t", overwrite=False)
    out = open_output(str(target), job="t", overwrite=True)
    assert read_lock(str(target)).pid == os.getpid()
    assert any(f"pid {holder.pid}" in note and "no longer running" in note for note in out.notes)
    assert everything(target) == sorted([LOCK_FILE, Path(out.staging).name])
    out.abort()


def test_stale_lock_of_a_pid_that_does_not_exist(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    target = tmp_path / "out"
    target.mkdir()
    (target / LOCK_FILE).write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(), "started": "yesterday",
                                                "job": "score_pairs", "token": "t0"}))
    out = open_output(str(target), job="t", overwrite=True)
    assert out.notes == [f"took over the lock of score_pairs (pid {dead_pid} on host {socket.gethostname()}, "
                         "started yesterday), which was no longer running"]
    out.abort()


def test_a_run_killed_half_way_through_its_commit_is_replaced(tmp_path):
    """Data already moved into place, no markers yet, the dead run's lock: still pairscore's."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    target = tmp_path / "out"
    (target / "scores").mkdir(parents=True)
    (target / "scores" / "part-0.parquet").write_text("committed")
    (target / f"{STAGING_PREFIX}x").mkdir()
    (target / LOCK_FILE).write_text(json.dumps({"pid": int(finished.stdout), "host": socket.gethostname(),
                                                "started": "s", "job": "score_pairs", "token": "t0"}))
    out = open_output(str(target), job="t", overwrite=True)
    assert everything(target) == sorted([LOCK_FILE, Path(out.staging).name])
    out.abort()
    # Without that lock the same files are not provably pairscore's: refused, untouched.
    (target / "scores").mkdir()
    (target / "scores" / "part-0.parquet").write_text("whose?")
    with pytest.raises(OutputError, match="would delete scores"):
        open_output(str(target), job="t", overwrite=True)


def test_a_lock_from_another_host_is_never_taken(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "now", "job": "label_pairs",
                                                "token": "t0"}))
    with pytest.raises(OutputError, match=r"in use by label_pairs \(pid 1 on host elsewhere.*remove .*_LOCK only"):
        open_output(str(target), job="t", overwrite=True)


# --------------------------------------------------------------------------- failures


def test_a_failing_run_leaves_nothing(tmp_path):
    target = tmp_path / "out"

    @abort_output_on_failure
    def run():
        out = open_output(str(target), job="t", overwrite=False)
        stage_a_store(out)
        raise RuntimeError("row accounting failed")
    with pytest.raises(RuntimeError):
        run()
    assert not target.exists()   # created by the run, removed with everything in it


def test_a_failing_run_keeps_an_output_directory_it_did_not_create(tmp_path):
    target = tmp_path / "out"
    target.mkdir()

    @abort_output_on_failure
    def run():
        stage_a_store(open_output(str(target), job="t", overwrite=False))
        raise KeyboardInterrupt   # Ctrl-C cleans up too
    with pytest.raises(KeyboardInterrupt):
        run()
    assert target.is_dir() and everything(target) == []


def test_summary_that_cannot_be_written_commits_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out"

    def disk_full(self):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(RunSummary, "to_json", disk_full)

    @abort_output_on_failure
    def run():
        out = open_output(str(target), job="t", overwrite=False)
        stage_a_store(out)
        out.commit(summary_for(target))
    with pytest.raises(OSError, match="No space left"):
        run()
    assert not target.exists()   # created by the run, removed with everything in it


def test_a_commit_that_fails_half_way_is_undone(tmp_path, monkeypatch):
    target = tmp_path / "out"
    real_rename = outputs.FileSystems.rename
    calls = []

    def rename_then_fail(sources, targets):
        calls.append(targets)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return real_rename(sources, targets)
    monkeypatch.setattr(outputs.FileSystems, "rename", rename_then_fail)

    @abort_output_on_failure
    def run():
        out = open_output(str(target), job="t", overwrite=False)
        stage_a_store(out)
        out.commit(summary_for(target))
    with pytest.raises(OSError):
        run()
    assert not target.exists()   # created by the run, removed with everything in it


# --------------------------------------------------------------------------- checkpoints


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "config.json").write_text("v1")
        (staging / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target, allowed={"config.json", "weights"}.__contains__) as staging:
            (staging / "config.json").write_text("v2")
            raise RuntimeError("killed half-way through the save")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"config.json": "v1", "weights": "v1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]   # no temporary directory left
    with atomic_directory(target, allowed={"config.json", "weights"}.__contains__) as staging:
        (staging / "config.json").write_text("v2")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"config.json": "v2"}
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        with atomic_directory(target, allowed={"config.json", "weights"}.__contains__):
            pass
    assert (target / "notes.txt").exists()


def test_a_failed_student_save_keeps_the_previous_checkpoint(tmp_path, tiny_student_config, monkeypatch):
    from encoders import checkpoint
    from encoders.checkpoint import build_student, load_student, save_student
    target = tmp_path / "student"
    first = build_student(tiny_student_config, seed=1)
    save_student(first, target)

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError):
        save_student(build_student(tiny_student_config, seed=2), target)
    assert load_student(target).fingerprint == first.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]
