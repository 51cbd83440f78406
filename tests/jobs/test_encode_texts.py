"""End to end: ``jobs.encode_texts`` on the DirectRunner, bad inputs with exact counts."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from click.testing import CliRunner

from encoders.checkpoint import load_or_build_student, load_student
from encoders.config import baseline_config
from encoders.file_fingerprint import checkpoint_file_fingerprint, file_sha256
from jobs import encode_texts
from jobs.encode_texts import EncodeTextsJob, run
from pipeline.store import decode_pooled, decode_tokens, read_store, token_mask
from pipeline.text_ids import text_id


def write_jsonl_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def dead_letters(output: Path) -> list[dict]:
    table = pa.concat_tables([pq.read_table(p) for p in sorted((output / "_dead_letter").glob("*.parquet"))])
    return table.to_pylist()


def summary_of(output: Path) -> dict:
    return json.loads((output / "_SUMMARY.json").read_text())


LONG_TEXT = "many words " * 400  # far beyond every max length here


@pytest.fixture(scope="module")
def bad_input_run(tmp_path_factory, tiny_checkpoint):
    """One run over a JSONL file holding every bad row stage one must survive."""
    tmp = tmp_path_factory.mktemp("bad-input")
    lines = [
        json.dumps({"text": "alpha"}).encode(),
        json.dumps({"text": "beta"}).encode(),
        json.dumps({"text": "alpha"}).encode(),            # duplicate
        json.dumps({"text": LONG_TEXT}).encode(),          # truncated, kept
        json.dumps({"text": ""}).encode(),                 # empty
        json.dumps({"text": "   \t "}).encode(),           # whitespace only
        json.dumps({"text": None}).encode(),               # null
        json.dumps({"other": "no text key"}).encode(),     # missing field -> null
        json.dumps({"text": 42}).encode(),                 # not a string
        json.dumps({"text": ["a", "list"]}).encode(),      # not a string
        b'{"text": "bad \xff\xfe bytes"}',                 # invalid UTF-8
        b'{"text": "unterminated',                         # invalid JSON
        b"",                                               # blank line: not a row
        json.dumps({"text": "beta"}).encode(),             # duplicate
    ]
    source = write_jsonl_lines(tmp / "texts.jsonl", lines)
    output = tmp / "store"
    summary = run(EncodeTextsJob(max_dead_letter_fraction=1.0,
                                 inputs=(str(source),), output=str(output), model_dir=tiny_checkpoint,
                                 side="left"), [], argv=["test"])
    return output, summary


def test_bad_input_counts_reconcile_exactly(bad_input_run):
    output, summary = bad_input_run
    counts = summary_of(output)["counts"]
    assert counts == {"rows_read": 13, "rows_kept": 3, "rows_duplicate": 2, "rows_dead_lettered": 8,
                      "texts_encoded": 3, "texts_truncated": 1, "store_rows": 3}
    assert summary_of(output)["dead_letters"] == {"empty_text": 2, "invalid_json": 1, "invalid_utf8": 1,
                                                  "non_string_text": 2, "null_text": 2}


def test_dead_letters_keep_the_row_and_reason(bad_input_run):
    output, _ = bad_input_run
    letters = dead_letters(output)
    assert len(letters) == 8
    by_source = {letter["source"].rsplit(":", 1)[1]: letter for letter in letters}
    assert by_source["11"]["reason"] == "invalid_utf8"
    assert "bad" in json.loads(by_source["11"]["row"])["text"]
    assert by_source["9"]["reason"] == "non_string_text" and json.loads(by_source["9"]["row"]) == {"text": 42}
    assert by_source["8"]["reason"] == "null_text" and "absent" in by_source["8"]["detail"]
    assert all(letter["detail"] for letter in letters)


def test_store_holds_what_the_encoder_computes(bad_input_run, tiny_checkpoint):
    output, _ = bad_input_run
    manifest, table = read_store(str(output))
    student = load_student(tiny_checkpoint)
    assert manifest.model_fingerprint == student.fingerprint
    assert (manifest.side, manifest.tokens_kept, manifest.dim, manifest.dtype, manifest.rows) == (
        "left", 4, 8, "float16", 3)
    texts = {text_id(t): t for t in ("alpha", "beta", LONG_TEXT)}
    assert sorted(table.column("id").to_pylist()) == sorted(texts)
    reference = student.encoder.left.encode([texts[i] for i in table.column("id").to_pylist()])
    stored = decode_tokens(table, manifest.layout)
    np.testing.assert_allclose(stored, reference.tokens.numpy(), atol=2e-3, rtol=2e-3)
    mask = token_mask(table.column("num_tokens").to_numpy(), manifest.tokens_kept)
    assert np.array_equal(mask, reference.mask.numpy())
    np.testing.assert_allclose(decode_pooled(table, manifest.layout), reference.pooled.numpy(), atol=2e-3)
    truncated = dict(zip(table.column("id").to_pylist(), table.column("truncated").to_pylist()))
    assert truncated == {text_id("alpha"): False, text_id("beta"): False, text_id(LONG_TEXT): True}


def test_store_is_zstd_parquet_readable_without_pairscore(bad_input_run, tiny_checkpoint):
    output, _ = bad_input_run
    files = sorted(output.glob("part-*.parquet"))
    assert files
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    import duckdb
    import pandas as pd
    frame = pd.concat([pd.read_parquet(f) for f in files])
    first = np.frombuffer(frame["tokens"].iloc[0], "<f2").reshape(4, 8)
    assert first.shape == (4, 8)
    count = duckdb.sql(f"select count(*), min(octet_length(tokens)) from read_parquet('{output}/part-*.parquet')").fetchall()[0]
    assert count == (3, 4 * 8 * 2)
    manifest = json.loads((output / "_MANIFEST.json").read_text())
    assert manifest["schema_version"] == 2 and manifest["rows"] == 3
    # Version 2: each part's size and SHA-256, and the model's file fingerprint.
    assert manifest["part_bytes"] == [os.path.getsize(output / name) for name in manifest["files"]]
    assert manifest["part_sha256"] == [file_sha256(output / name) for name in manifest["files"]]
    assert manifest["model_files_fingerprint"] == checkpoint_file_fingerprint(tiny_checkpoint)


def test_conflicting_ids_and_shared_texts_from_parquet(tmp_path, tiny_checkpoint):
    table = pa.table({"id": [1, 1, 2, 2, 3, 4, 5],
                      "body": ["same", "same", "first", "second", "same", "other", None]})
    pq.write_table(table, tmp_path / "texts.parquet")
    output = tmp_path / "store"
    run(EncodeTextsJob(max_dead_letter_fraction=1.0,
                       inputs=(str(tmp_path / "*.parquet"),), output=str(output), text_col="body",
                       id_col="id", model_dir=tiny_checkpoint, side="right"), [], argv=[])
    summary = summary_of(output)
    assert summary["counts"] == {"rows_read": 7, "rows_kept": 3, "rows_duplicate": 1, "rows_dead_lettered": 3,
                                 "texts_encoded": 2, "texts_truncated": 0, "store_rows": 3}
    assert summary["dead_letters"] == {"conflicting_id": 2, "null_text": 1}
    _, stored = read_store(str(output))
    rows = {r["id"]: r for r in stored.to_pylist()}
    assert sorted(rows) == ["1", "3", "4"]
    assert rows["1"]["tokens"] == rows["3"]["tokens"]  # one text, two ids, one encoding
    conflicting = [d for d in dead_letters(output) if d["reason"] == "conflicting_id"]
    assert sorted(json.loads(d["row"])["body"] for d in conflicting) == ["first", "second"]


def test_csv_with_invalid_utf8_and_zst_compression(tmp_path, tiny_checkpoint):
    raw = b"id,text\n1,hello there\n2,caf\xe9 au lait\n3,\n4,good bye\n"
    (tmp_path / "t.csv.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    output = tmp_path / "store"
    run(EncodeTextsJob(max_dead_letter_fraction=1.0,
                       inputs=(str(tmp_path / "t.csv.zst"),), output=str(output), id_col="id",
                       model_dir=tiny_checkpoint, dtype="int8"), [], argv=[])
    summary = summary_of(output)
    assert summary["counts"]["rows_read"] == 4 and summary["counts"]["rows_kept"] == 2
    assert summary["dead_letters"] == {"empty_text": 1, "invalid_utf8": 1}
    manifest, stored = read_store(str(output))
    assert manifest.dtype == "int8" and stored.schema.field("tokens").type == pa.binary(4 * 8)


@pytest.mark.parametrize("make_input, flags, message", [
    (lambda d: d / "missing-*.jsonl", {}, "matched no files"),
    (lambda d: (d / "a.jsonl").write_text('{"body": "x"}\n') and d / "a.jsonl", {}, "text"),
    (lambda d: (d / "a.jsonl").write_text('{"text": "x"}\n') and d / "a.jsonl", {"id_col": "key"}, "key"),
    (lambda d: (d / "bad.parquet").write_bytes(b"PAR1 definitely not parquet") and d / "bad.parquet", {},
     "bad.parquet"),
    (lambda d: (d / "bad.jsonl.zst").write_bytes(b"\x00not zstd at all") and d / "bad.jsonl.zst", {},
     "bad.jsonl.zst"),
])
def test_bad_inputs_fail_before_the_pipeline_with_a_clear_error(tmp_path, make_input, flags, message):
    path = make_input(tmp_path)
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        run(EncodeTextsJob(inputs=(str(path),), output=str(output), **flags), [], argv=[])
    assert not (output / "_SUMMARY.json").exists()


def test_cli_refuses_non_empty_output_and_unknown_options(tmp_path):
    source = tmp_path / "t.jsonl"
    source.write_text('{"text": "x"}\n')
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    runner = CliRunner()
    result = runner.invoke(encode_texts.main, ["--input", str(source), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "is not empty" in result.output and "--overwrite" in result.output
    result = runner.invoke(encode_texts.main, ["--input", str(source), "--output", str(tmp_path / "o2"),
                                               "--no_such_flag=1"])
    assert result.exit_code == 2 and "--no_such_flag=1" in result.output
    result = runner.invoke(encode_texts.main, ["--input", str(source), "--output", str(tmp_path / "o3"),
                                               "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 2 and "no-model" in result.output and "does not exist" in result.output


def test_help_explains_every_flag():
    result = CliRunner().invoke(encode_texts.main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--input", "--format", "--text-col", "--id-col", "--side", "--model", "--output",
                 "--overwrite", "--batch-size", "--dtype", "--device", "--runner"):
        assert flag in result.output


def qqp_texts(shared_data: Path, count: int) -> list[dict]:
    rows = []
    with open(shared_data / "qqp" / "dev.jsonl", encoding="utf-8") as handle:
        for line in handle:
            pair = json.loads(line)
            rows += [{"text": pair["left"]}, {"text": pair["right"]}]
            if len(rows) >= count:
                break
    return rows


@pytest.mark.parametrize("beam_args", [
    [],
    ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
], ids=["in-process", "multi-process"])
def test_real_qqp_questions_with_the_packaged_encoder(tmp_path, shared_data, beam_args):
    rows = qqp_texts(shared_data, 240)
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "store"
    run(EncodeTextsJob(inputs=(str(source),), output=str(output), batch_size=32), beam_args, argv=[])
    summary = summary_of(output)
    unique = {r["text"] for r in rows if r["text"].strip()}
    assert summary["counts"]["rows_read"] == len(rows)
    assert summary["counts"]["texts_encoded"] == len(unique) == summary["counts"]["store_rows"]
    assert summary["counts"]["rows_kept"] + summary["counts"]["rows_duplicate"] + \
        summary["counts"]["rows_dead_lettered"] == len(rows)
    manifest, table = read_store(str(output))
    student = load_or_build_student(None, baseline_config())
    assert manifest.model_fingerprint == student.fingerprint and manifest.pooled_dim == 384
    by_id = {text_id(t): t for t in unique}
    sample = table.slice(0, 16)
    reference = student.encoder.left.encode([by_id[i] for i in sample.column("id").to_pylist()])
    np.testing.assert_allclose(decode_pooled(sample, manifest.layout), reference.pooled.numpy(), atol=3e-3)
    np.testing.assert_allclose(decode_tokens(sample, manifest.layout), reference.tokens.numpy(), atol=2e-2, rtol=1e-2)
