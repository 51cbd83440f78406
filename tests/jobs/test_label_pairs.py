"""End to end: ``jobs.label_pairs`` on the DirectRunner, bad inputs with exact counts, soft labels,
--previous, k classes, kept columns, real QQP pairs and mined candidates."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from encoders.teacher import TeacherTask, build_teacher, load_teacher, save_teacher
from jobs import label_pairs
from jobs.label_pairs import LabelPairsJob, run
from pipeline.text_ids import text_id


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def output_rows(output: Path) -> list[dict]:
    return pq.read_table(sorted(output.glob("part-*.parquet"))).to_pylist()


def dead_letters(output: Path) -> list[dict]:
    return pq.read_table(output / "_dead_letter").to_pylist()


def summary_of(output: Path) -> dict:
    return json.loads((output / "_SUMMARY.json").read_text())


PAIRS = [{"left": f"question number {i} about cooking", "right": f"answer {i}: boil it for {i} minutes",
          "pid": i} for i in range(12)]


@pytest.fixture(scope="module")
def bad_input_run(tmp_path_factory, tiny_teacher_dir):
    tmp = tmp_path_factory.mktemp("label-bad")
    source = write_jsonl(tmp / "pairs.jsonl", PAIRS + [
        {"left": "", "right": "x", "pid": 100},                    # left_empty_text
        {"left": "x", "right": " \t", "pid": 101},                 # right_empty_text
        {"left": "x", "right": None, "pid": 102},                  # right_null_text
        {"right": "x", "pid": 103},                                # left_null_text (absent)
        {"left": ["a"], "right": "x", "pid": 104},                 # left_non_string_text
        b'{"left": "x", "right": "caf\xe9"}',                      # invalid_utf8
        b'[1, 2]',                                                 # not_a_json_object
        b'{"left": ',                                              # invalid_json
        {"left": "long " * 100, "right": "long " * 100, "pid": 105},  # truncated, labeled
        PAIRS[0],                                                  # a repeated pair is labeled again
    ])
    output = tmp / "distill"
    summary = run(LabelPairsJob(max_dead_letter_fraction=1.0,
                                pairs=(str(source),), teacher=tiny_teacher_dir, output=str(output),
                                keep_cols=("pid",), temperature=2.0, batch_size=5), [], argv=["test"])
    return output, summary


def test_bad_input_counts_reconcile_exactly(bad_input_run):
    output, _ = bad_input_run
    stored = summary_of(output)
    assert stored["counts"] == {"pairs_read": 22, "pairs_labeled": 14, "pairs_skipped_labeled": 0,
                                "pairs_dead_lettered": 8, "pairs_truncated": 1, "previous_rows_copied": 0,
                                "output_rows": 14}
    assert stored["dead_letters"] == {"invalid_json": 1, "invalid_utf8": 1, "left_empty_text": 1,
                                      "left_non_string_text": 1, "left_null_text": 1, "not_a_json_object": 1,
                                      "right_empty_text": 1, "right_null_text": 1}
    assert "pairs read 22 = labeled 14 + already labeled 0 + dead-lettered 8" in stored["reconciliation"]
    letters = dead_letters(output)
    assert len(letters) == 8 and all(letter["detail"] for letter in letters)
    by_pid = {json.loads(l["row"]).get("pid"): l for l in letters}
    assert by_pid[102]["reason"] == "right_null_text" and "right side" in by_pid[102]["detail"]


def test_soft_labels_are_sigmoid_of_the_written_logits_at_temperature(bad_input_run):
    output, _ = bad_input_run
    table = pq.read_table(sorted(output.glob("part-*.parquet")))
    assert table.schema.field("logit").type == pa.float32() and table.schema.field("soft_label").type == pa.float32()
    z = table.column("logit").to_numpy().astype(np.float64)
    expected = 1.0 / (1.0 + np.exp(-z / 2.0))
    np.testing.assert_allclose(table.column("soft_label").to_numpy(), expected, rtol=1e-6)
    assert np.ptp(z) > 0  # not a constant: the check means something


def test_logits_are_the_teachers_own(bad_input_run, tiny_teacher_dir):
    output, _ = bad_input_run
    rows = output_rows(output)
    teacher = load_teacher(tiny_teacher_dir)
    reference = teacher.predict_texts([r["left"] for r in rows], [r["right"] for r in rows], batch_size=1)
    np.testing.assert_allclose([r["logit"] for r in rows], reference[:, 0], atol=1e-5)
    by_pid = {}
    for r in rows:
        by_pid.setdefault(r["pid"], []).append(r)
    # JSONL ints kept with --keep-cols stay ints (int64), as kept_fields decides (issue 12).
    assert sorted(by_pid) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 105]
    assert len(by_pid[0]) == 2 and by_pid[105][0]["truncated"] and not by_pid[1][0]["truncated"]
    first = by_pid[3][0]
    assert (first["left_id"], first["right_id"]) == (text_id(PAIRS[3]["left"]), text_id(PAIRS[3]["right"]))


def test_manifest_and_summary_record_the_teacher_fingerprint(bad_input_run, tiny_teacher_dir):
    output, summary = bad_input_run
    fingerprint = load_teacher(tiny_teacher_dir).fingerprint
    manifest = json.loads((output / "_MANIFEST.json").read_text())
    assert manifest["teacher_fingerprint"] == fingerprint == summary.model_fingerprints["teacher"]
    assert manifest["temperature"] == 2.0 and manifest["rows"] == 14 and manifest["kept_columns"] == ["pid"]
    assert manifest["columns"]["pid"] == "int64"  # JSONL ints keep their type (issue 12)
    meta = pq.ParquetFile(sorted(output.glob("part-*.parquet"))[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory, tiny_teacher_dir):
    """Night one labels PAIRS[:8]; night two gets PAIRS[4:] and --previous night one."""
    tmp = tmp_path_factory.mktemp("previous")
    night_one = tmp / "night-1"
    run(LabelPairsJob(pairs=(str(write_jsonl(tmp / "one.jsonl", PAIRS[:8])),), teacher=tiny_teacher_dir,
                      output=str(night_one)), [], argv=[])
    night_two = tmp / "night-2"
    source = write_jsonl(tmp / "two.jsonl", PAIRS[4:] + [{"left": "", "right": "x", "pid": 1}])
    summary = run(LabelPairsJob(pairs=(str(source),), teacher=tiny_teacher_dir, output=str(night_two),
                                previous=str(night_one), temperature=3.0, max_dead_letter_fraction=1.0), [], argv=[])
    return night_one, night_two, summary


def test_previous_pairs_are_skipped_and_copied_through(previous_run):
    night_one, night_two, summary = previous_run
    assert summary.counts == {"pairs_read": 9, "pairs_labeled": 4, "pairs_skipped_labeled": 4,
                              "pairs_dead_lettered": 1, "pairs_truncated": 0, "previous_rows_copied": 8,
                              "output_rows": 12}
    rows = output_rows(night_two)
    assert sorted(r["left"] for r in rows) == sorted(p["left"] for p in PAIRS)  # the complete set, once each
    old = {r["left"]: r for r in output_rows(night_one)}
    for row in rows:
        if row["left"] in old:  # copied: same logit, soft label recomputed at the new temperature
            assert row["logit"] == old[row["left"]]["logit"]
        assert row["soft_label"] == pytest.approx(1 / (1 + np.exp(-row["logit"] / 3.0)), rel=1e-6)
    assert any("copied through" in note for note in summary.notes)


def test_previous_from_another_teacher_or_with_other_columns_is_refused(previous_run, tmp_path, tiny_encoder_dir):
    night_one, _, _ = previous_run
    other = tmp_path / "other-teacher"
    save_teacher(build_teacher(tiny_encoder_dir, TeacherTask("binary", max_length=32), seed=9), other)
    source = write_jsonl(tmp_path / "p.jsonl", PAIRS[:2])
    with pytest.raises(ValueError, match="labeled by another teacher"):
        run(LabelPairsJob(pairs=(str(source),), teacher=str(other), output=str(tmp_path / "o1"),
                          previous=str(night_one)), [], argv=[])
    teacher_dir = json.loads((night_one / "_MANIFEST.json").read_text())["teacher"]
    with pytest.raises(ValueError, match="same --keep-cols"):
        run(LabelPairsJob(pairs=(str(source),), teacher=teacher_dir, output=str(tmp_path / "o2"),
                          previous=str(night_one), keep_cols=("pid",)), [], argv=[])
    with pytest.raises(ValueError, match="is also --output"):
        run(LabelPairsJob(pairs=(str(source),), teacher=teacher_dir, output=str(night_one),
                          previous=str(night_one), overwrite=True), [], argv=[])
    with pytest.raises(ValueError, match="not a label_pairs output"):
        run(LabelPairsJob(pairs=(str(source),), teacher=teacher_dir, output=str(tmp_path / "o3"),
                          previous=str(tmp_path)), [], argv=[])
    assert (night_one / "_SUMMARY.json").exists()


def test_max_length_override_truncates_and_changes_the_fingerprint(tmp_path, tiny_teacher_dir):
    output = tmp_path / "short"
    summary = run(LabelPairsJob(pairs=(str(write_jsonl(tmp_path / "p.jsonl", PAIRS)),), teacher=tiny_teacher_dir,
                                output=str(output), max_length=8), [], argv=[])
    assert summary.counts["pairs_truncated"] == 12
    assert summary.model_fingerprints["teacher"] != load_teacher(tiny_teacher_dir).fingerprint
    assert json.loads((output / "_MANIFEST.json").read_text())["task"]["max_length"] == 8


def test_k_class_teacher_writes_logits_and_softmax(tmp_path, tiny_encoder_dir):
    teacher = tmp_path / "three-classes"
    save_teacher(build_teacher(tiny_encoder_dir, TeacherTask("classes", num_classes=3, max_length=32)), teacher)
    output = tmp_path / "out"
    run(LabelPairsJob(pairs=(str(write_jsonl(tmp_path / "p.jsonl", PAIRS)),), teacher=str(teacher),
                      output=str(output), temperature=0.5), [], argv=[])
    table = pq.read_table(sorted(output.glob("part-*.parquet")))
    assert table.schema.field("logits").type == pa.list_(pa.float32()) and "logit" not in table.column_names
    logits = np.array(table.column("logits").to_pylist(), dtype=np.float64)
    probs = np.array(table.column("soft_labels").to_pylist())
    expected = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum(axis=1, keepdims=True)
    assert logits.shape == (12, 3)
    np.testing.assert_allclose(probs, expected, rtol=1e-5)


def test_given_ids_and_typed_kept_columns_from_parquet(tmp_path, tiny_teacher_dir):
    table = pa.table({"q": ["how to bake bread", "best pizza dough", "x", "y"],
                      "d": ["bread baking guide", "dough recipe", "z", "w"],
                      "qid": ["q1", "q2", None, "q4"], "did": ["d1", "d2", "d3", "d4"],
                      "grade": pa.array([3, 1, 2, 0], pa.int16()), "weight": [0.5, 1.0, 2.0, 1.5]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    output = tmp_path / "out"
    summary = run(LabelPairsJob(max_dead_letter_fraction=1.0,
                                pairs=(str(tmp_path / "pairs.parquet"),), teacher=tiny_teacher_dir,
                                output=str(output), left_col="q", right_col="d", left_id_col="qid",
                                right_id_col="did", keep_cols=("grade", "weight")), [], argv=[])
    assert summary.counts["pairs_labeled"] == 3 and summary.dead_letters == {"left_null_id": 1}
    written = pq.read_table(sorted(output.glob("part-*.parquet")))
    assert written.schema.field("grade").type == pa.int16() and written.schema.field("weight").type == pa.float64()
    rows = {r["left_id"]: r for r in written.to_pylist()}
    assert rows["q1"]["right_id"] == "d1" and rows["q1"]["left"] == "how to bake bread" and rows["q4"]["grade"] == 0


@pytest.mark.parametrize("beam_args", [
    [],
    ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
], ids=["in-process", "multi-process"])
def test_real_qqp_pairs(tmp_path, shared_data, tiny_teacher_dir, beam_args):
    lines = (shared_data / "qqp" / "dev.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    source = tmp_path / "qqp.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "out"
    summary = run(LabelPairsJob(pairs=(str(source),), teacher=tiny_teacher_dir, output=str(output),
                                keep_cols=("id", "label"), batch_size=16), beam_args, argv=[])
    assert summary.counts["pairs_read"] == 60 == summary.counts["pairs_labeled"] == summary.counts["output_rows"]
    rows = output_rows(output)
    assert sorted(r["id"] for r in rows) == sorted(json.loads(l)["id"] for l in lines)
    teacher = load_teacher(tiny_teacher_dir)
    reference = teacher.predict_texts([r["left"] for r in rows], [r["right"] for r in rows])
    np.testing.assert_allclose([r["logit"] for r in rows], reference[:, 0], atol=1e-5)


def test_mined_candidates_label_with_their_types(tmp_path, shared_data, tiny_encoder_dir, tiny_teacher_dir):
    """build_candidates -> label_pairs: the mined set is ready to label, Parquet types kept."""
    from jobs.build_candidates import BuildCandidatesJob
    from jobs.build_candidates import run as build

    questions = [json.loads(l)["left"] for l in (shared_data / "qqp" / "dev.jsonl").read_text().splitlines()[:30]]
    texts = write_jsonl(tmp_path / "q.jsonl", [{"text": q} for q in questions])
    candidates = tmp_path / "candidates"
    build(BuildCandidatesJob(left_texts=(str(texts),), right_texts=(str(texts),), output=str(candidates), top_k=2,
                             random_per_left=1, encoder=tiny_encoder_dir, progress=False), argv=[])
    output = tmp_path / "distill"
    summary = run(LabelPairsJob(pairs=(str(candidates),), teacher=tiny_teacher_dir, output=str(output),
                                keep_cols=("source", "similarity", "rank"), left_id_col="left_id",
                                right_id_col="right_id"), [], argv=[])
    assert summary.counts["pairs_labeled"] == 30 * 3 and not summary.dead_letters
    table = pq.read_table(sorted(output.glob("part-*.parquet")))
    assert table.schema.field("similarity").type == pa.float32() and table.schema.field("rank").type == pa.int32()
    assert set(table.column("source").to_pylist()) == {"knn", "random"}


def test_cli_errors_exit_2(tmp_path, tiny_encoder_dir, tiny_teacher_dir):
    source = write_jsonl(tmp_path / "p.jsonl", PAIRS[:2])
    runner = CliRunner()
    base = ["--pairs", str(source), "--output", str(tmp_path / "o")]
    cases = [
        (["--teacher", tiny_encoder_dir], "not a trained cross-encoder"),
        (["--teacher", tiny_teacher_dir, "--temperature", "0"], "--temperature 0.0 is not allowed"),
        (["--teacher", tiny_teacher_dir, "--keep-cols", "logit"], "would overwrite output columns"),
        (["--teacher", tiny_teacher_dir, "--keep-cols", "nope"], "no column 'nope'"),
        (["--teacher", tiny_teacher_dir, "--left-id-col", "pid"], "give both --left-id-col and --right-id-col"),
        (["--teacher", tiny_teacher_dir, "--no_such_flag=1"], "--no_such_flag=1"),
        (["--teacher", tiny_teacher_dir, "--max-length", "300"], "position embeddings stop at 256"),
    ]
    for extra, message in cases:
        result = runner.invoke(label_pairs.main, base + extra)
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
    assert not (tmp_path / "o" / "_SUMMARY.json").exists()


def test_help_explains_every_flag():
    result = CliRunner().invoke(label_pairs.main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--pairs", "--teacher", "--output", "--temperature", "--previous", "--left-col", "--right-col",
                 "--left-id-col", "--right-id-col", "--keep-cols", "--device", "--batch-size", "--max-length",
                 "--overwrite", "--format", "--runner"):
        assert flag in result.output


def test_pairs_labeled_moves_while_a_slow_teacher_is_still_labeling(tmp_path, tiny_teacher_dir, monkeypatch):
    """The count moves batch by batch, against the total the Parquet footer gives: a stand-in
    teacher holds its second batch until the test has seen the count move, so the count moved
    before the labeling ended, whatever the machine's speed."""
    import io
    import threading

    from pipeline import progress
    from pipeline.beam import label

    gate = threading.Event()
    real_load = label.load_labeling_teacher

    def slow_teacher(settings):
        teacher = real_load(settings)
        forward, calls = teacher.forward, [0]

        def held(*args, **kwargs):
            calls[0] += 1
            if calls[0] > 1:
                gate.wait(timeout=600)          # released by the test (the timeout: a hang guard only)
            return forward(*args, **kwargs)
        teacher.forward = held
        return teacher

    monkeypatch.setattr(label, "load_labeling_teacher", slow_teacher)
    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"left": [p["left"] for p in PAIRS], "right": [p["right"] for p in PAIRS]}), source)
    reporter = progress.start("label_pairs", quiet=False, started=0.0, stream=io.StringIO())
    done: dict = {}
    job = LabelPairsJob(pairs=(str(source),), teacher=tiny_teacher_dir, output=str(tmp_path / "o"), batch_size=4)
    worker = threading.Thread(target=lambda: done.update(summary=run(job, [], argv=[])))
    worker.start()
    try:
        seen = 0
        while not seen and worker.is_alive():
            seen = reporter.counts().get("pairs labeled", 0)
            gate.wait(0.05)
        line = reporter.line()
    finally:
        gate.set()
        worker.join()
        progress.stop()
    assert seen == 4, "the count did not move while the teacher was still labeling"
    assert f"pairs labeled 4 of {len(PAIRS)} (33%" in line
    assert done["summary"].counts["pairs_labeled"] == len(PAIRS)
