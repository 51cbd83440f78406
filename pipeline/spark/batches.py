"""Arrow batches sized by bytes as well as rows, so that a batch of long rows (store tokens, long
texts) cannot run a Python worker out of memory.

Spark cuts the batches it hands a task by ``spark.sql.execution.arrow.maxRecordsPerBatch`` (rows)
and, when set, ``spark.sql.execution.arrow.maxBytesPerBatch``; pairscore sets the latter to
:data:`DEFAULT_BATCH_BYTES` on a session where it is unset (Spark's default is no limit) and cuts
what its own tasks build and score by the same number of bytes:

* rows carried between steps (the bucketed join's store columns, the texts read for labeling):
  :func:`byte_slices`, from each row's size;
* pairs looked up in the stores and scored: :func:`scored_rows`, from the bytes the head's
  input takes per pair once the stored tokens are decoded.

One knob for both: ``--spark-conf spark.sql.execution.arrow.maxBytesPerBatch=16m``.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.store import StoreLayout

BYTES_CONF = "spark.sql.execution.arrow.maxBytesPerBatch"
DEFAULT_BATCH_BYTES = 64 << 20
_UNLIMITED = 2**31 - 1          # Spark's default for BYTES_CONF
_UNITS = {"b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}


def parse_bytes(value: str) -> int:
    """``"65536"``, ``"64k"``, ``"16m"``, ``"1g"`` -> bytes."""
    text = str(value).strip().lower()
    number = text.rstrip("kmgb")
    return int(float(number) * _UNITS.get(text[len(number):], 1))


def arrow_batch_bytes(spark) -> int:
    """The session's byte budget of an Arrow batch: ``spark.sql.execution.arrow.maxBytesPerBatch``
    when it is set, else :data:`DEFAULT_BATCH_BYTES`, which is then set on the session so that
    the batches Spark hands the tasks are capped too."""
    value = spark.conf.get(BYTES_CONF, None)
    if value is None or parse_bytes(value) >= _UNLIMITED:
        spark.conf.set(BYTES_CONF, str(DEFAULT_BATCH_BYTES))
        return DEFAULT_BATCH_BYTES
    return parse_bytes(value)


def row_bytes(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """(rows,) int64: the bytes each row takes in Arrow, column by column (values and offsets;
    a column of another type counts its average)."""
    sizes = np.zeros(table.num_rows, dtype=np.int64)
    for column in table.columns:
        kind = column.type
        if pa.types.is_fixed_size_binary(kind):
            sizes += kind.byte_width
        elif pa.types.is_binary(kind) or pa.types.is_string(kind) or pa.types.is_large_binary(kind) \
                or pa.types.is_large_string(kind):
            sizes += pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64) + 4
        elif pa.types.is_primitive(kind):
            sizes += max(1, kind.bit_width // 8)
        elif pa.types.is_list(kind) and pa.types.is_primitive(kind.value_type):
            lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
            sizes += lengths * max(1, kind.value_type.bit_width // 8) + 4
        elif table.num_rows:
            sizes += column.nbytes // table.num_rows + 1
    return sizes


def byte_slices(table: pa.Table, max_rows: int, max_bytes: int) -> Iterator[pa.Table]:
    """``table`` in order as slices of at most ``max_rows`` rows and at most ``max_bytes`` bytes
    (:func:`row_bytes`); a single row larger than ``max_bytes`` is a slice of its own."""
    ends = np.cumsum(row_bytes(table))
    start = 0
    while start < table.num_rows:
        before = ends[start - 1] if start else 0
        end = int(np.searchsorted(ends, before + max_bytes, side="right"))
        end = min(max(end, start + 1), start + max_rows, table.num_rows)
        yield table.slice(start, end - start)
        start = end


def scored_rows(layouts: dict[str, StoreLayout], max_rows: int, max_bytes: int) -> int:
    """Pairs per scoring batch: at most ``max_rows``, and as many as fit ``max_bytes`` once both
    sides' stored tokens (and pooled embeddings) are decoded to float32 for the head."""
    per_pair = sum(4 * (layout.tokens_kept * layout.dim + (layout.pooled_dim or 0)) for layout in layouts.values())
    return max(1, min(max_rows, max_bytes // max(1, per_pair)))
