"""The scoring core on its own: Arrow batches in, Arrow scores and dead letters out, no Beam."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from encoders.checkpoint import build_student
from pair_oracle import extract_pair
from pipeline.pair_checks import check_pair_rows, prepare_pairs, table_from_rows, validate_pairs
from pipeline.pairs import PairColumns, kept_fields, kept_values, reason_name
from pipeline.readers import InputError, InputFile, SourcedRow, read_parquet_slice, read_slices
from pipeline.scoring_core import HeadScorer, StoreLookup, id_hashes, partition, score_batch
from pipeline.store import StoreLayout, encode_token_block, store_layout
from pipeline.text_ids import text_id

ID_MODE = PairColumns(left_id="q", right_id="p")


def store_table(ids: list[str], layout: StoreLayout, seed: int) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """A store table of random rows -> (table, tokens (R, N, D) float32 as stored, num_tokens (R,), pooled (R, H))."""
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(len(ids), layout.tokens_kept, layout.dim)).astype(np.float32)
    num_tokens = rng.integers(1, layout.tokens_kept + 3, size=len(ids)).astype(np.int32)
    pooled = rng.normal(size=(len(ids), layout.pooled_dim)).astype(np.float32)
    encoded, scales = encode_token_block(tokens, layout.dtype)
    columns = {"id": ids, "text_hash": ids, "num_tokens": pa.array(num_tokens), "truncated": [False] * len(ids),
               "tokens": pa.array(encoded, pa.binary(layout.token_bytes))}
    if scales is not None:
        columns["token_scale"] = pa.array(scales)
    columns["pooled"] = pa.array([row.astype("<f2").tobytes() for row in pooled], pa.binary(layout.pooled_dim * 2))
    table = pa.table(columns, schema=layout.schema())
    stored = (tokens.astype("<f2").astype(np.float32) if layout.dtype == "float16"
              else np.frombuffer(b"".join(encoded), np.int8).reshape(tokens.shape).astype(np.float32)
              * scales[:, None, None])
    return table, stored, num_tokens, pooled.astype("<f2").astype(np.float32)


@pytest.fixture(scope="module")
def students(tiny_student_config):
    return {"dipair": build_student(tiny_student_config, seed=3).eval(),
            "classes": build_student(tiny_student_config.replace(head="de-ffnn", num_outputs=3), seed=4).eval(),
            # Reads no tokens: the core passes placeholders and must still give the head's own scores.
            "cosine": build_student(tiny_student_config.replace(head="pooled-cos"), seed=5).eval()}


def schema_for(student, kept: list[pa.Field]) -> pa.Schema:
    fields = [pa.field("left_id", pa.string()), pa.field("right_id", pa.string()), pa.field("score", pa.float32())]
    if student.config.num_outputs > 1:
        fields.append(pa.field("probs", pa.list_(pa.float32())))
    return pa.schema(fields + kept)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
@pytest.mark.parametrize("name", ["dipair", "classes", "cosine"])
def test_scores_equal_the_head_run_directly(students, tiny_student_config, name, dtype):
    student = students[name]
    config = tiny_student_config
    layouts = {side: store_layout(student, side, dtype) for side in ("left", "right")}
    left_ids, right_ids = [f"q{i}" for i in range(7)], [f"p{i}" for i in range(5)]
    left_table, left_tokens, left_n, left_pooled = store_table(left_ids, layouts["left"], 1)
    right_table, right_tokens, right_n, right_pooled = store_table(right_ids, layouts["right"], 2)
    # Two store tables per side, as a worker gets them; rows of 20 pairs in a shuffled order.
    left = StoreLookup([left_table.slice(0, 3), left_table.slice(3)], layouts["left"])
    right = StoreLookup([right_table.slice(0, 2), right_table.slice(2)], layouts["right"])
    rng = np.random.default_rng(0)
    li, ri = rng.integers(0, 7, 20), rng.integers(0, 5, 20)
    pairs = pa.table({"q": [left_ids[i] for i in li], "p": [right_ids[i] for i in ri],
                      "rank": pa.array(np.arange(20), pa.int16())})
    kept = [pa.field("rank", pa.int16())]
    schema = schema_for(student, kept)
    scores, letters = score_batch(pairs, PairColumns(left_id="q", right_id="p", keep=("rank",)), kept, left, right,
                                  HeadScorer(student, "cpu", batch_size=6), schema)
    assert letters == [] and scores.schema == schema and scores.num_rows == 20

    def mask(n, kept_tokens):
        return torch.arange(kept_tokens)[None, :] < torch.from_numpy(np.minimum(n, kept_tokens))[:, None]
    with torch.inference_mode():
        logits = student.score_tokens(torch.from_numpy(left_tokens[li]), mask(left_n[li], config.left_tokens),
                                      torch.from_numpy(right_tokens[ri]), mask(right_n[ri], config.right_tokens),
                                      torch.from_numpy(left_pooled[li]), torch.from_numpy(right_pooled[ri]))
        expected, probs = student.scores_from_logits(logits)
    np.testing.assert_allclose(scores.column("score").to_numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert scores.column("rank").to_pylist() == list(range(20))
    assert scores.column("left_id").to_pylist() == [left_ids[i] for i in li]
    if probs is not None:
        got = np.array(scores.column("probs").to_pylist())
        np.testing.assert_allclose(got, probs.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)


def test_missing_ids_are_dead_letters_and_later_store_rows_win(students):
    student = students["dipair"]
    layouts = {side: store_layout(student, side, "float16") for side in ("left", "right")}
    first, _, _, _ = store_table(["a", "b"], layouts["left"], 1)
    again, _, _, _ = store_table(["b"], layouts["left"], 9)   # re-encoded "b": this row must win
    right_table, _, _, _ = store_table(["x"], layouts["right"], 2)
    left, right = StoreLookup([first, again], layouts["left"]), StoreLookup([right_table], layouts["right"])
    assert len(left) == 2 and list(left.rows(pa.array(["b", "a", "zz", "", "bb"]))) == [2, 0, -1, -1, -1]
    pairs = pa.table({"q": ["a", "nope", "b", "a"], "p": ["x", "x", "y", "x"]})
    scores, letters = score_batch(pairs, ID_MODE, [], left, right, HeadScorer(student), schema_for(student, []),
                                  path="pairs.parquet")
    assert scores.column("left_id").to_pylist() == ["a", "a"]
    assert [(l.reason, l.source, l.row) for l in letters] == [
        ("left_text_missing", "pairs.parquet:1", {"q": "nope", "p": "x"}),
        ("right_text_missing", "pairs.parquet:2", {"q": "b", "p": "y"})]


def test_long_ids_and_an_empty_store(tiny_student_config):
    layout = StoreLayout("left", 2, 4, "float16", None)
    long_ids = ["x" * 600, "y" * 700, "short"]
    table, _, _, _ = store_table(long_ids, StoreLayout("left", 2, 4, "float16", 3), 0)
    lookup = StoreLookup([table.drop_columns(["pooled"])], layout)
    assert list(lookup.rows(pa.array(["y" * 700, "short", "z"]))) == [1, 2, -1]
    empty = StoreLookup([], layout)
    assert len(empty) == 0 and list(empty.rows(pa.array(["a"]))) == [-1]


def test_ids_differing_in_any_byte_get_their_own_rows():
    """Two different ids never share a store row: every code point 0..255 (NUL included), appended
    to an id or put inside it, is another id than the id without it; in one store and both ways."""
    layout = StoreLayout("left", 2, 4, "float16", None)
    base = ["L0", "L", "abc"]
    variants = [b + chr(c) for b in base for c in range(256)]
    variants += [b[:1] + chr(c) + b[1:] for b in base for c in range(256)]
    variants += ["L0" + "\x00" * k for k in range(2, 5)] + ["\x00", "\x00\x00", "\x00L0"]
    ids = list(dict.fromkeys(base + variants))
    table, _, _, _ = store_table(ids, StoreLayout("left", 2, 4, "float16", 3), 0)
    lookup = StoreLookup([table.drop_columns(["pooled"])], layout)
    assert len(lookup) == len(ids)
    assert list(lookup.rows(pa.array(ids))) == list(range(len(ids)))
    # A store holding only the bare ids finds none of the variants (and the variants' store no bare id).
    bare = StoreLookup([table.slice(0, len(base)).drop_columns(["pooled"])], layout)
    others = [i for i in ids if i not in base]
    assert list(bare.rows(pa.array(others))) == [-1] * len(others)
    assert list(bare.rows(pa.array(base))) == [0, 1, 2]
    only_variants = StoreLookup([table.slice(len(base)).drop_columns(["pooled"])], layout)
    assert list(only_variants.rows(pa.array(base))) == [-1] * len(base)


# --------------------------------------------------------------------------- validation

TEXT_ROWS = [
    {"left": "fine", "right": "also fine", "k": 1},
    {"left": None, "right": "x", "k": 2},             # left_null_text
    {"right": "x", "k": 3},                           # left_null_text (absent)
    {"left": 5, "right": "x", "k": 4},                # left_non_string_text
    {"left": ["a"], "right": None, "k": 5},           # left_non_string_text (left first)
    {"left": " \t\n", "right": "x", "k": 6},          # left_empty_text
    {"left": "", "right": "", "k": 7},                # left_empty_text
    {"left": "\u200b\u2060", "right": "x", "k": 7},  # left_empty_text (zero-width only)
    {"left": "x", "right": None, "k": 8},             # right_null_text
    {"left": "x", "right": {"a": 1}, "k": 9},         # right_non_string_text
    {"left": "x", "right": "   ", "k": 10},           # right_empty_text
    {"left": "x", "right": "y", "k": "eleven"},       # kept_column_type
    {"left": "x", "right": "y", "k": True},           # kept_column_type (a bool is not an int)
    {"left": "x", "right": "y"},                      # kept value absent: null, fine
    {"left": "x", "right": "y", "k": 2 ** 70},        # kept_column_type (does not fit int64)
]


def test_every_bad_row_reason_with_exact_counts_as_extract_pair_gives_them():
    columns = PairColumns(keep=("k",))
    kept = [pa.field("k", pa.int64())]
    converted = table_from_rows(TEXT_ROWS, columns, kept)
    prepared = prepare_pairs(converted.table, columns, kept, 0, np.arange(1, len(TEXT_ROWS) + 1), "p.jsonl",
                             lambda rows: [TEXT_ROWS[r] for r in rows], converted.non_string, converted.misfit)
    reasons = {}
    for letter in prepared.dead_letters:
        reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
    assert reasons == {"left_null_text": 2, "left_non_string_text": 2, "left_empty_text": 3, "right_null_text": 1,
                       "right_non_string_text": 1, "right_empty_text": 1, "kept_column_type": 3}
    assert prepared.pairs.num_rows == 2 and prepared.pairs.column("k").to_pylist() == [1, None]
    assert prepared.pairs.column("_position").to_pylist() == [1, 14]
    # The same reasons, details, sources and rows as the per-row reference, for the side checks.
    for letter in prepared.dead_letters:
        line = int(letter.source.rsplit(":", 1)[1])
        row = TEXT_ROWS[line - 1]
        if letter.reason == "kept_column_type":
            assert "kept column 'k'" in letter.detail and "int64" in letter.detail and letter.row == row
            continue
        reference = extract_pair(SourcedRow(f"p.jsonl:{line}", row), columns)
        assert letter == reference


def test_id_mode_reasons_name_ids_and_parquet_types_are_checked():
    # Integer id columns are ids (test_integer_ids_...); a float column is not.
    table = pa.table({"q": ["a", None, "", " ", "b", "c"], "p": pa.array([1, 2, 3, 4, None, 6], pa.float64())})
    codes = validate_pairs(table, ID_MODE)
    assert [reason_name(int(c)) for c in codes] == [
        "right_non_string_id", "left_null_id", "left_empty_id", "left_empty_id", "right_null_id",
        "right_non_string_id"]
    rows = table.to_pylist()
    prepared = prepare_pairs(table, ID_MODE, [], 3, np.arange(6), "ids.parquet")
    for index, letter in enumerate(prepared.dead_letters):
        assert letter == extract_pair(SourcedRow(f"ids.parquet:{index}", rows[index]), ID_MODE)


def test_integer_ids_in_pair_tables_are_their_decimal_text():
    """Pair tables' integer ids (JSONL numbers, Parquet int columns of any width) are accepted and
    compared as text tables give them: ``str(value)``; bools and floats are still not ids."""
    rows = [{"q": 7, "p": "p1"}, {"q": -3, "p": 2 ** 63 + 5}, {"q": "7", "p": 0}, {"q": True, "p": 1},
            {"q": 1.5, "p": 1}, {"q": 8, "p": [1]}]
    converted = table_from_rows(rows, ID_MODE, [])
    prepared = prepare_pairs(converted.table, ID_MODE, [], 0, np.arange(1, len(rows) + 1), "ids.jsonl",
                             lambda picked: [rows[r] for r in picked], converted.non_string, converted.misfit)
    assert prepared.pairs.column("left_id").to_pylist() == ["7", "-3", "7"]
    assert prepared.pairs.column("right_id").to_pylist() == ["p1", str(2 ** 63 + 5), "0"]
    assert [l.reason for l in prepared.dead_letters] == ["left_non_string_id", "left_non_string_id",
                                                         "right_non_string_id"]
    for line, row in enumerate(rows, start=1):
        reference = extract_pair(SourcedRow(f"ids.jsonl:{line}", row), ID_MODE)
        if line <= 3:
            pair = reference
            assert (pair.left_id, pair.right_id) == tuple(prepared.pairs.slice(line - 1, 1).select(
                ["left_id", "right_id"]).to_pylist()[0].values())
        else:
            assert reference == prepared.dead_letters[line - 4]
    for kind in (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32(), pa.uint64()):
        table = pa.table({"q": pa.array([1, None, 100], kind), "p": pa.array([0, 5, 127], kind)})
        prepared = prepare_pairs(table, ID_MODE, [], 0, np.arange(3), "ids.parquet")
        assert prepared.pairs.column("left_id").to_pylist() == ["1", "100"], kind
        assert prepared.pairs.column("right_id").to_pylist() == ["0", "127"], kind
        assert [l.reason for l in prepared.dead_letters] == ["left_null_id"]
    # Text mode: a number is still not a text.
    codes = validate_pairs(pa.table({"left": pa.array([1]), "right": ["x"]}), PairColumns())
    assert reason_name(int(codes[0])) == "left_non_string_text"


@pytest.mark.parametrize("blank", ["\u200b", "\u200b\u200d\ufeff", "\x00\x01", " \u00a0\u3000", "\u0301",
                                   "\u2800", "\t\u2060\n"])
def test_blank_texts_are_empty_text(blank):
    table = pa.table({"left": ["visible \u200b", blank, "x"], "right": ["y", "y", blank]})
    codes = validate_pairs(table, PairColumns())
    assert [reason_name(int(c)) for c in codes] == ["", "left_empty_text", "right_empty_text"]


def test_text_ids_hash_each_unique_text_once(monkeypatch):
    import pipeline.pair_checks as core
    hashed = []
    monkeypatch.setattr(core, "text_id", lambda text: hashed.append(text) or text_id(text))
    table = pa.table({"left": ["a", "b", "a", "a"], "right": ["c", "c", "c", "d"]})
    prepared = prepare_pairs(table, PairColumns(), [], 0, np.arange(4), "t.parquet")
    assert sorted(hashed) == ["a", "b", "c", "d"]
    assert prepared.pairs.column("left_id").to_pylist() == [text_id(t) for t in ["a", "b", "a", "a"]]
    ids, texts = prepared.texts["right"]
    assert dict(zip(ids.to_pylist(), texts.to_pylist())) == {text_id("c"): "c", text_id("d"): "d"}


# --------------------------------------------------------------------------- kept column types

def test_kept_fields_from_jsonl_csv_and_parquet(tmp_path):
    rows = [{"i": 1, "f": 1, "b": True, "s": "x", "o": {"a": 1}, "m": 1, "n": None},
            {"i": 2, "f": 2.5, "b": False, "s": "y", "o": [1], "m": "two", "n": None}]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = ["i", "f", "b", "s", "o", "m", "n"]
    fields = kept_fields([InputFile(str(jsonl), "jsonl", False)], names)
    assert [f.type for f in fields] == [pa.int64(), pa.float64(), pa.bool_(), pa.string(), pa.string(),
                                        pa.string(), pa.string()]
    converted = table_from_rows(rows, PairColumns(left="s", right="s2", keep=tuple(names)), fields)
    assert converted.table.column("o").to_pylist() == ['{"a": 1}', "[1]"]   # objects and lists as JSON text
    assert converted.table.column("m").to_pylist() == ["1", "two"]          # mixed kinds: JSON text
    assert converted.table.column("f").to_pylist() == [1.0, 2.5] and not converted.misfit
    csv = tmp_path / "b.csv"
    csv.write_text("i\n1\n")
    with pytest.raises(InputError, match=r"kept column 'i' is int64 in .*a\.jsonl but string in .*b\.csv"):
        kept_fields([InputFile(str(jsonl), "jsonl", False), InputFile(str(csv), "csv", False)], ["i"])
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"i": pa.array([1], pa.int32())}), parquet)
    with pytest.raises(InputError, match=r"int64 in .*a\.jsonl but int32 in .*c\.parquet"):
        kept_fields([InputFile(str(jsonl), "jsonl", False), InputFile(str(parquet), "parquet", False)], ["i"])


def test_parquet_is_read_by_row_group_slices_with_positions(tmp_path):
    path = tmp_path / "big.parquet"
    table = pa.table({"q": [f"q{i}" for i in range(100)], "p": ["p"] * 100, "wide": ["w" * 50] * 100})
    pq.write_table(table, path, row_group_size=10)
    file = InputFile(str(path), "parquet", False)
    slices = read_slices(file, target_rows=25)
    assert [s.row_groups for s in slices] == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]
    assert [s.first_row for s in slices] == [0, 30, 60, 90]
    parts = list(read_parquet_slice(slices[1], ["q"], batch_rows=4))
    assert [p.batch.num_rows for p in parts] == [4, 4, 2] * 3
    assert np.concatenate([p.positions for p in parts]).tolist() == list(range(30, 60))
    assert parts[0].batch.schema.names == ["q"]
    # Dead letters get the whole original row, every column, read again only for bad rows.
    assert parts[4].originals(np.array([1])) == [{"q": "q45", "p": "p", "wide": "w" * 50}]


def test_id_hashes_are_stable_and_partitions_cover_every_row():
    ids = pa.array(["", "a", "ab", "abc", "q1", "q1"])
    # FNV-1a 64 of the UTF-8 bytes: fixed across processes and machines.
    assert id_hashes(ids)[:2].tolist() == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C]
    assert id_hashes(ids)[4] == id_hashes(ids)[5]
    table = pa.table({"id": ids, "n": range(6)})
    parts = list(partition(table, id_hashes(ids), 3))
    assert sorted(n for _, t in parts for n in t.column("n").to_pylist()) == list(range(6))
    assert len({b for b, _ in parts}) == len(parts)


def test_label_pairs_refuses_a_kept_value_of_another_type_the_same_way():
    columns = PairColumns(keep=("k",))
    kept = [pa.field("k", pa.float64())]
    pair, letter = check_pair_rows([SourcedRow("a:1", {"left": "x", "right": "y", "k": 3}),
                                    SourcedRow("a:2", {"left": "x", "right": "y", "k": "3"})], columns, kept)
    assert pair.kept == (3,)
    assert letter.reason == "kept_column_type" and "double" in letter.detail and letter.source == "a:2"


@pytest.mark.parametrize("big", [2 ** 53 + 1, -(2 ** 53) - 1, 2 ** 60, 2 ** 64, -(2 ** 70)])
def test_an_integer_a_float_column_cannot_hold_exactly_is_a_misfit(big):
    """A float64 kept column takes integers up to 2**53 (exact in a double); a larger one is
    dead-lettered as kept_column_type, never rounded nor a failed job."""
    field = pa.field("w", pa.float64())
    array, misfit = kept_values([0.5, 2 ** 53, -(2 ** 53), big, None, 7], field)
    assert array.to_pylist() == [0.5, float(2 ** 53), -float(2 ** 53), None, None, 7.0]
    assert list(misfit) == [False, False, False, True, False, False]
    rows = [{"left": "a", "right": "b", "w": v} for v in (0.5, big, 3)]
    converted = table_from_rows(rows, PairColumns(keep=("w",)), [field])
    prepared = prepare_pairs(converted.table, PairColumns(keep=("w",)), [field], 0, np.arange(1, 4), "p.jsonl",
                             lambda picked: [rows[r] for r in picked], converted.non_string, converted.misfit)
    assert prepared.pairs.column("w").to_pylist() == [0.5, 3.0]
    assert [(l.reason, l.source) for l in prepared.dead_letters] == [("kept_column_type", "p.jsonl:2")]
    assert "'w'" in prepared.dead_letters[0].detail and "double" in prepared.dead_letters[0].detail
    [letter] = check_pair_rows([SourcedRow("a:9", {"left": "x", "right": "y", "w": big})], PairColumns(keep=("w",)),
                               [field])
    assert letter.reason == "kept_column_type" and letter.source == "a:9"

