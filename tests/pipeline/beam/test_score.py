"""Stage two's Beam transforms on their own (ReadPairs, ScorePairs), in real pipelines on Beam's
in-process BundleBasedDirectRunner (named explicitly: the DirectRunner would first try to download
Prism): both joins score every pair as the engine-free core does, dead-letter the same rows with
the same reasons, and carry the kept columns through."""
from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from encoders.checkpoint import load_student
from pipeline.beam.counters import read_counters, split_dead_letters
from pipeline.beam.score import PAIRS, ReadPairs, ScorePairs, ScoreSettings
from pipeline.models import HeadHandler
from pipeline.pairs import PairColumns, kept_fields
from pipeline.readers import InputFile
from pipeline.scoring_core import StoreLookup, score_batch
from pipeline.store import encode_token_block, store_layout

RUNNER = "BundleBasedDirectRunner"
COLUMNS = PairColumns(left_id="q", right_id="p", keep=("pair_id",))
LEFT_IDS, RIGHT_IDS = [f"q{i}" for i in range(6)], [f"p{i}" for i in range(4)] + ["7"]

GOOD = [{"q": f"q{i % 6}", "p": f"p{i % 4}", "pair_id": i} for i in range(17)] + [
    {"q": "q2", "p": 7, "pair_id": 17}]                       # an integer id, stored as "7"
BAD = {                                                      # line in the file -> its reason
    '{"q": null, "p": "p1", "pair_id": 100}': "left_null_id",
    '{"q": "q1", "p": " ", "pair_id": 101}': "right_empty_id",
    '{"q": "nope", "p": "p1", "pair_id": 102}': "left_text_missing",
    '{"q": "q1", "p": "gone", "pair_id": 103}': "right_text_missing",
    '{"q": "q1", "p": "p1", "pair_id": "one"}': "kept_column_type",
    '{"q": "q1", "p": ': "invalid_json",
}


def store_table(ids: list[str], layout, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    tokens, scales = encode_token_block(rng.normal(size=(len(ids), layout.tokens_kept, layout.dim)).astype(np.float32),
                                        layout.dtype)
    columns = {"id": ids, "text_hash": ids, "num_tokens": pa.array(rng.integers(1, 5, len(ids)).astype(np.int32)),
               "truncated": [False] * len(ids), "tokens": pa.array(tokens, pa.binary(layout.token_bytes))}
    if scales is not None:
        columns["token_scale"] = pa.array(scales)
    if layout.pooled_dim:
        pooled = rng.normal(size=(len(ids), layout.pooled_dim)).astype("<f2")
        columns["pooled"] = pa.array([row.tobytes() for row in pooled], pa.binary(layout.pooled_dim * 2))
    return pa.table(columns, schema=layout.schema())


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint):
    folder = tmp_path_factory.mktemp("beam-score")
    lines = [json.dumps(row) for row in GOOD] + list(BAD)
    pairs = folder / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    (folder / "good.jsonl").write_text("".join(json.dumps(row) + "\n" for row in GOOD))
    files = [InputFile(str(pairs), "jsonl", None)]
    student = load_student(tiny_checkpoint)
    layouts = {side: store_layout(student, side, "float16") for side in ("left", "right")}
    stores = {"left": store_table(LEFT_IDS, layouts["left"], 1), "right": store_table(RIGHT_IDS, layouts["right"], 2)}
    # As kept_fields decides from the first 1000 lines of a longer file: pair_id is an integer column.
    kept = [pa.field("pair_id", pa.int64())]
    assert kept_fields([InputFile(str(folder / "good.jsonl"), "jsonl", None)], COLUMNS.keep) == kept
    schema = pa.schema([pa.field("left_id", pa.string()), pa.field("right_id", pa.string()),
                        pa.field("score", pa.float32()), *kept])
    settings = ScoreSettings(model_dir=tiny_checkpoint, left_layout=layouts["left"], right_layout=layouts["right"],
                             output_schema=schema, keep=COLUMNS.keep, batch_size=4, device="cpu", columns=COLUMNS,
                             pair_paths=(str(pairs),), buckets=3)
    return files, stores, kept, settings


def run_scoring(setup, join: str, out: Path) -> tuple[list[dict], list[list], dict[str, int]]:
    """One real pipeline: ReadPairs -> ScorePairs(join) -> (score rows, dead letters, counters)."""
    files, stores, kept, settings = setup
    pipeline = TestPipeline(runner=RUNNER)
    read = pipeline | "ReadPairs" >> ReadPairs(files, COLUMNS, chunk_size=5, kept=kept, slice_rows=8,
                                               spread_batches=False)
    # Store tables arrive in pieces, as a store's part files do.
    tables = {side: pipeline | f"{side}Store" >> beam.Create([stores[side].slice(0, 2), stores[side].slice(2)])
              for side in ("left", "right")}
    scored = read.pairs | "ScorePairs" >> ScorePairs(settings, join, tables["left"], tables["right"], None)
    (scored.scores
     | "ScoreRows" >> beam.FlatMap(lambda table: [json.dumps(row) for row in table.to_pylist()])
     | "WriteScores" >> beam.io.WriteToText(str(out / "scores")))
    ((read.dead_letters, scored.dead_letters)
     | "AllDeadLetters" >> beam.Flatten()
     | "DeadLetterRows" >> beam.Map(lambda letter: json.dumps([letter.reason, letter.detail, letter.source, letter.row]))
     | "WriteDeadLetters" >> beam.io.WriteToText(str(out / "dead")))
    result = pipeline.run()
    result.wait_until_finish()

    def lines(prefix: str) -> list:
        return [json.loads(line) for path in sorted(out.glob(prefix + "*")) for line in path.read_text().splitlines()]
    return lines("scores"), lines("dead"), read_counters(result)


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory):
    return {join: run_scoring(setup, join, tmp_path_factory.mktemp(join)) for join in ("broadcast", "shuffle")}


def by_pair(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: row["pair_id"])


def test_both_joins_give_the_same_scores_and_the_same_dead_letters(runs):
    broadcast, shuffle = runs["broadcast"], runs["shuffle"]
    assert by_pair(broadcast[0]) == by_pair(shuffle[0])     # every score equal, bit for bit
    assert sorted(map(json.dumps, broadcast[1])) == sorted(map(json.dumps, shuffle[1]))


@pytest.mark.parametrize("join", ["broadcast", "shuffle"])
def test_scores_are_the_cores_scores_with_the_kept_columns(runs, setup, join):
    _, stores, kept, settings = setup
    scores, _, _ = runs[join]
    assert [row["pair_id"] for row in by_pair(scores)] == list(range(len(GOOD)))
    assert [(row["left_id"], row["right_id"]) for row in by_pair(scores)] == [
        (row["q"], str(row["p"])) for row in GOOD]
    # The engine-free core on the same pairs, in one batch: the same scores.
    handler = HeadHandler(settings.model_dir, "cpu", settings.batch_size)
    table = pa.table({"q": [r["q"] for r in GOOD], "p": [str(r["p"]) for r in GOOD],
                      "pair_id": [r["pair_id"] for r in GOOD]})
    expected, letters = score_batch(table, COLUMNS, kept, StoreLookup([stores["left"]], settings.left_layout),
                                    StoreLookup([stores["right"]], settings.right_layout), handler.load_model(),
                                    settings.output_schema)
    assert letters == []
    np.testing.assert_allclose([row["score"] for row in by_pair(scores)], expected.column("score").to_numpy(),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("join", ["broadcast", "shuffle"])
def test_every_bad_pair_is_one_dead_letter_with_its_reason_and_counted(runs, setup, join):
    files, _, _, _ = setup
    _, dead, counters = runs[join]
    reasons = sorted(reason for reason, _, _, _ in dead)
    assert reasons == sorted(BAD.values())
    path = files[0].path
    first_bad = len(GOOD) + 1
    assert sorted(source for _, _, source, _ in dead) == sorted(f"{path}:{first_bad + i}" for i in range(len(BAD)))
    missing = next(letter for letter in dead if letter[0] == "left_text_missing")
    # What the pair carries: its ids under the input's id columns and its kept columns.
    assert missing[3] == {"q": "nope", "p": "p1", "pair_id": 102}
    counts, by_reason = split_dead_letters(counters, PAIRS)
    assert counts["rows_read"] == len(GOOD) + len(BAD) and counts["rows_scored"] == len(GOOD)
    assert by_reason == {reason: 1 for reason in BAD.values()}


def test_text_mode_reads_each_batchs_distinct_texts_under_their_content_ids(tmp_path):
    """ReadPairs in text mode hands stage one each side's texts as (id, text), and
    DistinctPairTexts makes them one UniqueText per text across batches."""
    from pipeline.beam.score import DistinctPairTexts
    from pipeline.text_ids import text_id

    rows = [{"left": f"query {i % 3}", "right": f"doc {i % 2}"} for i in range(7)] + [{"left": "", "right": "x"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pipeline = TestPipeline(runner=RUNNER)
    read = pipeline | "ReadPairs" >> ReadPairs([InputFile(str(path), "jsonl", None)], PairColumns(), chunk_size=3,
                                               spread_batches=False)
    for side in ("left", "right"):
        (read.texts(side)
         | f"Distinct{side}" >> DistinctPairTexts()
         | f"Json{side}" >> beam.Map(lambda unique: json.dumps([unique.text, list(unique.ids)]))
         | f"Write{side}" >> beam.io.WriteToText(str(tmp_path / side)))
    (read.dead_letters | "Reasons" >> beam.Map(lambda letter: letter.reason)
     | "WriteDead" >> beam.io.WriteToText(str(tmp_path / "dead")))
    pipeline.run().wait_until_finish()

    def lines(prefix: str) -> list:
        return sorted(line for p in tmp_path.glob(prefix + "-*") for line in p.read_text().splitlines())
    assert lines("left") == sorted(json.dumps([f"query {i}", [text_id(f"query {i}")]]) for i in range(3))
    assert lines("right") == sorted(json.dumps([f"doc {i}", [text_id(f"doc {i}")]]) for i in range(2))
    assert lines("dead") == ["left_empty_text"]
