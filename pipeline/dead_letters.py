"""Dead letters: rows that could not be used, kept with the reason why.

Every job writes them to ``DIR/_dead_letter/*.parquet`` with one fixed schema so that all
files of a run (and of every job) read as one table:

========  ======================================================================
column    meaning
========  ======================================================================
reason    short machine-readable code, one of the ``REASON_*`` constants below
detail    one human sentence: what was wrong, with the offending value
source    where the row came from: ``path:line`` (text files) or ``path:row`` (Parquet)
row       the original row's fields as a JSON object (invalid bytes shown as U+FFFD)
========  ======================================================================
"""
from __future__ import annotations

import json
from typing import Any, Mapping, NamedTuple

import pyarrow as pa

from pipeline.errors import DeadLetterLimit

# Reading
REASON_INVALID_UTF8 = "invalid_utf8"
REASON_INVALID_JSON = "invalid_json"
REASON_NOT_AN_OBJECT = "not_a_json_object"
REASON_BAD_FIELD_COUNT = "bad_field_count"
# Text values
REASON_NULL_TEXT = "null_text"
REASON_EMPTY_TEXT = "empty_text"
REASON_NON_STRING_TEXT = "non_string_text"
REASON_NULL_ID = "null_id"
REASON_INVALID_ID = "invalid_id"
REASON_CONFLICTING_ID = "conflicting_id"
# Pairs: a side's text or id reason with the side in front (``left_null_text``, ``right_invalid_id``;
# :data:`pipeline.pairs.SIDE_CHECKS` says which each kind of pair column gets), and these:
REASON_NON_STRING_ID = "non_string_id"       # a pair's id (id mode): neither a string nor an integer
REASON_EMPTY_ID = "empty_id"                 # a pair's id (id mode): no visible character
REASON_TEXT_MISSING = "text_missing"         # a pair's id (id mode) that no text table holds
REASON_KEPT_COLUMN_TYPE = "kept_column_type"  # a kept value that does not fit the column's decided type
# Labels (training sets)
REASON_NULL_LABEL = "null_label"
REASON_INVALID_LABEL = "invalid_label"

DEAD_LETTER_SCHEMA = pa.schema([
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("source", pa.string()),
    ("row", pa.string()),
])


class DeadLetter(NamedTuple):
    """One unusable row. ``row`` holds the original fields, as read."""
    reason: str
    detail: str
    source: str
    row: dict

    def to_record(self) -> dict[str, str]:
        """The row as written to ``_dead_letter/*.parquet`` (see module docstring)."""
        return {
            "reason": self.reason,
            "detail": self.detail,
            "source": self.source,
            "row": json.dumps(self.row, ensure_ascii=False, default=_json_fallback, sort_keys=True),
        }


def count_reasons(letters) -> dict[str, int]:
    """Dead letters -> {reason: count}, sorted by reason (what a summary's ``dead_letters`` holds)."""
    counts: dict[str, int] = {}
    for letter in letters:
        counts[letter.reason] = counts.get(letter.reason, 0) + 1
    return dict(sorted(counts.items()))


def describe_reasons(letters) -> str:
    """Dead letters -> ``"reason: count, ..."``, for an error message."""
    return ", ".join(f"{reason}: {count}" for reason, count in count_reasons(letters).items())


def check_dead_letter_limit(rows_read: int, rows_dead: int, reasons: Mapping[str, int], limit: float,
                            accounting: str) -> None:
    """Refuse to commit a run that dead-lettered more than ``limit`` (``--max-dead-letter-fraction``)
    of the ``rows_read`` rows, or every one of them whatever the limit: raises DeadLetterLimit
    (exit 3, nothing committed) with one line saying how many rows went where (``accounting``, the
    summary's reconciliation) and the top reasons (``reasons``: {reason: count}). Called with the
    reconciled counts, right before the commit."""
    if rows_dead <= 0:
        return
    every = rows_dead >= rows_read
    fraction = rows_dead / rows_read if rows_read else 1.0
    if not every and fraction <= limit:
        return
    top = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))[:3]
    shown = ", ".join(f"{reason} {count:,}" for reason, count in top)
    more = f" and {len(reasons) - len(top)} more" if len(reasons) > len(top) else ""
    why = "every row" if every else f"{fraction:.1%} > --max-dead-letter-fraction {limit:g}"
    raise DeadLetterLimit(f"{rows_dead:,} of {rows_read:,} rows dead-lettered ({why}): {accounting}; top reasons: "
                          f"{shown}{more}. Nothing was committed")


def _json_fallback(value: Any) -> str:
    """Render values JSON cannot hold (bytes, numpy scalars, timestamps) readably."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return repr(value) if not hasattr(value, "isoformat") else value.isoformat()
