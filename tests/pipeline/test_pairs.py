"""The pair contract: one PairColumns for every job, and the columnar validator giving, in every
mode, exactly the reasons, details, sources and rows of the row-by-row oracle (pair_oracle.py)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pair_oracle import extract_pair
from pipeline.errors import FlagError
from pipeline.pair_checks import check_pair_rows, check_read_items, prepare_pairs, table_from_rows
from pipeline.pairs import IDS, TEXTS, TEXTS_AND_IDS, PairColumns
from pipeline.readers import SourcedRow
from pipeline.text_ids import text_id

ROWS = [
    {"l": "red shoes", "r": "shoes", "lid": "q1", "rid": 7, "k": 1},     # good; an integer id
    {"l": None, "r": "x", "lid": "q2", "rid": "p2", "k": 2},              # left null text
    {"r": "x", "lid": "q3", "rid": "p3"},                                  # left text absent
    {"l": 5, "r": "x", "lid": "q4", "rid": "p4"},                          # left text a number
    {"l": "\u200b ", "r": "x", "lid": "q5", "rid": "p5"},                 # left text blank
    {"l": "a", "r": "b", "lid": None, "rid": "p6"},                         # left id null
    {"l": "a", "r": "b", "lid": True, "rid": "p7"},                         # left id a bool
    {"l": "a", "r": "b", "lid": 1.5, "rid": "p8"},                          # left id a float
    {"l": "a", "r": "b", "lid": " \t", "rid": "p9"},                        # left id blank
    {"l": "a", "r": "b", "lid": "q10", "rid": [1]},                         # right id a list
    {"l": "a", "r": "", "lid": "", "rid": None},                            # left id blank wins over right
    {"l": "a", "r": "b", "lid": "q12", "rid": "p12", "k": "one"},           # kept value of another type
    {"l": "a", "r": "b", "lid": "q13", "rid": "p13", "k": 2 ** 64},         # kept value too big for int64
    {"l": "same", "r": "same", "lid": 2 ** 70, "rid": "p14", "k": None},    # good; a huge integer id
]
KEPT = [pa.field("k", pa.int64())]
MODES = {TEXTS: PairColumns("l", "r", keep=("k",)),
         TEXTS_AND_IDS: PairColumns("l", "r", "lid", "rid", keep=("k",)),
         IDS: PairColumns(left_id="lid", right_id="rid", keep=("k",))}


def sourced(rows):
    return [SourcedRow(f"p.jsonl:{line}", row) for line, row in enumerate(rows, start=1)]


def test_modes_follow_from_the_columns_given():
    assert PairColumns().mode == TEXTS and PairColumns().required() == ["left", "right"]
    assert PairColumns(left_id="q", right_id="p").mode == IDS
    both = PairColumns("a", "b", "q", "p", keep=("k", "a"))
    assert both.mode == TEXTS_AND_IDS and both.required() == ["a", "b", "q", "p"]
    assert both.needed() == ["a", "b", "q", "p", "k"]
    # score_pairs' flags: with id columns the text columns' flags (defaults "left"/"right") do not apply.
    scoring = PairColumns.for_scoring("left", "right", "q", "p", ("k",))
    assert scoring.id_mode and scoring.required() == ["q", "p"] and scoring.needed() == ["q", "p", "k"]
    assert PairColumns.for_scoring("a", "b", None, None).mode == TEXTS


@pytest.mark.parametrize("kwargs, flag", [({"left_id": "q"}, "--left-id-col"), ({"left": "a"}, "--left-col"),
                                          ({"left": "a", "right": "a"}, "--right-col")])
def test_columns_that_cannot_make_a_pair_are_usage_errors(kwargs, flag):
    with pytest.raises(FlagError, match=flag):
        PairColumns(**kwargs)


@pytest.mark.parametrize("mode", [TEXTS, TEXTS_AND_IDS])
def test_pairs_with_texts_are_checked_as_the_oracle_checks_them_row_by_row(mode):
    columns = MODES[mode]
    rows = sourced(ROWS)
    checked = check_pair_rows(rows, columns, KEPT)
    assert checked == [extract_pair(row, columns, KEPT) for row in rows]
    reasons = [getattr(c, "reason", "") for c in checked]
    if mode == TEXTS_AND_IDS:
        assert reasons == ["", "left_null_text", "left_null_text", "left_non_string_text", "left_empty_text",
                           "left_null_id", "left_invalid_id", "left_invalid_id", "left_invalid_id",
                           "right_invalid_id", "left_invalid_id", "kept_column_type", "kept_column_type", ""]
        assert (checked[0].left_id, checked[0].right_id) == ("q1", "7")
        assert checked[-1].left_id == str(2 ** 70)
    else:
        assert (checked[0].left_id, checked[0].right_id) == (text_id("red shoes"), text_id("shoes"))
        assert reasons[10] == "right_empty_text"
    assert checked[0].kept == (1,) and checked[0].source == "p.jsonl:1"


def test_pairs_of_ids_are_checked_as_the_oracle_checks_them_row_by_row():
    columns = MODES[IDS]
    converted = table_from_rows(ROWS, columns, KEPT)
    prepared = prepare_pairs(converted.table, columns, KEPT, 0, np.arange(1, len(ROWS) + 1), "p.jsonl",
                             lambda picked: [ROWS[r] for r in picked], converted.non_string, converted.misfit)
    expected = [extract_pair(row, columns, KEPT) for row in sourced(ROWS)]
    assert prepared.dead_letters == [e for e in expected if not hasattr(e, "left_id")]
    good = [e for e in expected if hasattr(e, "left_id")]
    assert prepared.pairs.select(["left_id", "right_id"]).to_pylist() == [
        {"left_id": e.left_id, "right_id": e.right_id} for e in good]
    assert [l.reason for l in prepared.dead_letters][:3] == ["left_null_id", "left_non_string_id",
                                                             "left_non_string_id"]


def test_read_items_keep_their_order_across_batches_and_the_readers_dead_letters():
    from pipeline.dead_letters import DeadLetter
    bad_json = DeadLetter("invalid_json", "line is not valid JSON", "p.jsonl:99", {"line": "{"})
    items = sourced(ROWS)
    items.insert(3, bad_json)
    out = list(check_read_items(items, MODES[TEXTS_AND_IDS], batch_rows=4))
    assert [item for item, _ in out] == items
    assert out[3][1] is None
    assert [pair for _, pair in out if pair is not None] == check_pair_rows(sourced(ROWS), MODES[TEXTS_AND_IDS])


def test_labeled_pairs_are_read_with_the_same_checks_up_to_the_limit(tmp_path):
    """train_teacher / evaluate read their pairs into memory through the same validator: every row
    read is a pair or one dead letter (the reader's, the pair's or the label's), in file order."""
    import json

    from encoders.teacher import TeacherTask
    from pipeline.datasets import read_labeled_pairs
    from pipeline.readers import InputFile

    lines = [json.dumps({"a": "x", "b": "y", "label": 1}), "{not json", json.dumps({"a": "", "b": "y", "label": 0}),
             json.dumps({"a": "x", "b": 3, "label": 0}), json.dumps({"a": "x", "b": "z", "label": None}),
             json.dumps({"a": "u", "b": "v", "label": 0})]
    path = tmp_path / "labeled.jsonl"
    path.write_text("\n".join(lines) + "\n")
    files = [InputFile(str(path), "jsonl", None)]
    columns = PairColumns(left="a", right="b")
    read = read_labeled_pairs(files, columns, "label", TeacherTask("binary"))
    assert read.rows_read == 6 and (read.lefts, read.rights, read.targets) == (["x", "u"], ["y", "v"], [1.0, 0.0])
    assert [(l.reason, l.source.rsplit(":", 1)[1]) for l in read.skipped] == [
        ("invalid_json", "2"), ("left_empty_text", "3"), ("right_non_string_text", "4"), ("null_label", "5")]
    limited = read_labeled_pairs(files, columns, "label", TeacherTask("binary"), limit=3)
    assert limited.rows_read == 3 and limited.lefts == ["x"] and len(limited.skipped) == 2
