"""DedupeTexts and extract_text as Beam transforms and plain functions."""
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import dead_letters as dl
from pipeline.beam.encode import DEAD_LETTER_TAG, DedupeTexts
from pipeline.text_checks import TextColumns, UniqueText, extract_text
from pipeline.readers import SourcedRow
from pipeline.text_ids import text_id


def rows(*fields):
    return [SourcedRow(f"f.jsonl:{i + 1}", f) for i, f in enumerate(fields)]


def test_extract_text_reasons():
    cols = TextColumns("text", "id")
    cases = {
        dl.REASON_NULL_TEXT: {"id": "a", "text": None},
        dl.REASON_EMPTY_TEXT: {"id": "a", "text": " \t\n"},
        dl.REASON_NON_STRING_TEXT: {"id": "a", "text": 12},
        dl.REASON_NULL_ID: {"text": "fine"},
        dl.REASON_INVALID_ID: {"id": [1], "text": "fine"},
    }
    for reason, fields in cases.items():
        assert extract_text(SourcedRow("s", fields), cols).reason == reason
    assert extract_text(SourcedRow("s", {"id": 7, "text": "ok"}), cols).id == "7"


def test_dedupe_without_ids_keys_by_content():
    with TestPipeline(runner="FnApiRunner") as p:
        out = (p | beam.Create(rows({"text": "a"}, {"text": "b"}, {"text": "a"}, {"text": ""}))
               | DedupeTexts(TextColumns("text")))
        assert_that(out["unique"], equal_to([UniqueText("a", (text_id("a"),)), UniqueText("b", (text_id("b"),))]),
                    label="unique")
        assert_that(out[DEAD_LETTER_TAG] | beam.Map(lambda d: (d.reason, d.source)),
                    equal_to([(dl.REASON_EMPTY_TEXT, "f.jsonl:4")]), label="dead")


def test_dedupe_with_ids_dead_letters_every_row_of_a_conflicting_id_and_shares_texts():
    data = rows({"id": "1", "text": "same"}, {"id": "1", "text": "same"},
                {"id": "2", "text": "one text"}, {"id": "2", "text": "another text"},
                {"id": "3", "text": "same"})
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(data) | DedupeTexts(TextColumns("text", "id"))
        # ids 1 and 3 share a text: encoded once, two ids.
        assert_that(out["unique"], equal_to([UniqueText("same", ("1", "3"))]), label="unique")
        assert_that(out[DEAD_LETTER_TAG] | beam.Map(lambda d: (d.reason, d.source)),
                    equal_to([(dl.REASON_CONFLICTING_ID, "f.jsonl:3"), (dl.REASON_CONFLICTING_ID, "f.jsonl:4")]),
                    label="dead")
