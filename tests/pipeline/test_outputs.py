"""The commit protocol of pipeline/output/ on its own (no models, no Beam pipeline): which
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

from apache_beam.io.filesystems import FileSystems

from encoders.remote import atomic_directory
from pipeline.output.commit import OutputDir, open_output
from pipeline.output.guard import abort_output_on_failure
from pipeline.output.layout import (COMMIT_PLAN, LOCK_FILE, STAGING_MARKER, STAGING_PREFIX, SUCCESS_FILE, SUMMARY_FILE,
                                    OutputError)
from pipeline.output.lock import read_lock
from pipeline.output.paths import check_no_overlap
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


def test_symlinks_into_the_output_are_resolved_before_deciding(tmp_path):
    """A glob whose match is a symlink into OUT, store sides that are symlinks into OUT, a model
    directory holding a link into OUT: each is refused, whatever the paths look like."""
    out = tmp_path / "out"
    (out / "scores").mkdir(parents=True)
    (out / "scores" / "part-0.parquet").write_text("yesterday")
    (out / "store" / "left").mkdir(parents=True)
    (out / "store" / "right").mkdir(parents=True)
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.parquet").write_text("today")
    (inputs / "b.parquet").symlink_to(out / "scores" / "part-0.parquet")
    with pytest.raises(OutputError, match=r"contains --pairs .*in/\*\.parquet.* \(.*b\.parquet is .*out/scores/part-0"):
        check_no_overlap(str(out), {"--pairs": [str(inputs / "*.parquet")]})
    store = tmp_path / "last-night"
    store.mkdir()
    (store / "left").symlink_to(out / "store" / "left")
    (store / "right").symlink_to(out / "store" / "right")
    with pytest.raises(OutputError, match=r"contains --store .*last-night.* \(.*last-night/(left|right) is "):
        check_no_overlap(str(out), {"--store": [str(store)]})
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.safetensors").symlink_to(out / "scores" / "part-0.parquet")
    with pytest.raises(OutputError, match="contains --model"):
        check_no_overlap(str(out), {"--model": [str(model)]})
    # An output inside a directory reached through a link is inside it too.
    (tmp_path / "link-to-in").symlink_to(inputs)
    with pytest.raises(OutputError, match="is inside --input"):
        check_no_overlap(str(inputs / "new-out"), {"--input": [str(tmp_path / "link-to-in")]})


def test_output_paths_with_glob_characters_never_touch_a_sibling(tmp_path):
    """``runs/run[1]`` is never ``runs/run1``: an output path holding *, ? or [ is refused before
    anything is touched (Beam's writers would match it as a pattern), and the sibling output that
    the pattern would have matched keeps every file, with no lock left anywhere."""
    runs = tmp_path / "runs"
    commit_output(runs / "run1", OLD)
    commit_output(runs / "staged-elsewhere", OLD)
    (runs / "staged-elsewhere").rename(runs / "run[1]")   # an earlier output under the literal name
    before = snapshot(runs)
    for name in ("run[1]", "run?", "run*"):
        with pytest.raises(OutputError, match=r"holds .* in its path .*choose a directory whose path has none"):
            open_output(str(runs / name), job="t", overwrite=True)
    assert snapshot(runs) == before


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
    real_rename = FileSystems.rename

    def recording_rename(sources, targets):
        moved.extend(Path(t).relative_to(target).as_posix() for t in targets)
        return real_rename(sources, targets)
    monkeypatch.setattr(FileSystems, "rename", recording_rename)
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


def commit_output(target: Path, files: dict[str, str], job: str = "score_pairs") -> None:
    """A real committed pairscore output in ``target`` holding ``files`` (relative path -> text)."""
    with open_output(str(target), job=job, overwrite=True) as out:
        for name, text in files.items():
            Path(out.staged(name)).parent.mkdir(parents=True, exist_ok=True)
            Path(out.staged(name)).write_text(text)
        out.commit(summary_for(target))


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path`` with its bytes (None for a directory): to prove it unchanged."""
    return {p.relative_to(path).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in path.rglob("*")}


OLD = {"scores/part-00000-of-00001.parquet": "old scores", "store/left/part-0.parquet": "old left",
       f"store/left/{MANIFEST_FILE}": "{}", "_dead_letter/part-0.parquet": "old letters"}
NEW = {"scores/part-00000-of-00002.parquet": "new scores 0", "scores/part-00001-of-00002.parquet": "new scores 1",
       f"store/right/{MANIFEST_FILE}": "{}", "store/right/part-0.parquet": "new right"}


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


def dead_lock(target: Path) -> None:
    (target / LOCK_FILE).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started": "s",
                                                "job": "score_pairs", "token": "t0"}))


@pytest.mark.parametrize("files", [
    # Spark/Hadoop write _SUCCESS into every output: it proves nothing
    {SUCCESS_FILE: "", "part-00000-c000.snappy.parquet": "spark", "notes.txt": "mine"},
    {MANIFEST_FILE: "{}", "part-0.parquet": "whose?", "notes.txt": "mine"},
    {SUMMARY_FILE: "{}", SUCCESS_FILE: "", "notes.txt": "mine"},                       # not a pairscore summary
    {f"{STAGING_PREFIX}x/part-0.parquet": "unmarked", "notes.txt": "mine"},            # not pairscore's staging
], ids=["spark-success", "manifest", "foreign-summary", "unmarked-staging"])
@pytest.mark.parametrize("lock", [False, True], ids=["no-lock", "dead-lock"])
def test_overwrite_trusts_no_marker_anyone_can_write(tmp_path, files, lock):
    """A _SUCCESS, a manifest, a summary that lists nothing or a lock whose holder is dead does
    not make a directory pairscore's: refused, naming the files, and nothing is touched."""
    target = tmp_path / "out"
    for name, text in files.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text)
    if lock:
        dead_lock(target)
    before = snapshot(target)
    with pytest.raises(OutputError, match=r"--overwrite would delete .*notes\.txt.* which no pairscore job wrote"):
        open_output(str(target), job="t", overwrite=True)
    assert snapshot(target) == before


def test_overwrite_names_files_its_summary_does_not_list_and_keeps_them(tmp_path):
    target = tmp_path / "out"
    commit_output(target, OLD)
    (target / "notes.txt").write_text("mine")
    (target / "scores" / "extra.csv").write_text("mine too")
    (target / "store" / "left" / "x").mkdir()
    before = snapshot(target)
    with pytest.raises(OutputError) as error:
        open_output(str(target), job="t", overwrite=True)
    assert "would delete notes.txt, scores/extra.csv, store/left/x/ in" in str(error.value)
    assert "its _SUMMARY.json does not list them" in str(error.value)
    assert snapshot(target) == before


def test_overwrite_keeps_the_old_output_until_the_new_one_commits(tmp_path):
    target = tmp_path / "out"
    commit_output(target, OLD)
    before = snapshot(target)
    out = open_output(str(target), job="t", overwrite=True)
    for name, text in NEW.items():
        Path(out.staged(name)).parent.mkdir(parents=True, exist_ok=True)
        Path(out.staged(name)).write_text(text)
    # The run is staged: the old output is still whole and readable, _SUCCESS and all.
    assert {k: v for k, v in snapshot(target).items() if not k.startswith((STAGING_PREFIX, LOCK_FILE))} == before
    out.commit(summary_for(target))
    assert everything(target) == sorted({*NEW, SUMMARY_FILE, SUCCESS_FILE, "scores", "store", "store/right"})
    assert json.loads((target / SUMMARY_FILE).read_text())["files"] == sorted(NEW)
    assert all((target / name).read_text() == text for name, text in NEW.items())


@pytest.mark.parametrize("failure", [RuntimeError("row accounting failed"), KeyboardInterrupt(),
                                     OSError(28, "No space left on device")])
def test_a_failed_overwrite_leaves_the_old_output_as_it_was(tmp_path, failure):
    target = tmp_path / "out"
    commit_output(target, OLD)
    before = snapshot(target)

    @abort_output_on_failure
    def run():
        out = open_output(str(target), job="t", overwrite=True)
        for name, text in NEW.items():
            Path(out.staged(name)).parent.mkdir(parents=True, exist_ok=True)
            Path(out.staged(name)).write_text(text)
        raise failure
    with pytest.raises(type(failure)):
        run()
    assert snapshot(target) == before


def test_overwrite_cleans_up_what_an_interrupted_run_left(tmp_path):
    """A killed run's marked staging directory and its lock (holder provably dead) are removed;
    the earlier output they sit beside stays until the new run commits."""
    target = tmp_path / "out"
    commit_output(target, OLD)
    before = snapshot(target)
    killed = open_output(str(target), job="score_pairs", overwrite=True)   # then "SIGKILL": no clean-up
    Path(killed.staged("scores")).mkdir()
    Path(killed.staged("scores", "part-0.parquet")).write_text("half")
    dead_lock(target)
    (target / f"{LOCK_FILE}.stale-0").write_text((target / LOCK_FILE).read_text())
    with pytest.raises(OutputError, match="is not empty"):
        open_output(str(target), job="t", overwrite=False)
    out = open_output(str(target), job="t", overwrite=True)
    assert not Path(killed.staging).exists() and not (target / f"{LOCK_FILE}.stale-0").exists()
    assert {k: v for k, v in snapshot(target).items() if not k.startswith((STAGING_PREFIX, LOCK_FILE))} == before
    out.abort()
    assert snapshot(target) == before


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
    code = ("import sys, time\nfrom pipeline.output.commit import open_output\n"
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
    staging = Path(out.staging).name
    assert everything(target) == sorted([LOCK_FILE, staging, f"{staging}/{STAGING_MARKER}"])
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


COMMIT_MOVES = 12   # OLD and NEW: 4 files each, plus _SUMMARY.json and _SUCCESS, each moved once


def interrupt_commit(monkeypatch, step, when) -> None:
    """A signal at ``step`` of the commit: before that rename, or right after it (the rename
    done, nothing recorded yet). ``step`` "plan": while the commit plan is written."""
    if step == "plan":
        real_write = OutputDir._write_staged

        def write(self, rel, content):
            if rel == COMMIT_PLAN:
                if when == "after":
                    real_write(self, rel, content)
                raise KeyboardInterrupt
            return real_write(self, rel, content)
        monkeypatch.setattr(OutputDir, "_write_staged", write)
        return
    real_rename = FileSystems.rename
    calls = []

    def rename(sources, targets):
        calls.append(targets)
        if len(calls) - 1 == step and when == "before":
            raise KeyboardInterrupt
        real_rename(sources, targets)
        if len(calls) - 1 == step and when == "after":
            raise KeyboardInterrupt
    monkeypatch.setattr(FileSystems, "rename", rename)


def assert_old_or_new(target: Path, old: dict, committed: bool) -> None:
    """OUT is exactly the earlier output, or exactly the new one, whole: never a _SUCCESS
    beside missing or mixed data."""
    now = {k: v for k, v in snapshot(target).items() if not k.startswith((STAGING_PREFIX, LOCK_FILE))}
    if not committed:
        assert now == old
        return
    files = {k for k, v in now.items() if v is not None}
    assert files == {*NEW, SUMMARY_FILE, SUCCESS_FILE}
    assert json.loads(now[SUMMARY_FILE])["files"] == sorted(NEW)
    assert all(now[name] == text.encode() for name, text in NEW.items())


STEPS = ["plan", *range(COMMIT_MOVES)]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", STEPS)
def test_an_interrupted_commit_is_rolled_back_or_kept_whole(tmp_path, monkeypatch, step, when):
    """Ctrl-C or SIGTERM at any step of an --overwrite commit: the clean-up leaves the earlier
    output as it was, or, once the new _SUCCESS is in place, keeps the new output whole (it never
    removes what a committed marker vouches for)."""
    target = tmp_path / "out"
    commit_output(target, OLD)
    old = snapshot(target)

    @abort_output_on_failure
    def run():
        out = open_output(str(target), job="t", overwrite=True)
        for name, text in NEW.items():
            Path(out.staged(name)).parent.mkdir(parents=True, exist_ok=True)
            Path(out.staged(name)).write_text(text)
        interrupt_commit(monkeypatch, step, when)
        out.commit(summary_for(target))
    with pytest.raises(KeyboardInterrupt) as interrupted:
        run()
    monkeypatch.undo()
    committed = step == COMMIT_MOVES - 1 and when == "after"
    assert_old_or_new(target, old, committed)
    assert ("after" in interrupted.value.line) == committed
    assert [p.name for p in target.iterdir() if p.name.startswith((STAGING_PREFIX, LOCK_FILE))] == []


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", STEPS)
def test_a_commit_killed_at_any_step_is_rolled_back_by_the_next_run(tmp_path, monkeypatch, step, when):
    """SIGKILL at any step of an --overwrite commit (no clean-up at all): the next --overwrite
    run finds the plan in the marked staging directory and rolls the commit back (or keeps the
    finished one), so OUT is the earlier output or the new one, whole, before it starts."""
    target = tmp_path / "out"
    commit_output(target, OLD)
    old = snapshot(target)
    killed = open_output(str(target), job="t", overwrite=True)
    for name, text in NEW.items():
        Path(killed.staged(name)).parent.mkdir(parents=True, exist_ok=True)
        Path(killed.staged(name)).write_text(text)
    interrupt_commit(monkeypatch, step, when)
    with pytest.raises(KeyboardInterrupt):
        killed.commit(summary_for(target))   # and no abort(): the process is gone
    monkeypatch.undo()
    dead_lock(target)
    committed = step == COMMIT_MOVES - 1 and when == "after"
    out = open_output(str(target), job="t", overwrite=True)
    assert_old_or_new(target, old, committed)
    assert not Path(killed.staging).exists()
    out.abort()
    assert_old_or_new(target, old, committed)
    assert [p.name for p in target.iterdir() if p.name.startswith((STAGING_PREFIX, LOCK_FILE))] == []


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
    real_rename = FileSystems.rename
    calls = []

    def rename_then_fail(sources, targets):
        calls.append(targets)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return real_rename(sources, targets)
    monkeypatch.setattr(FileSystems, "rename", rename_then_fail)

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
