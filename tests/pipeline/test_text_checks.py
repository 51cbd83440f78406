"""What counts as an empty text: ``is_blank`` and ``blank_mask`` agree on every code point, and
every text check in the jobs (``extract_text``, the pair validator ``check_pair_rows``) dead-letters such texts."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline import dead_letters as dl
from pipeline.text_checks import TextColumns, extract_text
from pipeline.pair_checks import check_pair_rows
from pipeline.pairs import PairColumns
from pipeline.readers import SourcedRow
from pipeline.text_checks import blank_mask, is_blank

# Every Unicode scalar value: Arrow strings are UTF-8, which cannot hold the surrogates.
ALL_CODE_POINTS = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]

INVISIBLE = {
    "nul": "\x00",
    "nuls": "\x00\x00\x00",
    "zero-width space": "\u200b",
    "byte order mark": "\ufeff",
    "zero-width space and bom": "\u200b\ufeff\u200b",
    "c0 controls": "\x01\x02\x07\x1b\x7f",
    "c1 controls": "\x80\x85\x9f",
    "combining marks alone": "\u0301\u0308\u20dd",
    "joiners and word joiner": "\u200c\u200d\u2060",
    "soft hyphen": "\u00ad",
    "bidi marks": "\u200e\u200f\u202e",
    "hangul filler": "\u3164",
    "blank braille": "\u2800",
    "mixed with whitespace": " \t\u00a0\u3000\u200b\n",
}


def test_blank_mask_equals_is_blank_on_every_code_point():
    texts = pa.array(ALL_CODE_POINTS, pa.string())
    expected = np.fromiter((is_blank(t) for t in ALL_CODE_POINTS), dtype=bool, count=len(ALL_CODE_POINTS))
    mask = blank_mask(texts)
    differ = [f"U+{ord(ALL_CODE_POINTS[i]):04X}" for i in np.flatnonzero(mask != expected)[:10]]
    assert not differ, f"blank_mask and is_blank disagree on {differ}"
    # The rule is not vacuous either way: thousands of blank code points, and letters are not.
    assert 1000 < expected.sum() < 10000
    # One visible character after any code point makes the text non-blank, in both.
    suffixed = [c + "x" for c in ALL_CODE_POINTS]
    assert not blank_mask(pa.array(suffixed, pa.string())).any()
    assert not any(is_blank(t) for t in suffixed[::997])


def test_blank_mask_on_chunked_columns_with_nulls():
    column = pa.chunked_array([["a", None, "\u200b"], ["", " b ", "\x00"]])
    assert blank_mask(column).tolist() == [False, False, True, True, False, True]


@pytest.mark.parametrize("name", sorted(INVISIBLE))
def test_invisible_texts_are_empty_text(name):
    text = INVISIBLE[name]
    assert is_blank(text)
    result = extract_text(SourcedRow("f.jsonl:1", {"text": text}), TextColumns("text"))
    assert result.reason == dl.REASON_EMPTY_TEXT
    assert "no visible character" in result.detail
    # Pairs (teacher, labeling, training) use the same check, with the side in front.
    [pair] = check_pair_rows([SourcedRow("f.jsonl:1", {"left": "a real text", "right": text})], PairColumns())
    assert pair.reason == "right_empty_text"


@pytest.mark.parametrize("text", ["a", "\u200ba\u200b", "\x00x", "e\u0301", " . ", "\u3164\u4e00", "\U0001f600"])
def test_one_visible_character_keeps_the_text_as_it_is(text):
    assert not is_blank(text)
    result = extract_text(SourcedRow("f.jsonl:1", {"text": text}), TextColumns("text"))
    assert result.text == text


def test_invisible_ids_are_invalid_like_invisible_texts():
    result = extract_text(SourcedRow("f.jsonl:1", {"id": "\u200b", "text": "fine"}), TextColumns("text", "id"))
    assert result.reason == dl.REASON_INVALID_ID


def test_extract_text_agrees_with_is_blank_on_every_code_point():
    """extract_text skips is_blank for texts that start with an ASCII letter or digit; whatever
    the first character, its verdict is is_blank's."""
    columns = TextColumns("text")
    for char in ALL_CODE_POINTS[:0x3000:7] + [chr(c) for c in range(128)] + ["\u3164", "\u2800", "\ufeff"]:
        result = extract_text(SourcedRow("s", {"text": char}), columns)
        assert (getattr(result, "reason", None) == dl.REASON_EMPTY_TEXT) == is_blank(char), repr(char)
