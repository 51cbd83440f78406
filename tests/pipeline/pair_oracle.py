"""The pair contract (pipeline/pairs.py) one row at a time: the reference the columnar validator
(pipeline/pair_checks.py) is tested against. Built on stage one's own per-row rules
(``pipeline.text_checks.extract_text`` and ``row_id``), so the two definitions are independent.
"""
from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from pipeline.dead_letters import DeadLetter
from pipeline.pairs import PairColumns, TextPair, canonical_id, kept_values
from pipeline.readers import SourcedRow
from pipeline.text_checks import TextColumns, extract_text, row_id


def extract_pair(row: SourcedRow, columns: PairColumns, kept: Sequence[pa.Field] = ()) -> TextPair | DeadLetter:
    """One row -> its TextPair (texts None in ids mode), or the first reason it is unusable."""
    ids, texts = [], []
    for side in ("left", "right"):
        text_col, id_col = (columns.left, columns.left_id) if side == "left" else (columns.right, columns.right_id)
        if text_col is None:
            # Ids mode: an integer is an id in its decimal text; otherwise the id is checked as a text.
            value = row.fields.get(id_col)
            if not isinstance(value, str) and canonical_id(value) is not None:
                ids.append(canonical_id(value))
                texts.append(None)
                continue
            result = extract_text(row, TextColumns(text=id_col, id=id_col))
            reason_of = (lambda reason: reason.replace("_text", "_id"))
        else:
            result = extract_text(row, TextColumns(text=text_col))
            reason_of = (lambda reason: reason)
            if not isinstance(result, DeadLetter) and id_col is not None:
                given = row_id(row, id_col)
                if isinstance(given, tuple):
                    result = DeadLetter(given[0], given[1], row.source, row.fields)
                else:
                    result = result._replace(id=given)
        if isinstance(result, DeadLetter):
            return DeadLetter(f"{side}_{reason_of(result.reason)}", f"{side} side: {result.detail}", row.source,
                              row.fields)
        ids.append(result.id)
        texts.append(None if text_col is None else result.text)
    for field in kept:
        value = row.fields.get(field.name)
        if kept_values([value], field)[1] is not None:
            return DeadLetter("kept_column_type",
                              f"kept column {field.name!r} holds a {type(value).__name__} ({value!r:.80}) but is "
                              f"{field.type} in the output, as decided from the inputs' first rows before the run; "
                              "the value is not changed silently", row.source, row.fields)
    return TextPair(ids[0], ids[1], texts[0], texts[1], tuple(row.fields.get(n) for n in columns.keep), row.source)
