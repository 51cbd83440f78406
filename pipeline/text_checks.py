"""What counts as an empty text: one definition, in Python and as an RE2 pattern for pyarrow.

A text is *empty* (dead-lettered as ``empty_text`` by every job) when it has no character a
reader could see. Every character of such a text is one of:

* whitespace (``str.isspace``) or a separator (Unicode categories Zs, Zl, Zp);
* a control character (Cc: NUL, the other C0 and C1 controls);
* a format character (Cf: zero-width space U+200B, joiners U+200C/U+200D, word joiner U+2060,
  byte order mark U+FEFF, soft hyphen U+00AD, bidirectional marks ...);
* a combining mark (Mn, Me), which has nothing to combine with when nothing visible is there;
* a blank filler that fonts draw as nothing: Hangul fillers U+115F, U+1160, U+3164, U+FFA0,
  and the blank Braille pattern U+2800.

An encoder sees such a text as an empty sequence (only its special tokens), and two of them
score as identical, so they are refused rather than scored. A text with one visible character
among them is kept as it is.

:func:`is_blank` is the per-row check and the definition; :func:`blank_mask` applies it to a
whole Arrow string column: an RE2 pattern finds candidates in C++, and only those (rare in real
data) are confirmed one by one in Python. The pattern is a superset of the rule (every C and M
category, private use and unassigned included) because RE2's Unicode tables and Python's
``unicodedata`` come from different Unicode versions; confirming in Python keeps one answer.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import dead_letters as dl
from pipeline.dead_letters import DeadLetter
from pipeline.text_ids import text_id

if TYPE_CHECKING:
    from pipeline.readers import SourcedRow

BLANK_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"})
BLANK_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")

# Anchored: the whole text could be blank (or is empty). \s covers the ASCII whitespace RE2
# knows; \p{Z} and \p{C} the rest of str.isspace; \p{C} and \p{M} are wider than the rule.
BLANK_CANDIDATE_RE2 = r"^[\s\p{Z}\p{C}\p{M}\x{115F}\x{1160}\x{3164}\x{FFA0}\x{2800}]*$"


def is_blank_char(char: str) -> bool:
    """True when ``char`` is invisible on its own (see the module docstring)."""
    return char.isspace() or char in BLANK_FILLERS or unicodedata.category(char) in BLANK_CATEGORIES


def is_blank(text: str) -> bool:
    """True when ``text`` has no visible character. Stops at the first visible one, so an
    ordinary text costs one character's check."""
    return all(is_blank_char(char) for char in text)


def blank_mask(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(rows,) string column -> (rows,) bool, True where the text is blank; nulls are False.

    Exactly ``[is_blank(t) for t in texts]`` for non-null texts, at C++ speed for the texts that
    are visibly not blank (all but the rare candidates).
    """
    candidates = pc.fill_null(pc.match_substring_regex(texts, BLANK_CANDIDATE_RE2), False)
    mask = np.asarray(candidates.to_numpy(zero_copy_only=False), dtype=bool)
    for row in np.flatnonzero(mask):
        mask[row] = is_blank(texts[int(row)].as_py())
    return mask


@dataclass(frozen=True)
class TextColumns:
    """Which fields of a row hold the text and (optionally) its id."""
    text: str
    id: str | None = None


class TextRow(NamedTuple):
    """A row whose text is usable, with its id (given or derived) and where it came from."""
    id: str
    text: str
    row: SourcedRow


def extract_text(row: SourcedRow, columns: TextColumns) -> TextRow | DeadLetter:
    """Validate one row's text (and id). Returns the usable TextRow, or the reason it is not."""
    def reject(reason: str, detail: str) -> DeadLetter:
        return DeadLetter(reason, detail, row.source, row.fields)

    text = row.fields.get(columns.text)
    if text is None:
        missing = columns.text not in row.fields
        return reject(dl.REASON_NULL_TEXT, f"text column {columns.text!r} is "
                                           + ("absent from this row" if missing else "null"))
    if not isinstance(text, str):
        return reject(dl.REASON_NON_STRING_TEXT,
                      f"text column {columns.text!r} holds a {type(text).__name__}, not a string: {text!r:.80}")
    if not _starts_visibly(text) and is_blank(text):
        # Whitespace, NUL and other controls, zero-width/format characters, lone combining
        # marks: an encoder sees an empty sequence, and two such texts would score as equal.
        return reject(dl.REASON_EMPTY_TEXT, f"text column {columns.text!r} has no visible character "
                                            f"(empty, or only whitespace/control/format/combining characters): "
                                            f"{text!r:.80}")
    if columns.id is None:
        return TextRow(text_id(text), text, row)
    id_ = row_id(row, columns.id)
    if isinstance(id_, tuple):
        return reject(*id_)
    return TextRow(id_, text, row)


def row_id(row: SourcedRow, column: str) -> str | tuple[str, str]:
    """The id a row gives in ``column`` (integers in their decimal text, as pairs name them), or
    (dead-letter reason, detail) when no pair could name it."""
    raw_id = row.fields.get(column)
    if raw_id is None:
        return dl.REASON_NULL_ID, f"id column {column!r} is null or absent"
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return dl.REASON_INVALID_ID, (f"id column {column!r} holds a {type(raw_id).__name__}; ids are strings or "
                                      "integers")
    if isinstance(raw_id, str) and is_blank(raw_id):
        # The same rule as for texts: in id mode a pair's ids are checked as texts, so a text
        # table must not keep an id that no pair could ever name.
        return dl.REASON_INVALID_ID, f"id column {column!r} has no visible character: {raw_id!r:.80}"
    return str(raw_id)


def _starts_visibly(text: str) -> bool:
    """An ASCII letter or digit first: certainly not blank. Most texts start so, and this costs a
    tenth of :func:`is_blank`, which stays the one definition for every other text."""
    first = text[:1]
    return first.isascii() and first.isalnum()


class UniqueText(NamedTuple):
    """A text to encode once, and the ids (one or more) that name it."""
    text: str
    ids: tuple[str, ...]


def resolve_id(id_: str, rows: Iterable[TextRow]) -> tuple[UniqueText | None, int, list[DeadLetter]]:
    """All rows that share one id -> (the unique text, duplicate row count, dead letters).

    Rows repeating the same text are duplicates of the first. An id given with two or more
    different texts is ambiguous: every one of its rows is dead-lettered, none is kept.
    """
    rows = list(rows)
    texts = {r.text for r in rows}
    if len(texts) == 1:
        return UniqueText(rows[0].text, (id_,)), len(rows) - 1, []
    detail = f"id {id_!r} is given with {len(texts)} different texts in {len(rows)} rows"
    return None, 0, [DeadLetter(dl.REASON_CONFLICTING_ID, detail, r.row.source, r.row.fields) for r in rows]
