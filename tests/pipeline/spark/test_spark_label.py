"""``label-pairs --engine spark`` on a real local Spark: the distillation set, dead letters (same
reasons, sources and rows), reconciled counts and manifest the Beam engine writes, with and
without ``--previous``; Parquet slices read as Beam reads whole files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.label_pairs import LabelPairsJob, run
from pipeline.readers import expand_inputs, read_rows, read_slices
from pipeline.spark.label import slice_rows

LABEL_COLUMNS = ("logit", "soft_label", "logits", "soft_labels")


def rows_of(output: Path) -> pa.Table:
    table = pa.concat_tables([pq.read_table(p) for p in sorted(output.glob("part-*.parquet"))])
    keys = [name for name in table.column_names if name not in LABEL_COLUMNS]
    return table.sort_by([(k, "ascending") for k in keys])


def letters_of(output: Path) -> list[tuple]:
    table = pq.read_table(output / "_dead_letter")
    return sorted((r["reason"], r["source"], r["detail"], r["row"]) for r in table.to_pylist())


def json_of(output: Path, name: str) -> dict:
    return json.loads((output / name).read_text())


def assert_same_set(beam: Path, spark: Path) -> None:
    """What a user (and train-student) reads of the two sets is the same: labels within 1e-5."""
    b, s = rows_of(beam), rows_of(spark)
    assert s.schema.remove_metadata() == b.schema.remove_metadata()        # kept columns keep their types
    for name in b.column_names:
        if name in LABEL_COLUMNS:
            np.testing.assert_allclose(np.array(s.column(name).to_pylist(), np.float32),
                                       np.array(b.column(name).to_pylist(), np.float32), atol=1e-5)
        else:
            assert s.column(name).to_pylist() == b.column(name).to_pylist(), name
    assert letters_of(spark) == letters_of(beam)
    for key in ("counts", "dead_letters", "reconciliation"):
        assert json_of(spark, "_SUMMARY.json")[key] == json_of(beam, "_SUMMARY.json")[key], key
    b_manifest, s_manifest = json_of(beam, "_MANIFEST.json"), json_of(spark, "_MANIFEST.json")
    s_manifest["notes"] = [note.replace(str(spark), str(beam)) for note in s_manifest["notes"]]   # names --output
    assert {k: v for k, v in s_manifest.items() if k != "files"} == {k: v for k, v in b_manifest.items() if k != "files"}
    assert sorted(s_manifest["files"]) == sorted(p.name for p in spark.glob("part-*.parquet"))
    footer = pq.ParquetFile(next(spark.glob("part-*.parquet"))).schema_arrow.metadata
    assert footer[b"pairscore.job"] == b"label_pairs"                   # provenance in every part's footer
    assert (spark / "_SUCCESS").exists() and not list(spark.parent.glob(f"{spark.name}*_temporary*"))


def both(tmp: Path, name: str, **flags) -> tuple[Path, Path]:
    outputs = (tmp / f"{name}-beam", tmp / f"{name}-spark")
    run(LabelPairsJob(max_dead_letter_fraction=1.0, output=str(outputs[0]), **flags), [], argv=[])
    run(LabelPairsJob(max_dead_letter_fraction=1.0, output=str(outputs[1]), engine="spark", **flags), [], argv=[])
    return outputs


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """Pairs of texts (JSONL): unicode, a repeated pair, one pair past the teacher's max length, and
    a bad row of every kind the labeling refuses."""
    rows = [json.dumps({"left": f"wie backe ich brot {i}? 面包", "right": f"résumé of answer {i % 5} ✓", "pid": i},
                       ensure_ascii=False).encode() for i in range(14)]
    rows += [json.dumps(r).encode() for r in (
        {"left": "", "right": "x", "pid": 100}, {"left": "x", "right": None, "pid": 101},
        {"right": "x", "pid": 102}, {"left": ["a"], "right": "x", "pid": 103},
        {"left": "long " * 100, "right": "long " * 100, "pid": 104},
        {"left": "wie backe ich brot 0? 面包", "right": "résumé of answer 0 ✓", "pid": 0})]
    rows += [b'{"left": "x", "right": "caf\xe9"}', b"[1, 2]", b'{"left": ']
    path = tmp_path_factory.mktemp("label-pairs") / "pairs.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


@pytest.fixture(scope="module")
def label_runs(tmp_path_factory, spark, tiny_teacher_dir, pairs_file) -> tuple[Path, Path]:
    return both(tmp_path_factory.mktemp("label"), "label", pairs=(str(pairs_file),), teacher=tiny_teacher_dir,
                keep_cols=("pid",), temperature=2.0, batch_size=4)


def test_label_pairs_on_spark_writes_what_beam_writes(label_runs):
    beam, spark = label_runs
    assert_same_set(beam, spark)
    stored = json_of(spark, "_SUMMARY.json")
    assert stored["counts"] == {"pairs_read": 23, "pairs_labeled": 16, "pairs_skipped_labeled": 0,
                                "pairs_dead_lettered": 7, "pairs_truncated": 1, "previous_rows_copied": 0,
                                "output_rows": 16}
    assert stored["dead_letters"] == {"invalid_json": 1, "invalid_utf8": 1, "left_empty_text": 1,
                                      "left_non_string_text": 1, "left_null_text": 1, "not_a_json_object": 1,
                                      "right_null_text": 1}


def test_a_labeling_task_that_fails_once_is_retried_without_duplicates_or_gaps(tmp_path, spark, tiny_teacher_dir,
                                                                             label_runs, pairs_file, monkeypatch):
    from pipeline.spark.tasks import FAIL_ONCE_ENV

    beam, _ = label_runs
    marker = tmp_path / "failed-once"
    monkeypatch.setenv(FAIL_ONCE_ENV, str(marker))
    retried = tmp_path / "retried"
    run(LabelPairsJob(max_dead_letter_fraction=1.0, output=str(retried), engine="spark", pairs=(str(pairs_file),),
                      teacher=tiny_teacher_dir, keep_cols=("pid",), temperature=2.0, batch_size=4), [], argv=[])
    assert marker.exists()                      # the fault happened, after the attempt wrote its files
    assert_same_set(beam, retried)              # the failed attempt's part files were not committed


def test_previous_pairs_are_skipped_and_copied_on_spark_as_on_beam(tmp_path, spark, tiny_teacher_dir, label_runs,
                                                                  pairs_file):
    """The same --previous set (Beam's) on both engines: the same skipped pairs, copied rows (soft
    labels at the new temperature) and newly labeled pairs."""
    previous, _ = label_runs
    more = tmp_path / "more.jsonl"
    more.write_bytes(pairs_file.read_bytes() + b''.join(
        json.dumps({"left": f"a new question {i}", "right": "a new answer", "pid": 200 + i}).encode() + b"\n"
        for i in range(3)))
    beam, spark_out = both(tmp_path, "previous", pairs=(str(more),), teacher=tiny_teacher_dir, keep_cols=("pid",),
                           temperature=1.0, previous=str(previous), batch_size=4)
    assert_same_set(beam, spark_out)
    counts = json_of(spark_out, "_SUMMARY.json")["counts"]
    assert (counts["pairs_labeled"], counts["pairs_skipped_labeled"], counts["previous_rows_copied"]) == (3, 16, 16)


def test_typed_parquet_kept_columns_and_given_ids_on_spark(tmp_path, spark, tiny_teacher_dir):
    """Kept columns keep their Parquet types, one of them named like a column of Spark's own steps."""
    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"qid": pa.array([7, 8, 9, 10], pa.int64()), "pid": ["a", "b", "c", None],
                             "q": ["first question", "second question", "third", "fourth"],
                             "p": ["answer one", "answer two", "", "answer four"],
                             "score": pa.array([0.5, 1.5, 2.5, 3.5], pa.float64()),
                             "source": ["web", "app", "web", "app"]}), source, row_group_size=2)
    beam, spark_out = both(tmp_path, "typed", pairs=(str(source),), teacher=tiny_teacher_dir, left_col="q",
                           right_col="p", left_id_col="qid", right_id_col="pid", keep_cols=("score", "source"))
    assert_same_set(beam, spark_out)
    assert json_of(spark_out, "_SUMMARY.json")["dead_letters"] == {"right_empty_text": 1, "right_null_id": 1}


def test_parquet_slices_give_the_rows_and_sources_of_the_whole_file(tmp_path):
    """Spark's tasks read runs of row groups; together they are exactly what Beam reads from the file."""
    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"left": [f"l{i}" for i in range(7)], "right": [f"r{i}" for i in range(7)],
                             "n": list(range(7))}), source, row_group_size=2)
    file = expand_inputs([str(source)])[0]
    slices = read_slices(file, target_rows=2)
    assert [piece.first_row for piece in slices] == [0, 2, 4, 6]
    assert [row for piece in slices for row in slice_rows(piece)] == list(read_rows(file))


def test_beam_flags_and_spark_flags_are_refused_with_the_other_engine(tmp_path, pairs_file, tiny_teacher_dir):
    from click.testing import CliRunner

    from jobs import label_pairs

    base = ["--pairs", str(pairs_file), "--teacher", tiny_teacher_dir, "--output", str(tmp_path / "o")]
    result = CliRunner().invoke(label_pairs.main, base + ["--engine", "spark", "--runner=DirectRunner"])
    assert result.exit_code == 2 and "--runner=DirectRunner is not allowed with --engine spark" in result.output
    result = CliRunner().invoke(label_pairs.main, base + ["--spark-master", "local[2]"])
    assert result.exit_code == 2 and "--spark-master/--spark-conf are for --engine spark" in result.output
    assert not (tmp_path / "o").exists()
