"""Reading tabular input files row by row, robustly.

Every job reads its tables (pairs, texts, training sets) through this package; each concern is
one module, and the names every job uses are importable from ``pipeline.readers`` itself:

* :mod:`~pipeline.readers.inputs` -- :func:`expand_inputs` turns the ``--input``-style paths, globs
  and directories into a sorted list of :class:`InputFile` (format from the extension, or
  ``--format``; zstd or gzip compression from a ``.zst`` or ``.gz`` suffix);
* :mod:`~pipeline.readers.checks` -- :func:`check_columns` runs before the pipeline starts and fails
  fast, naming the file, when a file is unreadable or lacks a required column (a job that dies
  after an hour of encoding because file 37 has no ``right`` column is the failure this prevents);
* :mod:`~pipeline.readers.rows` -- :func:`read_rows` streams one file, yielding :class:`SourcedRow`
  for good rows and :class:`~pipeline.dead_letters.DeadLetter` for malformed records;
* :mod:`~pipeline.readers.streams` -- opening a file: stored bytes, decompression (a truncated zstd
  stream is caught frame by frame), Parquet footers, the progress line's bytes read;
* :mod:`~pipeline.readers.batches` -- stage two's columnar reading: slices of a file that workers
  read apart, record batches of a Parquet slice, batches of parsed text rows, rows counted
  before the run.

The contract for problems is split in two on purpose:

* a *record* that is malformed (invalid UTF-8, invalid JSON, a CSV row with the wrong number of
  fields) becomes a dead letter and the job goes on;
* a *file* that is damaged (not Parquet, a corrupt or truncated zstd or gzip stream, a corrupt Parquet page)
  raises :class:`InputError` naming the file, because rows after the damage are lost and a job that
  succeeds with silently missing rows is worse than one that fails.

Memory stays bounded whatever the file size: Parquet is read in record batches, zstd and gzip
through streaming decompressors, text files line by line (a single line or CSV record must fit in memory).

Paths go through Beam's ``FileSystems``, so ``gs://`` and ``s3://`` work where Beam's extras are
installed.
"""
from pipeline.readers.batches import (ParquetBatch, ReadSlice, RowBatch, count_input_rows, read_parquet_slice,
                                      read_row_batches, read_slices)
from pipeline.readers.checks import JSONL_PROBE_LINES, check_columns
from pipeline.readers.inputs import FORMATS, InputError, InputFile, SourcedRow, detect_format, expand_inputs, worker_path
from pipeline.readers.rows import read_rows
from pipeline.readers.streams import expect_inputs, input_bytes, open_raw, parquet_file

__all__ = ["FORMATS", "JSONL_PROBE_LINES", "InputError", "InputFile", "ParquetBatch", "ReadSlice", "RowBatch",
           "SourcedRow", "check_columns", "count_input_rows", "detect_format", "expand_inputs", "expect_inputs",
           "input_bytes", "open_raw", "parquet_file", "read_parquet_slice", "read_row_batches", "read_rows",
           "read_slices", "worker_path"]
