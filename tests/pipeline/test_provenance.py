"""Provenance: every Parquet table a job writes says which pairscore, job, model and run produced it
and what its score means; ``_SUMMARY.json`` adds start/end times, the version and absolute paths;
``pairscore --version`` prints the version."""
from __future__ import annotations

import json
import os
from datetime import datetime
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from jobs.cli import pairscore
from pipeline import provenance
from pipeline.provenance import COSINE_SCORE, PROBABILITY_SCORE, read_provenance, stamped, table_metadata
from pipeline.summary import RunSummary, absolute_paths


def test_version_comes_from_the_package_metadata_and_the_command_prints_it():
    result = CliRunner().invoke(pairscore, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"pairscore {metadata.version('pairscore')}\n" == f"pairscore {provenance.version()}\n"


def test_table_metadata_names_version_job_models_score_and_time(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    link = tmp_path / "link"
    link.symlink_to(model)
    values = table_metadata("score_pairs", {"model": ("abc123", str(link)), "other": ("def", "gs://b/m")},
                            score=PROBABILITY_SCORE, created_at="2026-12-05T09:00:00.000000Z")
    assert values == {
        "pairscore.version": provenance.version(), "pairscore.job": "score_pairs",
        "pairscore.models": json.dumps({"model": {"fingerprint": "abc123", "path": str(model.resolve())},
                                        "other": {"fingerprint": "def", "path": "gs://b/m"}}, sort_keys=True),
        "pairscore.score": PROBABILITY_SCORE, "pairscore.created_at": "2026-12-05T09:00:00.000000Z"}
    assert "pairscore.score" not in table_metadata("encode_texts")
    created = table_metadata("encode_texts")["pairscore.created_at"]
    assert datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_stamped_schema_is_written_to_the_footer_and_still_equals_the_plain_one(tmp_path):
    schema = pa.schema([pa.field("x", pa.int32())], metadata={"other": "kept"})
    marked = stamped(schema, table_metadata("encode_texts"))
    assert marked.equals(schema) and not marked.equals(schema, check_metadata=True)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": pa.array([1], pa.int32())}, schema=marked), path)
    written = pq.read_schema(path)
    assert read_provenance(written)["pairscore.job"] == "encode_texts" and written.metadata[b"other"] == b"kept"
    assert stamped(schema, None) is schema


def test_summary_paths_are_absolute_and_times_bracket_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    arguments = ["--pairs", "in/p.jsonl", "--model=model", "--store", "gs://bucket/store", "--output", "out",
                 "--quiet", "--encoder", "sentence-transformers/all-MiniLM-L6-v2"]
    assert absolute_paths(arguments, "out") == {
        "--pairs": [str(tmp_path / "in/p.jsonl")], "--model": [str(tmp_path / "model")],
        "--store": ["gs://bucket/store"], "--encoder": ["sentence-transformers/all-MiniLM-L6-v2"],
        "--output": [str(tmp_path / "out")]}
    assert absolute_paths(["--model", "best=model", "--model", "baseline"], "o")["--model"] == \
        [f"best={tmp_path / 'model'}", "baseline"]
    summary = RunSummary(job="t", arguments=arguments, output="out", model_fingerprints={}, wall_seconds=90.0,
                         counts={}, dead_letters={}, reconciliation="")
    stored = json.loads(summary.to_json())
    started, ended = (datetime.strptime(stored[k], "%Y-%m-%dT%H:%M:%S.%fZ") for k in ("started_at", "ended_at"))
    assert (ended - started).total_seconds() == 90.0
    assert stored["version"] == provenance.version() and stored["paths"]["--output"] == [str(tmp_path / "out")]


def _tables(output: Path) -> list[Path]:
    return sorted(p for p in output.rglob("*.parquet"))


def test_every_table_of_a_score_pairs_run_carries_its_provenance(tmp_path, tiny_checkpoint, monkeypatch):
    from jobs.score_pairs import ScorePairsJob, run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.jsonl").write_text(
        "".join(json.dumps({"left": f"question {i}", "right": f"answer {i % 3}"}) + "\n" for i in range(6))
        + json.dumps({"left": " ", "right": "x"}) + "\n")                     # one dead letter
    summary = run(ScorePairsJob(pairs=("pairs.jsonl",), output="out", model_dir=tiny_checkpoint,
                                max_dead_letter_fraction=1.0),     # 1 of 7 dead, on purpose: past the 0.1 limit
                  [], argv=["--pairs", "pairs.jsonl", "--model", tiny_checkpoint, "--output", "out",
                            "--max-dead-letter-fraction", "1"])
    tables = _tables(tmp_path / "out")
    # the scores table, both stores, the dead letters: every one of them stamped, the same way
    assert {p.relative_to(tmp_path / "out").parts[0] for p in tables} == {"scores", "store", "_dead_letter"}
    stamps = [read_provenance(pq.read_schema(p)) for p in tables]
    assert all(s == stamps[0] for s in stamps), stamps
    stamp = stamps[0]
    assert stamp["pairscore.job"] == "score_pairs" and stamp["pairscore.version"] == provenance.version()
    assert json.loads(stamp["pairscore.models"]) == {
        "model": {"fingerprint": summary.model_fingerprints["model"], "path": os.path.realpath(tiny_checkpoint)}}
    assert stamp["pairscore.score"] == PROBABILITY_SCORE
    stored = json.loads((tmp_path / "out" / "_SUMMARY.json").read_text())
    started, created, ended = (datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ") for t in
                               (stored["started_at"], stamp["pairscore.created_at"], stored["ended_at"]))
    # The tables are stamped when the pipeline is built, as the run's clock starts (the summary
    # takes its start from a monotonic clock: allow for the two clocks' difference).
    assert abs((created - started).total_seconds()) < 1.0 and created <= ended
    assert stored["paths"] == {"--pairs": [str(tmp_path / "pairs.jsonl")], "--model": [tiny_checkpoint],
                               "--output": [str(tmp_path / "out")]}


def test_the_baseline_says_its_score_is_a_cosine(tmp_path):
    from jobs.encode_texts import EncodeTextsJob, run as encode
    from jobs.score_pairs import ScorePairsJob, run

    (tmp_path / "pairs.jsonl").write_text(json.dumps({"left": "a red fox", "right": "a fox"}) + "\n")
    run(ScorePairsJob(pairs=(str(tmp_path / "pairs.jsonl"),), output=str(tmp_path / "out")), [], argv=[])
    stamp = read_provenance(pq.read_schema(_tables(tmp_path / "out" / "scores")[0]))
    assert stamp["pairscore.score"] == COSINE_SCORE
    assert json.loads(stamp["pairscore.models"])["model"]["fingerprint"]
    (tmp_path / "texts.jsonl").write_text(json.dumps({"text": "a red fox"}) + "\n")
    encode(EncodeTextsJob(inputs=(str(tmp_path / "texts.jsonl"),), output=str(tmp_path / "store")), [], argv=[])
    for path in _tables(tmp_path / "store"):
        assert read_provenance(pq.read_schema(path))["pairscore.job"] == "encode_texts", path
