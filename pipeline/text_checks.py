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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
