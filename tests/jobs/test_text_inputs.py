"""End to end: texts with nothing visible are dead-lettered in stage one and stage two, and a TSV
is read one line per row (no quote processing), so every line is counted."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.encode_texts import EncodeTextsJob
from jobs.encode_texts import run as encode_texts
from jobs.score_pairs import ScorePairsJob
from jobs.score_pairs import run as score_pairs
from pipeline.store import read_store
from pipeline.text_ids import text_id

INVISIBLE = ["\x00", "\u200b", "\ufeff\u200b", "\x01\x1b\x85", "\u0301\u0308", "\u00ad\u2060"]


def dead_letters(output: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in (output / "_dead_letter").glob("*.parquet")]).to_pylist()


def test_encode_texts_reads_every_tsv_line_and_drops_invisible_texts(tmp_path, tiny_checkpoint):
    lines = ["id\ttext", "1\tfirst text", '2\t"an unbalanced quote starts this text', "3\tthird text",
             "4\tfourth text", '5\tfifth "text"', "6\tsixth text"]
    lines += [f"{7 + i}\t{text}" for i, text in enumerate(INVISIBLE)]
    source = tmp_path / "texts.tsv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "store"
    summary = encode_texts(EncodeTextsJob(max_dead_letter_fraction=1.0,
                                          inputs=(str(source),), output=str(output), model_dir=tiny_checkpoint,
                                          side="left", id_col="id"), [], argv=[])
    assert summary.counts["rows_read"] == 6 + len(INVISIBLE)
    assert (summary.counts["rows_kept"], summary.counts["rows_dead_lettered"]) == (6, len(INVISIBLE))
    assert summary.dead_letters == {"empty_text": len(INVISIBLE)}
    _, table = read_store(str(output))
    assert sorted(table.column("id").to_pylist()) == [str(i) for i in range(1, 7)]
    assert {json.loads(d["row"])["text"] for d in dead_letters(output)} == set(INVISIBLE)


def test_score_pairs_never_scores_two_invisible_texts(tmp_path, tiny_checkpoint):
    pairs = [{"left": "\x00", "right": "\u200b"}, {"left": "a question", "right": "\ufeff"},
             {"left": "\u0301", "right": "an answer"}, {"left": "a question", "right": "an answer"}]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    output = tmp_path / "out"
    summary = score_pairs(ScorePairsJob(max_dead_letter_fraction=1.0,
                                        pairs=(str(source),), output=str(output), model_dir=tiny_checkpoint),
                          [], argv=[])
    assert summary.counts["pairs_scored"] == 1
    assert summary.dead_letters == {"left_empty_text": 2, "right_empty_text": 1}
    scored = pa.concat_tables([pq.read_table(p) for p in (output / "scores").glob("part-*.parquet")]).to_pylist()
    assert [(r["left_id"], r["right_id"]) for r in scored] == [(text_id("a question"), text_id("an answer"))]
