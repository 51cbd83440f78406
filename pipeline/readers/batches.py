"""Reading in columnar batches (stage two): a file cut into slices that workers read apart
(:func:`read_slices`), a Parquet slice as record batches of the needed columns, a text file as
batches of parsed rows, and the rows of the inputs counted (or estimated) before the run."""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import zstandard
from apache_beam.io.filesystems import FileSystems

from pipeline.dead_letters import DeadLetter
from pipeline.paths import escape_glob, gzip_problem
from pipeline.readers.inputs import InputError, InputFile
from pipeline.readers.rows import read_rows
from pipeline.readers.streams import GZIP_ERRORS, open_raw, parquet_file


@dataclass(frozen=True)
class ReadSlice:
    """A unit of reading work: a whole text file, or a run of row groups of a Parquet file, so
    that one big Parquet file is read by many workers at once. ``row_groups`` is empty for text
    files; ``first_row`` is the file's row index of the slice's first row (Parquet)."""
    file: InputFile
    row_groups: tuple[int, ...] = ()
    first_row: int = 0


def read_slices(file: InputFile, target_rows: int = 1 << 17) -> list[ReadSlice]:
    """The slices of one file: runs of whole Parquet row groups of about ``target_rows`` rows
    (at least one group each); a text file is one slice (a CSV record may span lines and zstd
    streams cannot be entered in the middle, so byte ranges are not safe there)."""
    if file.format != "parquet":
        return [ReadSlice(file)]
    with open_raw(file.path) as raw:
        metadata = parquet_file(raw, file.path).metadata
    slices, groups, first, rows, start = [], [], 0, 0, 0
    for group in range(metadata.num_row_groups):
        if not groups:
            first = start
        groups.append(group)
        rows += metadata.row_group(group).num_rows
        start += metadata.row_group(group).num_rows
        if rows >= target_rows:
            slices.append(ReadSlice(file, tuple(groups), first))
            groups, rows = [], 0
    if groups:
        slices.append(ReadSlice(file, tuple(groups), first))
    return slices


def count_input_rows(files: Sequence[InputFile]) -> int:
    """Rows of the input files before the pipeline runs: exact for Parquet (footers) and for
    small text files; large text files are extrapolated from their first 4 MB."""
    from pipeline.store import count_rows   # here: the readers need the store for this alone

    return sum(count_rows([f.path]) if f.format == "parquet" else _estimate_lines(f) for f in files)


def _estimate_lines(file: InputFile, sample_bytes: int = 1 << 22) -> int:
    size = FileSystems.match([escape_glob(file.path)])[0].metadata_list[0].size_in_bytes
    with FileSystems.open(file.path, compression_type="uncompressed") as raw:
        stream = (raw if file.compression is None else gzip.GzipFile(fileobj=raw, mode="rb")
                  if file.compression == "gzip" else
                  zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
        try:
            sample = stream.read(sample_bytes)
            finished = len(sample) < sample_bytes or not stream.read(1)
        except GZIP_ERRORS as err:
            raise InputError(gzip_problem(file.path, err)) from err
        consumed = raw.tell() if file.compressed else len(sample)
    lines = sample.count(b"\n") + (1 if sample and not sample.endswith(b"\n") else 0)
    return lines if finished else int(lines * size / max(consumed, 1)) + 1


class ParquetBatch(NamedTuple):
    """Rows of a Parquet slice: the ``columns`` asked for as a record batch, the file's row index
    of each row, and a way to fetch whole original rows (for dead letters) by batch row."""
    batch: pa.RecordBatch
    positions: Any  # numpy (rows,) int64
    originals: Any  # callable: numpy rows -> list of dicts (every column of those rows)


def read_parquet_slice(piece: ReadSlice, columns: Sequence[str], batch_rows: int) -> Iterator[ParquetBatch]:
    """Record batches of ``columns`` over a Parquet slice, in file order.

    Raises:
        InputError: a file that is not Parquet or whose data is corrupt, naming it.
    """
    path = piece.file.path
    with open_raw(path) as raw:
        parquet = parquet_file(raw, path)
        start = piece.first_row
        for group in piece.row_groups:
            offset = 0
            try:
                batches = list(parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=list(columns)))
            except (pa.ArrowException, OSError) as err:
                raise InputError(f"{path} is corrupt: reading Parquet row group {group} (rows from {start}) "
                                 f"failed ({err}); the rest of the file cannot be read") from err
            for batch in batches:
                def originals(rows, group=group, offset=offset):
                    # Rare (bad rows only): the whole row group is read again with every column.
                    with open_raw(path) as again:
                        whole = parquet_file(again, path).read_row_group(group)
                    return whole.take(pa.array(np.asarray(rows) + offset)).to_pylist()
                yield ParquetBatch(batch, np.arange(start + offset, start + offset + batch.num_rows, dtype=np.int64),
                                   originals)
                offset += batch.num_rows
            start += parquet.metadata.row_group(group).num_rows


class RowBatch(NamedTuple):
    """Good rows of a text file (their whole fields) and each one's line number."""
    rows: list
    lines: list


def read_row_batches(file: InputFile, batch_rows: int) -> Iterator[RowBatch | DeadLetter]:
    """A JSONL/CSV/TSV file as batches of up to ``batch_rows`` good rows, with each malformed
    record as a DeadLetter (as :func:`read_rows` judges them), in file order."""
    rows, lines = [], []
    for item in read_rows(file):
        if isinstance(item, DeadLetter):
            yield item
            continue
        rows.append(item.fields)
        lines.append(int(item.source.rsplit(":", 1)[1]))
        if len(rows) >= batch_rows:
            yield RowBatch(rows, lines)
            rows, lines = [], []
    if rows:
        yield RowBatch(rows, lines)
