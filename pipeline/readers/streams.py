"""Opening input files: their stored bytes (:func:`open_raw`), a decompressed stream
(:func:`open_stream`: zstd checked frame by frame so a truncated file is refused, gzip member by
member), Parquet footers (:func:`parquet_file`), and the progress line's share of bytes read."""
from __future__ import annotations

import contextlib
import gzip
import io
import zlib
from typing import IO, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import progress
from pipeline.paths import escape_glob
from pipeline.readers.inputs import InputError, InputFile

# What a gzip stream raises for a truncated file (EOFError) or damaged bytes.
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)

_READ_BUFFER_BYTES = 1 << 20


def open_raw(path: str) -> IO[bytes]:
    """The file's bytes as stored (Beam must not guess compression from the extension)."""
    try:
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except (BeamIOError, OSError, ValueError) as err:
        raise InputError(f"cannot open {path}: {err}") from err


@contextlib.contextmanager
def open_stream(file: InputFile, counted: bool = False) -> Iterator[IO[bytes]]:
    """A buffered binary stream of the file's (decompressed) content. ``counted``: the bytes read
    from storage (compressed, for .zst) count as progress (``input_bytes_read``)."""
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open_raw(file.path))
        if counted:
            raw = io.BufferedReader(_CountedRaw(raw), buffer_size=_READ_BUFFER_BYTES)
        if file.compression is None:
            yield raw
            return
        if file.compression == "gzip":
            # GzipFile reads every member of a multi-member file (parts joined with `cat`, pigz
            # output) and raises EOFError at a cut, where zstd needs _ZstdFrameChecker.
            yield io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), buffer_size=_READ_BUFFER_BYTES)
            return
        checked = _ZstdFrameChecker(raw, file.path)
        # read_across_frames: files made by concatenating .zst parts (as `cat` or parallel
        # compressors do) hold several frames, and all of them are the file's content.
        decompressed = stack.enter_context(zstandard.ZstdDecompressor().stream_reader(
            checked, read_size=_READ_BUFFER_BYTES, read_across_frames=True, closefd=False))
        yield io.BufferedReader(decompressed, buffer_size=_READ_BUFFER_BYTES)


class _CountedRaw(io.RawIOBase):
    """A file's stored bytes, each read adding to this process's progress tally: the share of
    the input consumed, whose total (the files' sizes) is known before the run."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self._tally = progress.tally("input_bytes_read")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        buffer[:len(data)] = data
        self._tally[0] += len(data)
        return len(data)


def input_bytes(files: Sequence[InputFile]) -> int:
    """Stored bytes of the JSONL/CSV/TSV files among ``files`` (what ``input_bytes_read`` counts)."""
    paths = [escape_glob(f.path) for f in files if f.format != "parquet"]
    return sum(m.metadata_list[0].size_in_bytes for m in FileSystems.match(paths)) if paths else 0


def expect_inputs(files: Sequence[InputFile], row_counters: Sequence[str] = ()) -> None:
    """Tell this process's progress line how big ``files`` are, before the run: their rows (from
    the footers) as the total of each of ``row_counters`` when every file is Parquet, and the
    JSONL/CSV/TSV files' stored bytes as the total of ``input_bytes_read``."""
    from pipeline.store import count_rows   # here: the readers need the store for this alone

    if not progress.active():
        return      # --quiet: no footer is read for a line nobody sees
    size = input_bytes(files)
    totals = {"input_bytes_read": size} if size else {}
    if files and all(f.format == "parquet" for f in files):
        rows = count_rows([f.path for f in files])
        totals.update({name: rows for name in row_counters})
    progress.expect(totals)

def parquet_file(raw: IO[bytes], path: str) -> pq.ParquetFile:
    """A Parquet file over ``raw`` (the bytes of ``path``); InputError naming ``path`` when it is not one."""
    try:
        return pq.ParquetFile(raw)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path} is not a valid Parquet file: {err}") from err



class _ZstdFrameChecker:
    """Passes compressed bytes through to the decompressor while following zstd's frame layout.

    zstandard's stream reader treats input that ends in the middle of a frame as a normal end of
    data, so a truncated file (an interrupted upload or copy) would lose its last rows silently.
    Following the frame and block headers (RFC 8878, section 3.1) costs a few operations per
    block and tells, at the end of the input, whether it ended on a frame boundary. Content is
    not checked here: the decompressor reports corrupt blocks itself. Bytes that are not a frame
    at all stop the tracking and are likewise left to the decompressor to report.
    """

    _ZSTD_MAGIC = 0xFD2FB528
    _SKIPPABLE_MAGIC_MASK = 0xFFFFFFF0
    _SKIPPABLE_MAGIC = 0x184D2A50

    def __init__(self, raw: IO[bytes], path: str):
        self._raw = raw
        self._path = path
        self._bytes_seen = 0
        self._tracking = True
        self._skip = 0                # bytes to pass over before the next header
        self._header = bytearray()    # the header being collected
        self._need = 4                # its length
        self._on_header = self._on_magic
        self._has_checksum = False

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self._bytes_seen += len(data)
            if self._tracking:
                self._follow(data)
        else:
            self._check_complete()
        return data

    def _follow(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end and self._tracking:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._need - len(self._header), end - pos)
            self._header += data[pos:pos + step]
            pos += step
            if len(self._header) == self._need:
                header = bytes(self._header)
                self._header.clear()
                self._on_header(header)

    def _expect(self, length: int, handler, skip_first: int = 0) -> None:
        self._skip, self._need, self._on_header = skip_first, length, handler

    def _on_magic(self, header: bytes) -> None:
        magic = int.from_bytes(header, "little")
        if magic == self._ZSTD_MAGIC:
            self._expect(1, self._on_frame_descriptor)
        elif magic & self._SKIPPABLE_MAGIC_MASK == self._SKIPPABLE_MAGIC:
            self._expect(4, self._on_skippable_size)
        else:
            self._tracking = False

    def _on_frame_descriptor(self, header: bytes) -> None:
        descriptor = header[0]
        single_segment = (descriptor >> 5) & 1
        content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        dictionary_id_bytes = (0, 1, 2, 4)[descriptor & 3]
        window_descriptor_bytes = 0 if single_segment else 1
        self._has_checksum = bool((descriptor >> 2) & 1)
        self._expect(3, self._on_block_header,
                     skip_first=window_descriptor_bytes + dictionary_id_bytes + content_size_bytes)

    def _on_block_header(self, header: bytes) -> None:
        value = int.from_bytes(header, "little")
        last_block, block_type, block_size = value & 1, (value >> 1) & 3, value >> 3
        if block_type == 3:  # reserved: corrupt, the decompressor will say so
            self._tracking = False
            return
        content = 1 if block_type == 1 else block_size  # an RLE block stores one byte
        if last_block:
            self._expect(4, self._on_magic, skip_first=content + (4 if self._has_checksum else 0))
        else:
            self._expect(3, self._on_block_header, skip_first=content)

    def _on_skippable_size(self, header: bytes) -> None:
        self._expect(4, self._on_magic, skip_first=int.from_bytes(header, "little"))

    def _check_complete(self) -> None:
        if self._bytes_seen == 0:
            raise InputError(f"{self._path} is empty, so it is not zstd-compressed data (a .zst "
                             "file holds at least one zstd frame)")
        at_boundary = (self._skip == 0 and not self._header and self._on_header == self._on_magic)
        if self._tracking and not at_boundary:
            raise InputError(f"{self._path} is truncated: its zstd data ends in the middle of a "
                             "frame, so rows at the end are missing (was the file cut off while "
                             "being written or copied?)")
