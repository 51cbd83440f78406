"""``score-pairs --engine spark`` on a real local Spark: the same output as the Beam engine (ids,
kept columns and their types, dead letters, counts, scores, stores), stores shared both ways, and
a task that fails once is retried without a duplicate or a missing row."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from encoders.checkpoint import build_student, save_student
from jobs import score_pairs
from jobs.score_pairs import ScorePairsJob, run
from pipeline.spark.tasks import FAIL_ONCE_ENV
from pipeline.store import read_store
from pipeline.store_codec import decode_pooled, decode_tokens


def table_of(directory: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(directory.glob("part-*.parquet"))])


def sorted_scores(output: Path) -> pa.Table:
    table = table_of(output / "scores")
    keys = [name for name in table.column_names if name not in ("score", "probs")]
    return table.sort_by([(k, "ascending") for k in keys])


def dead_letter_rows(output: Path) -> list[tuple]:
    if not (output / "_dead_letter").exists():
        return []
    return sorted((r["reason"], r["source"], r["detail"], r["row"]) for r in table_of(output / "_dead_letter").to_pylist())


def summary(output: Path) -> dict:
    return json.loads((output / "_SUMMARY.json").read_text())


def assert_same_output(beam: Path, spark: Path) -> None:
    """What a user reads of the two outputs is the same: scores within 1e-5, embeddings within 2e-3."""
    b, s = sorted_scores(beam), sorted_scores(spark)
    assert s.schema.remove_metadata() == b.schema.remove_metadata()           # kept columns keep their types
    for name in b.column_names:
        if name not in ("score", "probs"):
            assert s.column(name).to_pylist() == b.column(name).to_pylist(), name
    np.testing.assert_allclose(s.column("score").to_numpy(), b.column("score").to_numpy(), atol=1e-5)
    assert dead_letter_rows(spark) == dead_letter_rows(beam)
    assert summary(spark)["counts"] == summary(beam)["counts"]
    assert summary(spark)["dead_letters"] == summary(beam)["dead_letters"]
    for side in ("left", "right"):
        b_manifest, b_store = read_store(str(beam / "store" / side))
        s_manifest, s_store = read_store(str(spark / "store" / side))
        assert s_manifest.rows == b_manifest.rows and s_manifest.layout == b_manifest.layout
        b_store, s_store = b_store.sort_by("id"), s_store.sort_by("id")
        for name in ("id", "text_hash", "num_tokens", "truncated"):
            assert s_store.column(name).to_pylist() == b_store.column(name).to_pylist()
        layout = b_manifest.layout
        np.testing.assert_allclose(decode_tokens(s_store, layout), decode_tokens(b_store, layout), atol=2e-3)
        if layout.pooled_dim:
            np.testing.assert_allclose(decode_pooled(s_store, layout), decode_pooled(b_store, layout), atol=2e-3)
    assert (spark / "_SUCCESS").exists() and not list(spark.glob("_temporary-*"))


def both(tmp: Path, name: str, spark, **flags) -> tuple[Path, Path]:
    outputs = (tmp / f"{name}-beam", tmp / f"{name}-spark")
    run(ScorePairsJob(max_dead_letter_fraction=1.0, output=str(outputs[0]), **flags), [], argv=[])
    run(ScorePairsJob(max_dead_letter_fraction=1.0, output=str(outputs[1]), engine="spark", **flags), [], argv=[])
    return outputs


@pytest.fixture(scope="module")
def student(tmp_path_factory, tiny_student_config) -> str:
    directory = tmp_path_factory.mktemp("student-dipair")
    save_student(build_student(tiny_student_config, seed=7), directory)
    return str(directory)


@pytest.fixture(scope="module")
def text_pairs(tmp_path_factory) -> Path:
    """Pairs of texts (JSONL): unicode, repeated texts, an integer kept column, and bad rows."""
    rows = [{"left": f"wie backe ich brot {i % 9}? 面包", "right": f"résumé of answer {i % 5} ✓", "rank": i}
            for i in range(30)]
    rows += [{"left": "", "right": "x", "rank": 100}, {"left": None, "right": "y", "rank": 101},
             {"left": "fine", "right": 7, "rank": 102}]
    path = tmp_path_factory.mktemp("text-pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "{not json\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory, spark, student, text_pairs) -> tuple[Path, Path]:
    return both(tmp_path_factory.mktemp("texts"), "texts", spark, pairs=(str(text_pairs),), model_dir=student,
                keep_cols=("rank",))


def test_texts_mode_gives_what_beam_gives(text_runs):
    beam, spark = text_runs
    assert_same_output(beam, spark)
    counts = summary(spark)["counts"]
    assert (counts["pairs_read"], counts["pairs_scored"], counts["pairs_dead_lettered"]) == (34, 30, 4)
    assert summary(spark)["dead_letters"] == {"invalid_json": 1, "left_empty_text": 1, "left_null_text": 1,
                                              "right_non_string_text": 1}
    assert any("engine: spark" in note for note in summary(spark)["notes"])


def test_ids_mode_with_integer_and_unicode_ids_gives_what_beam_gives(tmp_path, spark, tiny_student_config):
    model = tmp_path / "student-li"
    save_student(build_student(tiny_student_config.replace(head="li"), seed=3), model)
    left = tmp_path / "left.jsonl"
    left.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"id": 1, "text": "how do I bake bread?"}, {"id": 2, "text": "what is a sourdough starter?"},
        {"id": 3, "text": "   "},                                            # empty text
        {"id": "q-ü", "text": "one"}, {"id": "q-ü", "text": "two"},          # conflicting id
        {"id": 5, "text": "how do I bake bread?"}]), encoding="utf-8")       # a text shared by two ids
    right = tmp_path / "right.csv"
    right.write_text("id,text\n产品-1,bread flour 1kg\n产品-2,rye sourdough starter kit\n", encoding="utf-8")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"q": 1, "p": "产品-1", "w": 0.5}, {"q": 2, "p": "产品-2", "w": 1.5}, {"q": 5, "p": "产品-2", "w": 2.0},
        {"q": 3, "p": "产品-1", "w": 0.0}, {"q": "q-ü", "p": "产品-1", "w": 1.0}, {"q": 1, "p": "产品-9", "w": 1.0},
        {"q": None, "p": "产品-1", "w": 1.0}]), encoding="utf-8")
    beam, spark_out = both(tmp_path, "ids", spark, pairs=(str(pairs),), model_dir=str(model), left_id_col="q",
                           right_id_col="p", left_texts=(str(left),), right_texts=(str(right),), keep_cols=("w",))
    assert_same_output(beam, spark_out)
    result = summary(spark_out)
    assert result["dead_letters"] == {"left_null_id": 1, "left_text_missing": 2, "right_text_missing": 1,
                                      "left_texts:conflicting_id": 2, "left_texts:empty_text": 1}
    assert result["counts"]["left_texts_encoded"] == 2        # ids 1 and 5 share one text: encoded once
    assert sorted(sorted_scores(spark_out).column("left_id").to_pylist()) == ["1", "2", "5"]
    # The bucketed join: each task loads only its buckets' store rows; the same output.
    bucketed = tmp_path / "ids-spark-bucketed"
    run(ScorePairsJob(max_dead_letter_fraction=1.0, output=str(bucketed), engine="spark", join="shuffle", pairs=(str(pairs),), model_dir=str(model),
                      left_id_col="q", right_id_col="p", left_texts=(str(left),), right_texts=(str(right),),
                      keep_cols=("w",)), [], argv=[])
    assert_same_output(beam, bucketed)


def test_the_bucketed_join_gives_what_the_broadcast_join_gives(tmp_path, spark, student, text_runs, text_pairs):
    beam, _ = text_runs
    bucketed = tmp_path / "bucketed"
    summary_ = run(ScorePairsJob(max_dead_letter_fraction=1.0, pairs=(str(text_pairs),), output=str(bucketed), model_dir=student, keep_cols=("rank",),
                                 engine="spark", join="shuffle"), [], argv=[])
    assert summary_.notes[0].startswith("join: shuffle")
    assert_same_output(beam, bucketed)


def test_the_baseline_gives_what_beam_gives(tmp_path, spark):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"left": f"how to cook pasta {i}", "right": f"pasta recipe number {i % 3}"})
                             + "\n" for i in range(8)))
    beam, spark_out = both(tmp_path, "baseline", spark, pairs=(str(pairs),))
    assert_same_output(beam, spark_out)


def test_a_store_written_by_beam_is_reused_by_spark_and_the_reverse(tmp_path, spark, student, text_runs, text_pairs):
    beam, spark_out = text_runs
    more = tmp_path / "more.jsonl"
    more.write_text(text_pairs.read_text(encoding="utf-8")
                    + json.dumps({"left": "a new question", "right": "a new answer", "rank": 7}) + "\n",
                    encoding="utf-8")
    flags = dict(pairs=(str(more),), model_dir=student, keep_cols=("rank",))
    from_beam = tmp_path / "spark-from-beam-store"
    run(ScorePairsJob(max_dead_letter_fraction=1.0, output=str(from_beam), store=str(beam / "store"), engine="spark", **flags), [], argv=[])
    reference = tmp_path / "beam-from-beam-store"
    run(ScorePairsJob(max_dead_letter_fraction=1.0, output=str(reference), store=str(beam / "store"), **flags), [], argv=[])
    assert_same_output(reference, from_beam)
    counts = summary(from_beam)["counts"]
    assert (counts["left_texts_encoded"], counts["right_texts_encoded"]) == (1, 1)
    assert counts["left_texts_reused"] == summary(beam)["counts"]["left_texts_encoded"]

    from_spark = tmp_path / "beam-from-spark-store"
    run(ScorePairsJob(max_dead_letter_fraction=1.0, output=str(from_spark), store=str(spark_out / "store"), **flags), [], argv=[])
    assert summary(from_spark)["counts"]["left_texts_reused"] == summary(spark_out)["counts"]["left_texts_encoded"]
    assert_same_output(reference, from_spark)


def test_a_task_that_fails_once_is_retried_without_duplicates_or_gaps(tmp_path, spark, student, monkeypatch):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"     # two files: two score tasks
    for index, path in enumerate((first, second)):
        path.write_text("".join(json.dumps({"left": f"left {index} {i}", "right": f"right {i % 4}"}) + "\n"
                                for i in range(12)))
    marker = tmp_path / "failed-once"
    monkeypatch.setenv(FAIL_ONCE_ENV, str(marker))
    flags = dict(pairs=(str(first), str(second)), model_dir=student)
    retried = tmp_path / "retried"
    run(ScorePairsJob(max_dead_letter_fraction=1.0, output=str(retried), engine="spark", **flags), [], argv=[])
    assert marker.exists()                              # the fault happened, after the attempt wrote its files
    monkeypatch.delenv(FAIL_ONCE_ENV)
    reference = tmp_path / "beam"
    run(ScorePairsJob(max_dead_letter_fraction=1.0, output=str(reference), **flags), [], argv=[])
    assert_same_output(reference, retried)
    assert len(list((retried / "scores").glob("part-*.parquet"))) == 2   # the failed attempt's file is gone
    assert summary(retried)["counts"]["rows_written"] == 24


@pytest.mark.parametrize("args, message", [
    (["--engine", "spark", "--runner=DirectRunner"],
     "--runner=DirectRunner is not allowed with --engine spark: Beam pipeline options go with --engine beam"),
    (["--engine", "spark", "--dedupe-pairs"], "--dedupe-pairs is not allowed with --engine spark"),
    (["--engine", "spark", "--spark-conf", "spark.driver.memory"],
     "--spark-conf 'spark.driver.memory' is not allowed: give KEY=VALUE"),
    (["--spark-master", "local[2]"], "--spark-master/--spark-conf are for --engine spark"),
])
def test_engine_flags_that_do_not_fit_are_refused_in_one_line(tmp_path, text_pairs, args, message):
    result = CliRunner().invoke(score_pairs.main, ["--pairs", str(text_pairs), "--output", str(tmp_path / "o"),
                                                   "--quiet", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["source", "reason", "_file"])
def test_a_kept_column_named_like_the_spark_steps_own_is_refused_in_one_line(tmp_path, name):
    """Scoring on Spark carries dead letters (reason, detail, source, row) and a pair's file and
    position beside the kept columns: a kept column of one of those names is refused up front,
    not mixed up with them (Beam keeps it; labeling on Spark carries kept columns by position)."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"left": "a cat", "right": "a dog", name: "x"}) + "\n", encoding="utf-8")
    result = CliRunner().invoke(score_pairs.main, ["--pairs", str(pairs), "--output", str(tmp_path / "o"), "--quiet",
                                                   "--engine", "spark", "--keep-cols", name])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"--keep-cols '{name}' is not allowed with --engine spark" in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("id_col", ["id", None])
def test_encode_texts_on_spark_writes_the_store_beam_writes(tmp_path, spark, student, id_col):
    from jobs.encode_texts import EncodeTextsJob, run as encode

    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"id": 1, "text": "bread flour"}, {"id": 1, "text": "bread flour"},          # a duplicate row
        {"id": "ü-2", "text": "rye starter"}, {"id": 3, "text": "bread flour"},      # a text shared by two ids
        {"id": 4, "text": "one"}, {"id": 4, "text": "two"},                          # conflicting id
        {"id": 5, "text": "\u200b"}, {"id": None, "text": "no id"}]) + "[1, 2]\n", encoding="utf-8")
    outputs = {}
    for engine in ("beam", "spark"):
        outputs[engine] = tmp_path / engine
        encode(EncodeTextsJob(max_dead_letter_fraction=1.0, inputs=(str(source),), output=str(outputs[engine]), id_col=id_col, side="right",
                              model_dir=student, engine=engine), [], argv=[])
    beam, spark_out = outputs["beam"], outputs["spark"]
    assert summary(spark_out)["counts"] == summary(beam)["counts"]
    assert summary(spark_out)["dead_letters"] == summary(beam)["dead_letters"]
    assert dead_letter_rows(spark_out) == dead_letter_rows(beam)
    b_manifest, b_store = read_store(str(beam))
    s_manifest, s_store = read_store(str(spark_out))
    assert s_manifest.layout == b_manifest.layout and s_manifest.rows == b_manifest.rows
    b_store, s_store = b_store.sort_by("id"), s_store.sort_by("id")
    assert s_store.column("id").to_pylist() == b_store.column("id").to_pylist()
    assert s_store.column("text_hash").to_pylist() == b_store.column("text_hash").to_pylist()
    np.testing.assert_allclose(decode_tokens(s_store, s_manifest.layout), decode_tokens(b_store, b_manifest.layout),
                               atol=2e-3)


def test_under_spark_submit_the_master_comes_from_spark_submit(monkeypatch):
    """No pyspark session is started: the flag is refused before (spark-submit owns the master)."""
    pyspark_sql = pytest.importorskip("pyspark.sql", reason="pyspark is not installed: pip install -e .[spark]")
    from pipeline.errors import UsageError
    from pipeline.spark.session import spark_session

    monkeypatch.setattr(pyspark_sql.SparkSession, "getActiveSession", staticmethod(lambda: None))
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")
    with pytest.raises(UsageError, match=r"--spark-master local\[2\] is not allowed under spark-submit"):
        spark_session("local[2]", {})


def test_the_python_api_scores_a_dataframe_lazily_and_commits_one_evaluation(tmp_path, spark, student, text_runs):
    """A DataFrame of pairs of texts -> a lazy scored frame (dead letters as a reason column) -> a
    committed output whose scores equal the job's, each input batch read exactly once."""
    from pipeline.spark.api import score_pairs_frame, write_scores

    beam, _ = text_runs
    rows = [{"left": f"wie backe ich brot {i % 9}? 面包", "right": f"résumé of answer {i % 5} ✓", "rank": i}
            for i in range(30)] + [{"left": "", "right": "x", "rank": 100},
                                   {"left": "never stored", "right": "résumé of answer 1 ✓", "rank": 103}]
    seen = tmp_path / "seen"
    seen.mkdir()

    def counted(batches):
        """Passes batches on, leaving one file per batch: how often the input was evaluated."""
        import uuid
        for batch in batches:
            (seen / uuid.uuid4().hex).write_text(str(batch.num_rows))
            yield batch

    pairs = spark.createDataFrame(rows, "left string, right string, rank long").repartition(2)
    pairs = pairs.mapInArrow(counted, pairs.schema)
    scored = score_pairs_frame(pairs, str(beam / "store"), student, keep=("rank",))
    assert not list(seen.iterdir())                                   # lazy: nothing ran yet
    letters = {r["reason"] for r in scored.frame.filter("reason is not null").collect()}
    assert letters == {"left_empty_text", "left_text_missing"}
    for stale in seen.iterdir():
        stale.unlink()

    output = tmp_path / "api-out"
    summary = write_scores(scored, str(output))
    assert sum(int(p.read_text()) for p in seen.iterdir()) == len(rows)     # one evaluation of the plan
    assert summary.counts == {"pairs_read": 32, "pairs_scored": 30, "pairs_dead_lettered": 2, "rows_written": 30}
    assert (output / "_SUCCESS").exists() and not list(output.glob("_temporary-*"))
    ours, job = sorted_scores(output), sorted_scores(beam)
    job = job.filter(pa.compute.less(job.column("rank"), 100))
    assert ours.column("rank").to_pylist() == job.column("rank").to_pylist()
    assert ours.schema.remove_metadata() == job.schema.remove_metadata()
    np.testing.assert_allclose(ours.column("score").to_numpy(), job.column("score").to_numpy(), atol=1e-5)
    assert sorted(r[0] for r in dead_letter_rows(output)) == ["left_empty_text", "left_text_missing"]


@pytest.mark.parametrize("head", ["dipair", "dipair-ffnn", "li", "de-ffnn", "de-cos"])
def test_every_head_gives_beams_scores_on_spark(tmp_path, spark, tiny_student_config, text_pairs, head):
    """Each head on a tiny random student: Spark scores against the store Beam wrote (every text
    reused) as Beam scores, within 1e-5."""
    model = tmp_path / f"student-{head}"
    save_student(build_student(tiny_student_config.replace(head=head), seed=11), model)
    flags = dict(pairs=(str(text_pairs),), model_dir=str(model), keep_cols=("rank",))
    beam = tmp_path / "beam"
    run(ScorePairsJob(max_dead_letter_fraction=1.0, output=str(beam), **flags), [], argv=[])
    on_spark = tmp_path / "spark"
    run(ScorePairsJob(max_dead_letter_fraction=1.0, output=str(on_spark), store=str(beam / "store"), engine="spark",
                      **flags), [], argv=[])
    b, s = sorted_scores(beam), sorted_scores(on_spark)
    assert s.column("left_id").to_pylist() == b.column("left_id").to_pylist() and s.num_rows == 30
    np.testing.assert_allclose(s.column("score").to_numpy(), b.column("score").to_numpy(), atol=1e-5)
    assert summary(on_spark)["counts"]["left_texts_reused"] == summary(beam)["counts"]["left_texts_encoded"]


def test_text_tables_with_their_own_columns_per_side_on_spark(tmp_path, spark, student):
    """--left-texts-id-col/--right-texts-text-col ...: each side's table read with its own columns."""
    left = tmp_path / "queries.jsonl"
    left.write_text("".join(json.dumps(r) + "\n" for r in [
        {"query_id": "q1", "query": "how do I bake bread?"}, {"query_id": "q2", "query": ""}]))
    right = tmp_path / "products.csv"
    right.write_text("sku,title\ns1,bread flour 1kg\ns2,rye sourdough starter kit\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"q": q, "p": p}) + "\n" for q, p in
                             [("q1", "s1"), ("q1", "s2"), ("q2", "s1")]))
    beam, on_spark = both(tmp_path, "per-side", spark, pairs=(str(pairs),), model_dir=student, left_id_col="q",
                          right_id_col="p", left_texts=(str(left),), right_texts=(str(right),),
                          left_texts_id_col="query_id", left_texts_text_col="query", right_texts_id_col="sku",
                          right_texts_text_col="title")
    assert_same_output(beam, on_spark)
    assert summary(on_spark)["dead_letters"] == {"left_text_missing": 1, "left_texts:empty_text": 1}
    assert sorted_scores(on_spark).column("right_id").to_pylist() == ["s1", "s2"]


def test_a_tiny_arrow_byte_budget_gives_the_same_scores(tmp_path, spark, student, text_runs, text_pairs):
    """spark.sql.execution.arrow.maxBytesPerBatch of 300 bytes: every batch Spark hands a task and
    every batch pairscore builds, scores and carries (the bucketed join's store columns) holds a
    row or two, and the output is the same."""
    from pipeline.spark.batches import BYTES_CONF

    beam, _ = text_runs
    before = spark.conf.get(BYTES_CONF, None)
    spark.conf.set(BYTES_CONF, "300")
    try:
        for join in ("broadcast", "shuffle"):
            output = tmp_path / join
            run(ScorePairsJob(max_dead_letter_fraction=1.0, pairs=(str(text_pairs),), output=str(output),
                              model_dir=student, keep_cols=("rank",), engine="spark", join=join), [], argv=[])
            assert_same_output(beam, output)
    finally:
        spark.conf.set(BYTES_CONF, before) if before is not None else spark.conf.unset(BYTES_CONF)


def test_byte_slices_cut_by_bytes_and_rows_in_order():
    from pipeline.spark.batches import byte_slices, parse_bytes, row_bytes, scored_rows
    from pipeline.store import StoreLayout

    table = pa.table({"id": [f"id-{i}" for i in range(10)], "tokens": pa.array([b"x" * 96] * 10, pa.binary(96)),
                      "text": ["short"] * 5 + ["long " * 100] * 5})
    sizes = row_bytes(table)
    assert sizes[0] == 8 + 96 + 9 and sizes[9] == 8 + 96 + 504
    pieces = list(byte_slices(table, max_rows=4, max_bytes=600))
    assert pa.concat_tables(pieces).equals(table)                       # nothing lost, reordered or repeated
    assert [p.num_rows for p in pieces] == [4, 1, 1, 1, 1, 1, 1]          # rows cap first, then bytes
    assert all(row_bytes(p).sum() <= 600 or p.num_rows == 1 for p in pieces)
    assert [p.num_rows for p in byte_slices(table, 100, 1)] == [1] * 10  # a row over budget goes alone
    layouts = {"left": StoreLayout("left", 4, 8, "float16", None), "right": StoreLayout("right", 6, 8, "float16", 32)}
    assert scored_rows(layouts, 8192, 4 * (4 * 8 + 6 * 8 + 32) * 10) == 10
    assert (parse_bytes("64m"), parse_bytes("300"), parse_bytes("2k")) == (64 << 20, 300, 2048)
