"""One slice of a pair file -> prepared batches: the read half of stage two, engine-free.

Both engines call :func:`read_prepared` inside their workers (Beam's ``ReadPairBatches`` DoFn, the
Spark score task), so dead letters, their ``source`` and the rows read are the same on both.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from pipeline.dead_letters import DeadLetter
from pipeline.readers import ReadSlice, read_parquet_slice, read_row_batches
from pipeline.pair_checks import PreparedPairs, prepare_pairs, table_from_rows
from pipeline.pairs import PairColumns


def read_prepared(piece: ReadSlice, columns: PairColumns, kept: Sequence[pa.Field], file_index: int,
                  batch_rows: int) -> Iterator[tuple[int, PreparedPairs | DeadLetter]]:
    """(rows read, what they became) for each batch of ``piece``, in file order: a
    :class:`PreparedPairs` of up to ``batch_rows`` rows, or a malformed text record's DeadLetter
    (one row). ``file_index``: the file's index in the job's list of pair files (the ``_file``
    column; dead letters name the path)."""
    file = piece.file
    if file.format == "parquet":
        for part in read_parquet_slice(piece, columns.needed(), batch_rows):
            yield part.batch.num_rows, prepare_pairs(pa.Table.from_batches([part.batch]), columns, kept, file_index,
                                                     part.positions, file.path, part.originals)
        return
    for item in read_row_batches(file, batch_rows):
        if isinstance(item, DeadLetter):
            yield 1, item
            continue
        converted = table_from_rows(item.rows, columns, kept)
        yield len(item.rows), prepare_pairs(
            converted.table, columns, kept, file_index, np.asarray(item.lines, np.int64), file.path,
            lambda rows, item=item: [item.rows[r] for r in rows], converted.non_string, converted.misfit)
