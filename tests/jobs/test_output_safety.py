"""Every job's output, as a user and a scheduler depend on it: one table per directory (read
back by pandas, pyarrow.dataset and DuckDB), the README's reading snippets run verbatim, a
killed or failing run that leaves nothing complete-looking, ``--overwrite`` that cannot delete
inputs or foreign files, the lock, and one-line errors for a bad ``--output``."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from jobs import encode_texts, score_pairs
from jobs.build_candidates import BuildCandidatesJob, run as run_build_candidates
from jobs.encode_texts import EncodeTextsJob, run as run_encode_texts
from jobs.label_pairs import LabelPairsJob, run as run_label_pairs
from jobs.score_pairs import ScorePairsJob, run as run_score_pairs
from jobs.train_teacher import TrainTeacherJob, run as run_train_teacher
from pipeline import store
from pipeline.output import commit
from pipeline.summary import RunSummary

REPO = Path(__file__).resolve().parents[2]
MARKERS = {"_SUMMARY.json", "_SUCCESS", "_MANIFEST.json"}
TOPICS = ["cooking pasta", "the violin", "a bicycle chain", "tomatoes", "a marathon", "a cover letter"]
PAIRS = [{"left": f"how do I learn {t}?", "right": f"tips for {u}", "pair_id": i * 10 + j}
         for i, t in enumerate(TOPICS) for j, u in enumerate(TOPICS[:3])]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tree(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def parts_table(directory: Path) -> pa.Table:
    """The table as its part files hold it, read one by one: what every reader must return."""
    return pa.concat_tables([pq.read_table(p) for p in sorted(directory.glob("part-*.parquet"))])


def sort_rows(rows: list[dict], keys: list[str]) -> list[dict]:
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in keys))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint, tiny_teacher_dir, tiny_encoder_dir) -> Path:
    """One small real run of every Beam/table job, laid out as the README's snippets expect:
    ``runs/example-scores`` (score_pairs) and ``store`` (encode_texts)."""
    root = tmp_path_factory.mktemp("outputs")
    pairs = write_jsonl(root / "pairs.jsonl", PAIRS + [{"left": "", "right": "x", "pair_id": -1}])
    texts = write_jsonl(root / "texts.jsonl", [{"text": f"how do I learn {t}?"} for t in TOPICS] + [{"text": " "}])
    run_score_pairs(ScorePairsJob(max_dead_letter_fraction=1.0,
                                  pairs=(str(pairs),), output=str(root / "runs" / "example-scores"),
                                  model_dir=tiny_checkpoint, keep_cols=("pair_id",)), [], argv=[])
    run_encode_texts(EncodeTextsJob(max_dead_letter_fraction=1.0,
                                    inputs=(str(texts),), output=str(root / "store"), model_dir=tiny_checkpoint),
                     [], argv=[])
    run_label_pairs(LabelPairsJob(max_dead_letter_fraction=1.0,
                                  pairs=(str(pairs),), teacher=tiny_teacher_dir, output=str(root / "distill")),
                    [], argv=[])
    run_build_candidates(BuildCandidatesJob(max_dead_letter_fraction=1.0,
                                            left_texts=(str(texts),), right_texts=(str(texts),),
                                            output=str(root / "candidates"), top_k=2, random_per_left=1,
                                            encoder=tiny_encoder_dir, progress=False), argv=[])
    return root


# (directory, columns of its table, what the summary says it holds)
TABLES = [
    ("runs/example-scores/scores", ["left_id", "right_id", "score", "pair_id"], ("counts", "rows_written")),
    ("runs/example-scores/store/left", ["id", "text_hash", "num_tokens", "truncated", "tokens", "pooled"], None),
    ("runs/example-scores/store/right", ["id", "text_hash", "num_tokens", "truncated", "tokens", "pooled"], None),
    ("runs/example-scores/_dead_letter", ["reason", "detail", "source", "row"], ("counts", "pairs_dead_lettered")),
    ("store", ["id", "text_hash", "num_tokens", "truncated", "tokens", "pooled"], ("counts", "store_rows")),
    ("distill", ["left_id", "right_id", "left", "right", "logit", "soft_label", "truncated"], ("counts", "output_rows")),
    ("candidates", ["left", "right", "left_id", "right_id", "source", "similarity", "rank"],
     ("counts", "pairs_written")),
]


@pytest.mark.parametrize("directory, columns, counted", TABLES, ids=[t[0] for t in TABLES])
def test_each_table_directory_reads_back_as_exactly_that_table(runs, directory, columns, counted):
    path = runs / directory
    expected = parts_table(path)
    assert expected.column_names == columns and expected.num_rows > 0
    if counted:
        summary_dir = path.parent if path.name in ("scores", "_dead_letter") else path
        summary = json.loads((summary_dir / "_SUMMARY.json").read_text())
        assert summary[counted[0]][counted[1]] == expected.num_rows
    keys = [c for c in ("left_id", "right_id", "id", "reason", "source", "rank") if c in columns]
    want = sort_rows(expected.to_pylist(), keys)
    by_pandas = pd.read_parquet(path)
    assert list(by_pandas.columns) == columns
    assert len(by_pandas) == expected.num_rows
    by_dataset = ds.dataset(path).to_table()
    assert sort_rows(by_dataset.to_pylist(), keys) == want
    by_duckdb = duckdb.sql(f"select * from read_parquet('{path}/*.parquet')").to_arrow_table()
    assert by_duckdb.column_names == columns
    assert sort_rows(by_duckdb.to_pylist(), keys) == want


def test_spark_reads_each_table_directory_as_that_table(runs):
    pyspark = pytest.importorskip("pyspark.sql")
    spark = pyspark.SparkSession.builder.master("local[1]").appName("pairscore-layout").getOrCreate()
    try:
        for directory, columns, _ in TABLES:
            frame = spark.read.parquet(str(runs / directory))
            assert frame.columns == columns and frame.count() == parts_table(runs / directory).num_rows
    finally:
        spark.stop()


def test_score_pairs_layout_and_summary_list_the_files(runs):
    out = runs / "runs" / "example-scores"
    top = sorted(p.name for p in out.iterdir())
    assert top == ["_SUCCESS", "_SUMMARY.json", "_dead_letter", "scores", "store"]
    summary = json.loads((out / "_SUMMARY.json").read_text())
    committed = sorted(p for p in tree(out) if (out / p).is_file() and p not in ("_SUMMARY.json", "_SUCCESS"))
    assert summary["files"] == committed
    assert {"store/left/_MANIFEST.json", "store/right/_MANIFEST.json"} <= set(summary["files"])
    assert any(f.startswith("scores/part-") for f in summary["files"])
    for job_dir in ("store", "distill", "candidates"):
        names = {p.name for p in (runs / job_dir).iterdir()}
        assert {"_SUCCESS", "_SUMMARY.json", "_dead_letter"} <= names
        assert not any(n.startswith(("_LOCK", "_temporary")) for n in names)


def readme_snippets() -> list[str]:
    """The ```python blocks of README.md that follow the marker line, verbatim."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"<!-- executed by tests/jobs/test_output_safety.py -->\n```python\n(.*?)```", text, re.S)


def test_readme_reading_snippets_run_verbatim(runs, monkeypatch, capsys):
    snippets = readme_snippets()
    assert len(snippets) >= 3
    monkeypatch.chdir(runs)
    namespace: dict = {}
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), namespace)
    assert list(namespace["scores"].columns) == ["left_id", "right_id", "score", "pair_id"]
    assert len(namespace["scores"]) == len(PAIRS)
    assert set(namespace["dead"]["reason"]) == {"left_empty_text"}
    assert namespace["tokens"].shape[1:] == (4, 8)   # the tiny student keeps N=4 tokens of D=8
    assert f"{len(PAIRS)} pairs scored" in capsys.readouterr().out


# --------------------------------------------------------------------------- failures leave nothing


def test_a_run_that_fails_its_own_count_check_leaves_no_manifest(tmp_path, tiny_checkpoint, monkeypatch):
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])
    monkeypatch.setattr(store, "count_rows", lambda files: 1)   # a lost part file
    with pytest.raises(RuntimeError, match="row accounting failed"):
        run_encode_texts(EncodeTextsJob(inputs=(str(texts),), output=str(tmp_path / "out"), model_dir=tiny_checkpoint),
                         [], argv=[])
    assert not (tmp_path / "out").exists()   # no part file, manifest, summary, _SUCCESS or lock


def test_summary_that_cannot_be_written_fails_the_run_and_commits_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])

    def disk_full(self):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(RunSummary, "to_json", disk_full)
    result = CliRunner().invoke(encode_texts.main, ["--input", str(texts), "--output", str(tmp_path / "out"),
                                                    "--model", tiny_checkpoint])
    assert result.exit_code != 0
    assert not (tmp_path / "out").exists()   # no part file, manifest, summary, _SUCCESS or lock


def test_a_failed_training_run_leaves_no_model(tmp_path, tiny_encoder_dir, monkeypatch):
    rows = [{"left": f"is {w} good", "right": f"{'yes' if i % 2 else 'no'} {w}", "label": i % 2}
            for i, w in enumerate(["apple", "river", "engine", "violin"])]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)

    def fail(*args, **kwargs):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(commit, "write_dead_letter_file", fail)   # after the best epoch was saved
    with pytest.raises(OSError):
        run_train_teacher(TrainTeacherJob(train=(str(data),), dev=(str(data),), output=str(tmp_path / "t"),
                                          base=tiny_encoder_dir, epochs=1, batch_size=4, max_length=16,
                                          progress=False), argv=[])
    assert not (tmp_path / "t").exists()


def staging_has_started(output: Path) -> bool:
    return any(any(p.iterdir()) for p in output.glob("_temporary-*") if p.is_dir())


def test_killed_run_leaves_nothing_complete_and_a_rerun_equals_an_uninterrupted_run(tmp_path, tiny_checkpoint):
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": f"text number {i} about {TOPICS[i % 6]}"}
                                                   for i in range(400)])
    killed = tmp_path / "killed"
    args = ["--input", str(texts), "--model", tiny_checkpoint, "--batch-size", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "jobs.encode_texts", *args, "--output", str(killed)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600   # only a run that never starts hits it
        while not staging_has_started(killed) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed: give it more texts"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    left = tree(killed)
    assert not [p for p in left if p.rsplit("/", 1)[-1] in MARKERS], left
    assert not [p for p in left if p.startswith("part-")], left          # nothing committed
    assert sorted({p.split("/", 1)[0] for p in left}) == ["_LOCK", next(p for p in left if p.startswith("_temporary-"))]

    result = CliRunner().invoke(encode_texts.main, [*args, "--output", str(killed)])
    assert result.exit_code == 2 and "is not empty" in result.output
    rerun = run_encode_texts(EncodeTextsJob(inputs=(str(texts),), output=str(killed), model_dir=tiny_checkpoint,
                                            batch_size=2, overwrite=True), [], argv=[])
    assert any(f"pid {process.pid}" in note and "no longer running" in note for note in rerun.notes)
    clean = tmp_path / "clean"
    run_encode_texts(EncodeTextsJob(inputs=(str(texts),), output=str(clean), model_dir=tiny_checkpoint, batch_size=2),
                     [], argv=[])
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in clean.iterdir())
    again, reference = parts_table(killed).sort_by("id"), parts_table(clean).sort_by("id")
    assert again.num_rows == reference.num_rows == 400
    assert again.equals(reference)
    manifests = [json.loads((d / "_MANIFEST.json").read_text()) for d in (killed, clean)]
    # The same rows; each part's bytes differ by the provenance its run stamps in the footer, so the
    # content proofs (schema version 2) are the only keys that may differ.
    proofs = ("part_bytes", "part_sha256")
    assert {k: v for k, v in manifests[0].items() if k not in proofs} == \
        {k: v for k, v in manifests[1].items() if k not in proofs}


def test_terminated_run_cleans_up_after_itself(tmp_path, tiny_checkpoint):
    """SIGTERM (a scheduler's timeout) removes the staging directory and the lock."""
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": f"text number {i}"} for i in range(400)])
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "jobs.encode_texts", "--input", str(texts), "--model",
                                tiny_checkpoint, "--batch-size", "2", "--output", str(out)],
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600   # only a run that never starts hits it
        while not staging_has_started(out) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be terminated: give it more texts"
        process.terminate()
        assert process.wait(timeout=300) == 143
    finally:
        process.kill()
        process.wait()
    assert not out.exists()


# --------------------------------------------------------------------------- --overwrite and --output


def test_store_inside_the_output_is_refused_before_anything_is_touched(runs, tmp_path, tiny_checkpoint):
    out = runs / "runs" / "example-scores"
    before = {p: (out / p).stat().st_mtime_ns for p in tree(out)}
    result = CliRunner().invoke(score_pairs.main, [
        "--pairs", str(runs / "pairs.jsonl"), "--model", tiny_checkpoint, "--store", str(out / "store"),
        "--output", str(out), "--overwrite"])
    assert result.exit_code == 2
    assert "contains --store" in result.output and len(result.output.strip().splitlines()) == 1
    assert {p: (out / p).stat().st_mtime_ns for p in tree(out)} == before


def test_output_equal_to_the_input_directory_is_refused(tmp_path, tiny_checkpoint):
    (tmp_path / "data").mkdir()
    texts = write_jsonl(tmp_path / "data" / "t.jsonl", [{"text": "a"}])
    result = CliRunner().invoke(encode_texts.main, ["--input", str(texts), "--model", tiny_checkpoint,
                                                    "--output", str(tmp_path / "data"), "--overwrite"])
    assert result.exit_code == 2 and "contains --input" in result.output
    assert texts.read_text() == '{"text": "a"}\n'


def test_overwrite_names_foreign_files_and_keeps_them(tmp_path, tiny_checkpoint):
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.xlsx").write_text("mine")
    result = CliRunner().invoke(encode_texts.main, ["--input", str(texts), "--model", tiny_checkpoint,
                                                    "--output", str(out), "--overwrite"])
    assert result.exit_code == 2 and "would delete report.xlsx" in result.output
    assert tree(out) == ["report.xlsx"]


def test_overwrite_replaces_an_earlier_run(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    for texts in (["a", "b", "c"], ["d"]):
        source = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in texts])
        result = CliRunner().invoke(encode_texts.main, ["--input", str(source), "--model", tiny_checkpoint,
                                                        "--output", str(out), "--overwrite"])
        assert result.exit_code == 0, result.output
    assert parts_table(out).num_rows == 1
    assert json.loads((out / "_SUMMARY.json").read_text())["counts"]["rows_read"] == 1


def test_output_that_is_a_file_or_read_only_exits_2_in_one_line(tmp_path, tiny_checkpoint, read_only_dir):
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}])
    (tmp_path / "file").write_text("x")
    for output, message in ((tmp_path / "file", "is an existing file"), (read_only_dir, "cannot be written")):
        result = CliRunner().invoke(encode_texts.main, ["--input", str(texts), "--model", tiny_checkpoint,
                                                        "--output", str(output)])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_second_run_on_a_locked_output_is_refused_naming_the_holder(tmp_path, tiny_checkpoint):
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}])
    out = tmp_path / "out"
    code = ("import time\nfrom pipeline.output.commit import open_output\n"
            f"open_output({str(out)!r}, job='score_pairs', overwrite=False)\nprint('locked', flush=True)\n"
            "time.sleep(3600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(encode_texts.main, ["--input", str(texts), "--model", tiny_checkpoint,
                                                        "--output", str(out), "--overwrite"])
        assert result.exit_code == 2
        assert f"is in use by score_pairs (pid {holder.pid} on host" in result.output
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- what --overwrite may replace


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path`` with its bytes (None for a directory): to prove it unchanged."""
    return {p.relative_to(path).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in path.rglob("*")}


def dead_lock_json() -> str:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return json.dumps({"pid": int(finished.stdout), "host": os.uname().nodename, "started": "s", "job": "score_pairs",
                       "token": "t0"})


@pytest.mark.parametrize("lock", [False, True], ids=["success-only", "success-and-dead-lock"])
def test_overwrite_of_a_spark_output_is_refused_and_keeps_every_file(tmp_path, tiny_checkpoint, lock):
    """Spark and Hadoop write _SUCCESS into every output; a lock whose holder is dead is no proof
    either. --overwrite refuses such a folder in one line naming its files, and keeps them all."""
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}])
    out = tmp_path / "spark-out"
    out.mkdir()
    (out / "_SUCCESS").write_text("")
    pq.write_table(pa.table({"x": [1, 2]}), out / "part-00000-c000.snappy.parquet")
    (out / "notes.txt").write_text("mine")
    if lock:
        (out / "_LOCK").write_text(dead_lock_json())
    before = snapshot(out)
    result = CliRunner().invoke(encode_texts.main, ["--input", str(texts), "--model", tiny_checkpoint,
                                                    "--output", str(out), "--overwrite"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "would delete _SUCCESS, notes.txt, part-00000-c000.snappy.parquet" in result.output
    assert "a _SUCCESS alone proves nothing" in result.output
    assert snapshot(out) == before


def test_output_with_glob_characters_never_touches_the_sibling_it_would_match(tmp_path, tiny_checkpoint):
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])
    runs = tmp_path / "runs"
    run_encode_texts(EncodeTextsJob(inputs=(str(texts),), output=str(runs / "run1"), model_dir=tiny_checkpoint),
                     [], argv=[])
    before = snapshot(runs)
    result = CliRunner().invoke(encode_texts.main, ["--input", str(texts), "--model", tiny_checkpoint,
                                                    "--output", str(runs / "run[1]"), "--overwrite"])
    assert result.exit_code == 2, result.output
    assert "holds '[' in its path" in result.output and len(result.output.strip().splitlines()) == 1
    assert snapshot(runs) == before   # run1's markers and manifest kept, no _LOCK anywhere


def test_an_input_that_exists_literally_is_read_literally(tmp_path, tiny_checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_jsonl(inputs / "pairs[1].jsonl", PAIRS[:2])
    write_jsonl(inputs / "pairs1.jsonl", PAIRS[5:9])
    summary = run_score_pairs(ScorePairsJob(pairs=(str(inputs / "pairs[1].jsonl"),), output=str(tmp_path / "out"),
                                            model_dir=tiny_checkpoint, keep_cols=("pair_id",)), [], argv=[])
    assert summary.counts["pairs_read"] == 2
    assert sorted(pq.read_table(tmp_path / "out" / "scores").column("pair_id").to_pylist()) == [0, 1]


def test_symlinks_into_the_output_are_refused_before_anything_is_touched(runs, tmp_path, tiny_checkpoint):
    """A pairs glob whose match links into OUT, and --store sides that link into OUT: refused
    (exit 2, one line) and OUT keeps every file; it used to be deleted before the run failed."""
    # Last run's distillation set, linked among today's pairs (its parts have left and right).
    distill = runs / "distill"
    inputs = tmp_path / "in"
    inputs.mkdir()
    pq.write_table(pa.Table.from_pylist(PAIRS[:2]), inputs / "a.parquet")
    (inputs / "b.parquet").symlink_to(next(distill.glob("part-*.parquet")))
    # Last night's store, its sides linked from elsewhere.
    scores = runs / "runs" / "example-scores"
    store = tmp_path / "last-night"
    store.mkdir()
    for side in ("left", "right"):
        (store / side).symlink_to(scores / "store" / side)
    for out, extra in ((distill, ["--pairs", str(inputs / "*.parquet")]),
                       (scores, ["--pairs", str(runs / "pairs.jsonl"), "--store", str(store)])):
        before = snapshot(out)
        result = CliRunner().invoke(score_pairs.main, [*extra, "--model", tiny_checkpoint, "--output", str(out),
                                                       "--overwrite"])
        assert result.exit_code == 2, result.output
        assert "contains --" in result.output and len(result.output.strip().splitlines()) == 1
        assert snapshot(out) == before


def test_a_failed_overwrite_keeps_the_earlier_output_whole(tmp_path, tiny_checkpoint, monkeypatch):
    """--overwrite replaces at commit: a re-run that fails leaves yesterday's output as it was
    (it used to be deleted before the run started)."""
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in ("a", "b", "c")])
    out = tmp_path / "out"
    run_encode_texts(EncodeTextsJob(inputs=(str(texts),), output=str(out), model_dir=tiny_checkpoint), [], argv=[])
    before = snapshot(out)
    monkeypatch.setattr(store, "count_rows", lambda files: 0)   # a lost part file
    write_jsonl(texts, [{"text": "d"}])
    with pytest.raises(RuntimeError, match="row accounting failed"):
        run_encode_texts(EncodeTextsJob(inputs=(str(texts),), output=str(out), model_dir=tiny_checkpoint,
                                        overwrite=True), [], argv=[])
    assert snapshot(out) == before


# --------------------------------------------------------------------------- interrupts and a full disk


def interrupt_when_staging(args: list[str], output: Path, signum: int) -> subprocess.CompletedProcess:
    """Run ``python -m jobs.encode_texts ARGS``, send ``signum`` once its staging directory holds
    files, and return what it printed and its exit status."""
    process = subprocess.Popen([sys.executable, "-m", "jobs.encode_texts", *args], env={**os.environ,
                               "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a Ctrl-C must reach it, even when these tests run as a background job
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not staging_has_started(output) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be interrupted: give it more texts"
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


@pytest.mark.parametrize("signum, status, beam", [(signal.SIGINT, 130, []), (signal.SIGTERM, 143, []),
                                                  (signal.SIGTERM, 143, MULTI_PROCESS)],
                         ids=["ctrl-c", "sigterm", "sigterm-multi-process"])
def test_an_interrupted_overwrite_says_one_line_and_leaves_the_output_as_it_was(tmp_path, tiny_checkpoint, signum,
                                                                                   status, beam):
    """Ctrl-C and SIGTERM: exit 130 / 143, one line, the earlier output as it was. With Beam's
    multi-process workers, SIGTERM to the launching process alone (what a scheduler sends) used to
    leave it waiting for its workers forever: they are ended with it."""
    out = tmp_path / "out"
    first = write_jsonl(tmp_path / "first.jsonl", [{"text": "yesterday"}])
    run_encode_texts(EncodeTextsJob(inputs=(str(first),), output=str(out), model_dir=tiny_checkpoint), [], argv=[])
    before = snapshot(out)
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": f"text number {i}"} for i in range(400)])
    done = interrupt_when_staging(["--input", str(texts), "--model", tiny_checkpoint, "--batch-size", "2", "--quiet",
                                   "--output", str(out), "--overwrite", *beam], out, signum)
    assert done.returncode == status, done.stderr
    name = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    assert done.stderr == f"{name}: nothing committed, {out} left as it was\n"
    assert snapshot(out) == before


def processes_in_group(group: int) -> dict[int, str]:
    """pid -> command line of every live process in process group ``group`` (Linux /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            found[int(entry)] = command
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds Beam's worker processes through /proc")
@pytest.mark.parametrize("mode", ["in_memory", "multi_threading", "multi_processing"])
def test_ctrl_c_at_a_terminal_says_one_line_in_every_running_mode(tmp_path, tiny_checkpoint, mode):
    """A terminal's Ctrl-C goes to the whole foreground process group, Beam's worker processes
    included: they used to die of it with their own KeyboardInterrupt tracebacks above the one
    line. Now only the launching process takes it: one line, exit 130, the earlier output as it
    was, and no process of the run left behind."""
    out = tmp_path / "out"
    pairs = [{"left": f"how do I learn {TOPICS[i % 6]} number {i}?", "right": f"tips for {i % 97}"}
             for i in range(3000)]
    run_score_pairs(ScorePairsJob(pairs=(str(write_jsonl(tmp_path / "first.jsonl", PAIRS[:3])),), output=str(out),
                                  model_dir=tiny_checkpoint), [], argv=[])
    before = snapshot(out)
    beam = ["--direct_num_workers=2", f"--direct_running_mode={mode}"]
    process = subprocess.Popen([sys.executable, "-m", "jobs.score_pairs", "--pairs",
                                str(write_jsonl(tmp_path / "pairs.jsonl", pairs)), "--model", tiny_checkpoint,
                                "--batch-size", "4", "--encode-batch-size", "2", "--output", str(out), "--overwrite",
                                "--quiet", *beam], env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               # a process group of its own, as a terminal gives a command; SIGINT not
                               # ignored, even when these tests run as a background job
                               start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    group = process.pid

    def workers() -> list[int]:
        return [pid for pid, command in processes_in_group(group).items()
                if command.split()[1:3] == ["-m", "apache_beam.runners.worker.sdk_worker_main"]]

    def settled(pid: int) -> bool:
        """Gone, or ignoring SIGINT (a pending one is then discarded)."""
        try:
            with open(f"/proc/{pid}/status") as handle:
                ignored = next(line for line in handle if line.startswith("SigIgn:"))
        except (OSError, StopIteration):
            return True
        return bool(int(ignored.split()[1], 16) & (1 << (signal.SIGINT - 1))) or pid not in processes_in_group(group)
    try:
        deadline = time.monotonic() + 600   # only a run that never starts its workers hits it
        while (not staging_has_started(out) or len(workers()) < (2 if mode == "multi_processing" else 0)) \
                and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be interrupted: give it more pairs"
        # The launching process takes its time to react, as on a loaded machine: the workers see
        # the Ctrl-C first.
        os.kill(group, signal.SIGSTOP)
        os.killpg(group, signal.SIGINT)
        deadline = time.monotonic() + 120
        while not all(settled(pid) for pid in workers()) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(group, signal.SIGCONT)
        _, stderr = process.communicate(timeout=300)
        deadline = time.monotonic() + 600   # a hang guard only: on a busy machine workers may take a while to exit
        while processes_in_group(group) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_in_group(group) == {}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert stderr == f"interrupted: nothing committed, {out} left as it was\n"
    assert snapshot(out) == before


def test_ctrl_c_before_the_job_opened_its_output_is_one_line(capsys):
    """A Ctrl-C while the job still imports its modules (before its guarded run took over the
    signals) has touched nothing: one line and 130, not a traceback called a bug, also once the
    output modules are imported (they were half-imported then: the run's one line came from them)."""
    from jobs.common import run_job
    from pipeline.output import commit  # noqa: F401 - imported, as a job that got that far has

    def job() -> str:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as ended:
        run_job(job, name="encode_texts", quiet=True)
    assert ended.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted: nothing committed"]


def test_a_full_disk_says_one_line_naming_the_file(tmp_path, tiny_checkpoint):
    """ENOSPC while Beam writes a part file (injected where the Parquet sink opens its file):
    one line naming that file, exit 1, and the earlier output left as it was."""
    out = tmp_path / "out"
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": "a"}, {"text": "b"}])
    run_encode_texts(EncodeTextsJob(inputs=(str(texts),), output=str(out), model_dir=tiny_checkpoint), [], argv=[])
    before = snapshot(out)
    code = ("import errno, os, sys\n"
            "from pipeline.stderr import configure_logging\n"
            "configure_logging(False)\n"   # first, as a command-line run does before it imports Beam
            "from apache_beam.io import parquetio\n"
            "def disk_full(self, temp_path):\n"
            "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), temp_path)\n"
            "parquetio._ParquetSink.open = disk_full\n"
            "from jobs.cli import console_main\n"
            f"sys.argv = ['pairscore', 'encode-texts', '--input', {str(texts)!r}, '--model', {tiny_checkpoint!r},\n"
            f"            '--output', {str(out)!r}, '--overwrite', '--quiet']\n"
            "console_main()\n")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(rf"error: no space left on device writing {re.escape(str(out))}/_temporary-[^ ]+\.parquet: "
                        rf"nothing committed, {re.escape(str(out))} left as it was", lines[0]), lines[0]
    assert snapshot(out) == before


def test_every_table_of_every_job_says_which_job_and_model_wrote_it(runs):
    """Provenance (pipeline/provenance.py): every Parquet file, dead letters included, carries the
    pairscore version, the job and the model fingerprints of its run's summary."""
    from pipeline.provenance import read_provenance

    jobs = {"runs/example-scores": "score_pairs", "store": "encode_texts", "distill": "label_pairs",
            "candidates": "build_candidates"}
    for directory, job in jobs.items():
        summary = json.loads((runs / directory / "_SUMMARY.json").read_text())
        files = sorted((runs / directory).rglob("*.parquet"))
        assert files and any("_dead_letter" in str(p) for p in files)
        for path in files:
            stamp = read_provenance(pq.read_schema(path))
            assert stamp["pairscore.job"] == job and stamp["pairscore.version"] == summary["version"], path
            fingerprints = {m["fingerprint"] for m in json.loads(stamp["pairscore.models"]).values()}
            assert fingerprints == set(summary["model_fingerprints"].values()), path
