"""The embedding store: one Parquet (zstd) row per unique text of one side, plus a manifest.

Schema (of the rows; unchanged since schema version 1)::

    id           string   the text's id (given, or text_id(text) when the input has no id column)
    text_hash    string   text_id(text): lets a later run check that an id still means the same text
    num_tokens   int32    tokens the encoder saw, special tokens included (after truncation)
    truncated    bool     the text was longer than the side's max length and was cut
    tokens       fixed_size_binary(N*D*itemsize)
                          the kept token embeddings, row-major (N, D), little-endian, in ``dtype``;
                          rows past min(num_tokens, N) are zero (they are padding)
    token_scale  float32  int8 stores only: tokens = int8 values * token_scale
    pooled       fixed_size_binary(H*2)
                          only when the model keeps it: the L2-normalised mean-pooled sentence
                          embedding, float16 little-endian

Embeddings are raw little-endian bytes rather than Parquet list<float16>, because every reader
(pandas, DuckDB, Spark, pyarrow) reads a binary column while half floats are not supported
everywhere; decoding is one call, e.g. ``numpy.frombuffer(b, "<f2").reshape(N, D)``.

``_MANIFEST.json`` beside the files records what the embeddings mean (see ``StoreManifest``).
Schema version 2 adds what the files are: each part's size and SHA-256, and the file fingerprint
of the model that wrote it (encoders/file_fingerprint.py). A run pins the parts it will read
(:class:`PartPin`, from the manifest, or from what the files show for a version 1 store) and its
workers read exactly those bytes (:func:`open_part`): a store replaced mid-run stops the run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

# The token codec and the Parquet settings are defined beside the store and used through it.
from pipeline.store_codec import (SideArrays, binary_values, decode_pooled, decode_tokens,  # noqa: F401
                                  dequantize, encode_token_block, side_arrays, token_mask)
from pipeline.choices import DTYPES
from pipeline.writers import COMPRESSION, write_json_file  # noqa: F401
from pipeline.paths import escape_glob
from pipeline.errors import UsageError
from pipeline.store_paths import MANIFEST_FILE, is_two_side_store, not_a_store_message, other_side, side_of  # noqa: F401

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Keys a version 1 manifest lacks (version 2 has them all).
V2_KEYS = ("part_bytes", "part_sha256", "model_files_fingerprint")
_HASH_CHUNK_BYTES = 8 << 20
STORE_FILE_PREFIX = "part"
STORE_FILE_SUFFIX = ".parquet"
# Part footers checked at once before a run (each is a round trip on object stores).
_CHECK_THREADS = 16


class StoreError(UsageError):
    """A ``--store`` (or a store read back) that cannot be used; the message names the file."""


@dataclass(frozen=True)
class StoreLayout:
    """What one store's rows hold: enough to build its schema and decode it."""
    side: str
    tokens_kept: int          # N (left) or M (right)
    dim: int                  # D
    dtype: str                # float16 | int8
    pooled_dim: int | None    # H when the pooled embedding is kept

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise StoreError(f"store dtype {self.dtype!r} is not allowed: choose one of {', '.join(DTYPES)}")

    @property
    def token_bytes(self) -> int:
        return self.tokens_kept * self.dim * (2 if self.dtype == "float16" else 1)

    def schema(self) -> pa.Schema:
        fields = [
            pa.field("id", pa.string(), nullable=False),
            pa.field("text_hash", pa.string(), nullable=False),
            pa.field("num_tokens", pa.int32(), nullable=False),
            pa.field("truncated", pa.bool_(), nullable=False),
            pa.field("tokens", pa.binary(self.token_bytes), nullable=False),
        ]
        if self.dtype == "int8":
            fields.append(pa.field("token_scale", pa.float32(), nullable=False))
        if self.pooled_dim is not None:
            fields.append(pa.field("pooled", pa.binary(self.pooled_dim * 2), nullable=False))
        return pa.schema(fields)


@dataclass(frozen=True)
class StoreManifest:
    """``_MANIFEST.json``: a store is usable by a model only if its fingerprint and layout match."""
    model_fingerprint: str
    encoder: str
    side: str
    tokens_kept: int
    dim: int
    dtype: str
    pooled_dim: int | None
    token_selection: str
    max_length: int
    rows: int
    files: list[str]
    schema_version: int = SCHEMA_VERSION
    part_bytes: list[int] | None = None        # version 2: each file's size, in the order of ``files``
    part_sha256: list[str] | None = None       # version 2: each file's SHA-256 hex
    model_files_fingerprint: str | None = None  # version 2: the writing model's file fingerprint (None: baseline)

    @property
    def layout(self) -> StoreLayout:
        return StoreLayout(self.side, self.tokens_kept, self.dim, self.dtype, self.pooled_dim)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        if self.schema_version < 2:   # a version 1 manifest read back is written as it was
            for key in V2_KEYS:
                del data[key]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: str = MANIFEST_FILE) -> "StoreManifest":
        """Parse and check a manifest; ``path`` names it in every error (StoreError).

        Every key must be known and of its type, and ``files`` may name only the store's own
        part files (``part*.parquet``, no directories): a store never reads outside itself."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise StoreError(f"store manifest {path} is not valid JSON: {err.msg} at line {err.lineno} "
                             f"column {err.colno}") from None
        if not isinstance(data, dict):
            raise StoreError(f"store manifest {path} holds a JSON {type(data).__name__}, not an object")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise StoreError(f"store manifest {path}: schema version {version!r} is not supported (this "
                             f"pairscore reads {' and '.join(map(str, READABLE_VERSIONS))})")
        known = [f.name for f in dataclasses.fields(cls) if version >= 2 or f.name not in V2_KEYS]
        unknown = sorted(set(data) - set(known))
        missing = [name for name in known if name not in data]
        if unknown or missing:
            parts = ([f"unknown key(s) {', '.join(map(repr, unknown))}"] if unknown else []) + \
                    ([f"missing key(s) {', '.join(map(repr, missing))}"] if missing else [])
            raise StoreError(f"store manifest {path} has {' and '.join(parts)}; a schema version "
                             f"{version} manifest has exactly {', '.join(known)}")
        problems = [p for name, value in data.items() if (p := _field_problem(name, value))]
        if not problems and version >= 2 and not len(data["files"]) == len(data["part_bytes"]) == len(
                data["part_sha256"]):
            problems.append("files, part_bytes and part_sha256 must have one entry per part file")
        if problems:
            raise StoreError(f"store manifest {path} is invalid: {'; '.join(problems)}")
        return cls(**data)


# What each manifest key may hold: (check, what is allowed).
_FIELD_RULES = {
    "model_fingerprint": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "encoder": (lambda v: isinstance(v, str), "a string"),
    "side": (lambda v: v in ("left", "right"), "'left' or 'right'"),
    "tokens_kept": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "dim": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "dtype": (lambda v: v in DTYPES, " or ".join(map(repr, DTYPES))),
    "pooled_dim": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "token_selection": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "max_length": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "rows": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "files": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), "a list of file names"),
    "schema_version": (lambda v: v in READABLE_VERSIONS, " or ".join(map(str, READABLE_VERSIONS))),
    "part_bytes": (lambda v: isinstance(v, list) and all(_is_int(n) and n >= 0 for n in v),
                   "a list of sizes in bytes"),
    "part_sha256": (lambda v: isinstance(v, list) and all(isinstance(h, str) and len(h) == 64 for h in v),
                    "a list of SHA-256 hex digests"),
    "model_files_fingerprint": (lambda v: v is None or (isinstance(v, str) and len(v) == 64),
                                "null or a SHA-256 hex digest"),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_problem(name: str, value) -> str | None:
    check, allowed = _FIELD_RULES[name]
    if not check(value):
        return f"{name} is {value!r:.80}, expected {allowed}"
    if name == "files":
        outside = [n for n in value if not is_part_file_name(n)]
        if outside:
            return (f"files lists {', '.join(repr(n) for n in outside[:3])}, which is not a part file of this "
                    f"store: a store reads only its own {STORE_FILE_PREFIX}*{STORE_FILE_SUFFIX} files, "
                    "directly inside its directory")
        if len(set(value)) != len(value):
            return "files lists a part file more than once"
    return None


def is_part_file_name(name: str) -> bool:
    """True for a bare part file name (``part-00000-of-00001.parquet``): no directory, no ``..``,
    nothing absolute, so joining it to the store's directory stays inside it."""
    return (name == name.strip() and not any(c in name for c in "/\\:\x00")
            and name.startswith(STORE_FILE_PREFIX) and name.endswith(STORE_FILE_SUFFIX)
            and name not in (".", ".."))


def read_manifest(store_dir: str) -> StoreManifest:
    """The checked manifest of one store directory (see :meth:`StoreManifest.from_json`)."""
    path = FileSystems.join(store_dir, MANIFEST_FILE)
    if not FileSystems.exists(path):
        raise StoreError(f"{store_dir!r} is not an embedding store: {path} is missing")
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StoreError(f"store manifest {path} is not UTF-8 text: {err}") from None
    return StoreManifest.from_json(text, path)


@dataclass(frozen=True)
class PartPin:
    """One store part file as a run found it at its start: its path, size and SHA-256. Workers
    read a part only through :func:`open_part`, which checks these."""
    path: str
    size: int
    sha256: str


@contextlib.contextmanager
def open_part(path: str) -> Iterator[tuple[IO[bytes], int, str]]:
    """(handle, size, SHA-256) of a part file: the whole file is read once through the handle to
    hash it, then the handle is rewound, so what is parsed from it afterwards is exactly what was
    hashed (a part replaced by a rename meanwhile leaves this handle on the bytes it hashed)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        digest, size = hashlib.sha256(), 0
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
        handle.seek(0)
        yield handle, size, digest.hexdigest()


def check_store_parts(store_dir: str, manifest: StoreManifest, content: bool = True) -> tuple[PartPin, ...]:
    """The store's part files, each checked before any pipeline reads it and pinned: present, of
    the size and SHA-256 its manifest records (version 2; a version 1 store is pinned by what its
    files hold now), a readable Parquet footer, the columns and types of the manifest's layout, and
    row counts that add up to the manifest's ``rows``; with ``content``, also what the rows hold
    (:class:`StoreContentCheck`: finite embeddings, every id once in the whole store). StoreError
    naming the file otherwise.

    Each part is hashed and its footer read, a few files at a time (on object stores each is a
    round trip); the content is then streamed a row group at a time (memory: one row group per
    thread, plus the ids)."""
    manifest_path = FileSystems.join(store_dir, MANIFEST_FILE)
    want = manifest.layout.schema()
    paths = [FileSystems.join(store_dir, name) for name in manifest.files]
    recorded = (dict(zip(paths, zip(manifest.part_bytes, manifest.part_sha256)))
                if manifest.part_bytes is not None else {})

    def pin_part(path: str) -> tuple[int, PartPin]:
        if not FileSystems.exists(path):
            raise StoreError(f"store manifest {manifest_path} lists {FileSystems.split(path)[1]}, which is "
                             f"missing from {store_dir}: the store is incomplete")
        try:
            with open_part(path) as (handle, size, sha):
                footer = pq.ParquetFile(handle)
                schema, rows = footer.schema_arrow, footer.metadata.num_rows
        except (pa.ArrowException, OSError) as err:
            raise StoreError(f"store part {path} is corrupt or truncated (its Parquet footer cannot be "
                             f"read: {err})") from None
        if [(f.name, f.type) for f in schema] != [(f.name, f.type) for f in want]:
            raise StoreError(f"store part {path} does not match {manifest_path}: it has columns "
                             f"{_describe_columns(schema)}, the manifest's layout needs {_describe_columns(want)}")
        if path in recorded and (size, sha) != recorded[path]:
            raise StoreError(f"store part {path} is not the file {manifest_path} records ({recorded[path][0]} "
                             f"bytes, SHA-256 {recorded[path][1][:16]}…; found {size} bytes, SHA-256 "
                             f"{sha[:16]}…): the store was changed after it was written")
        return rows, PartPin(path, size, sha)

    threads = max(1, min(_CHECK_THREADS, len(paths)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = list(pool.map(pin_part, paths))
    total = sum(rows for rows, _ in found)
    if total != manifest.rows:
        raise StoreError(f"store manifest {manifest_path} says rows {manifest.rows} but its part files hold "
                         f"{total}: the store was changed after it was written")
    pins = tuple(pin for _, pin in found)
    if content:
        check = StoreContentCheck(store_dir)
        columns = ["id", *CONTENT_COLUMNS[manifest.dtype]] + (["pooled"] if manifest.pooled_dim else [])

        def read_part(pin: PartPin) -> None:
            try:
                for table, first in read_pinned_part(pin, columns=columns):
                    check.add(pin.path, table, first)
            except (pa.ArrowException, OSError) as err:
                raise StoreError(f"store part {pin.path} is corrupt or truncated (its rows cannot be read: "
                                 f"{err})") from None

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(read_part, pins))
        check.finish()
    return pins


class PartChanged(StoreError):
    """A pinned part file no longer holds what the run pinned (the message names it). The Beam
    steps that read a store turn it into ``pipeline.errors.InputChanged`` (exit 3)."""


def _part_changed(pin: PartPin, size: int, sha: str) -> str:
    return (f"store part {pin.path} changed after this run started (pinned: {pin.size} bytes, "
            f"SHA-256 {pin.sha256[:16]}…; now: {size} bytes, SHA-256 {sha[:16]}…). The run reads "
            "only the store it checked: stopped rather than take other embeddings for this "
            "model's; start it again once the store stays put")


def verify_part_pins(pins: Iterable[PartPin]) -> None:
    """Every part still has its pinned size and SHA-256, else InputChanged naming the first that
    does not (an engine whose workers read parts by path checks this before it commits)."""
    from pipeline.errors import InputChanged

    for pin in pins:
        with open_part(pin.path) as (_, size, sha):
            if (size, sha) != (pin.size, pin.sha256):
                raise InputChanged(_part_changed(pin, size, sha))


def read_pinned_part(pin: PartPin, columns: Sequence[str] | None = None,
                     batch_rows: int = 65536) -> Iterator[tuple[pa.Table, int]]:
    """(table of up to ``batch_rows`` rows, index of its first row in the part) for every batch of
    the part file ``pin`` names, read only if the file still has the pinned size and SHA-256
    (:func:`open_part`); PartChanged naming the file otherwise."""
    with open_part(pin.path) as (handle, size, sha):
        if (size, sha) != (pin.size, pin.sha256):
            raise PartChanged(_part_changed(pin, size, sha))
        first = 0
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns):
            yield pa.Table.from_batches([batch]), first
            first += batch.num_rows


# The columns whose values must be finite, by store dtype (int8 tokens always are; their scale may not be).
CONTENT_COLUMNS = {"float16": ["tokens"], "int8": ["token_scale"]}
_HALF_EXPONENT = 0x7C00   # a float16 whose exponent bits are all set is an infinity or a NaN


def nonfinite_rows(table: pa.Table) -> tuple[np.ndarray, str | None]:
    """Store rows (any columns of the schema) -> ((rows,) bool: a NaN or infinity in the row's
    embeddings, the first column found holding one, or None).

    Vectorised over raw bytes: float16 ``tokens`` (when there is no ``token_scale``, i.e. not an
    int8 store) and ``pooled`` are viewed as (rows, values) uint16 and tested on their exponent
    bits; int8 ``token_scale`` with ``numpy.isfinite``."""
    bad = np.zeros(table.num_rows, bool)
    first = None
    names = table.column_names
    for name in ("tokens", "token_scale", "pooled"):
        if name not in names or (name == "tokens" and "token_scale" in names) or not table.num_rows:
            continue
        if name == "token_scale":
            found = ~np.isfinite(table.column(name).to_numpy())
        else:
            halves = binary_values(table.column(name), "<u2", (-1,))
            found = ((halves & _HALF_EXPONENT) == _HALF_EXPONENT).any(axis=1)
        if first is None and found.any():
            first = name
        bad |= found
    return bad, first


def check_finite(table: pa.Table, path: str, first_row: int = 0) -> None:
    """StoreError naming ``path`` when any of ``table``'s rows (rows ``first_row``... of that part)
    holds a NaN or an infinity: such a store would give NaN scores."""
    bad, column = nonfinite_rows(table)
    if column is None:
        return
    row = int(np.flatnonzero(bad)[0])
    id_ = table.column("id")[row].as_py() if "id" in table.column_names else None
    raise StoreError(f"store part {path} holds embeddings that are not finite (NaN or infinity): "
                     f"{int(bad.sum())} row(s) of this read, the first row {first_row + row} (id {id_!r:.80}), "
                     f"column {column!r}. The store is damaged: encode afresh (leave out --store)")


class StoreContentCheck:
    """What a store's rows must hold, checked as its parts are read (from any number of threads):
    finite embeddings (:func:`check_finite`) and every id at most once in the whole store.

    add(path, rows) per batch read; finish() once every part is in: StoreError naming the part
    (or the two parts) that hold an id more than once. Only the ids are kept (R strings)."""

    def __init__(self, store_dir: str):
        self.store_dir = store_dir
        self._ids: dict[str, list[pa.Array]] = {}
        self._lock = threading.Lock()

    def add(self, path: str, table: pa.Table, first_row: int = 0) -> None:
        check_finite(table, path, first_row)
        ids = table.column("id").combine_chunks()
        with self._lock:
            self._ids.setdefault(path, []).append(ids)

    def finish(self) -> None:
        # Sorted by path: parts are read by several threads, and the message must not depend on
        # which finished first.
        parts = [(path, pa.chunked_array(chunks, pa.string())) for path, chunks in sorted(self._ids.items())]
        if not parts:
            return
        # Hash counting over every id at once (exact bytes: ids that differ in any byte are apart).
        counts = pc.value_counts(pa.chunked_array([c for _, ids in parts for c in ids.chunks], pa.string()))
        repeated = counts.filter(pc.greater(counts.field("counts"), 1))
        if not len(repeated):
            return
        id_ = repeated.field("values")[0]
        holders = [(path, pc.sum(pc.equal(ids, id_)).as_py() or 0) for path, ids in parts]
        holders = [(path, n) for path, n in holders if n]
        where = " and ".join(f"{path}" + (f" ({n} times)" if n > 1 else "") for path, n in holders)
        raise StoreError(f"store {self.store_dir} holds id {id_.as_py()!r:.80} more than once: in {where} "
                         f"({len(repeated)} id(s) repeated in all). Each id must be stored once, or which "
                         "embedding a pair gets would depend on file order: encode afresh (leave out --store)")


def _describe_columns(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} {f.type}" for f in schema)


@dataclass(frozen=True)
class StoreWanted:
    """What the model that will use a store needs the store to hold (one side)."""
    model_fingerprint: str
    encoder: str
    tokens_kept: int
    dim: int
    pooled_dim: int | None
    token_selection: str
    max_length: int


@dataclass(frozen=True)
class OpenedStore:
    """One side of a ``--store``, checked: its manifest and its part files, pinned."""
    directory: str
    manifest: StoreManifest
    parts: tuple[PartPin, ...]

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(part.path for part in self.parts)


def open_store_side(store_root: str, side: str, wanted: StoreWanted) -> OpenedStore:
    """``STORE_ROOT/<side>`` checked for use as ``side`` by the model ``wanted`` describes.

    Everything is checked before a pipeline starts, each failure a StoreError naming the path:
    the two-side layout (``ROOT/left/_MANIFEST.json``, ``ROOT/right/_MANIFEST.json``, with a
    hint when a one-side store or a job's output directory is given instead), the manifest
    (see :meth:`StoreManifest.from_json`), its side (swapped ``left/`` and ``right/`` are named),
    the model (fingerprint, encoder, N or M, D, pooled size, token selection, max length) and
    every part file (:func:`check_store_parts`).
    """
    directory = FileSystems.join(store_root, side)
    if not is_two_side_store(store_root, _BEAM_FS):
        raise StoreError(not_a_store_message(store_root, _BEAM_FS))
    manifest = read_manifest(directory)
    manifest_path = FileSystems.join(directory, MANIFEST_FILE)
    if manifest.side != side:
        other = FileSystems.join(store_root, other_side(side), MANIFEST_FILE)
        if side_of(other, _BEAM_FS) == side:
            raise StoreError(f"--store {store_root!r} has its sides swapped: {manifest_path} says side "
                             f"{manifest.side!r} and {other} says side {side!r}; its left/ must hold the "
                             "left store and right/ the right one")
        raise StoreError(f"{manifest_path} says side {manifest.side!r}, but --store uses it as the {side} "
                         f"store: {directory} must hold a {side} store")
    problems = []
    if manifest.model_fingerprint != wanted.model_fingerprint:
        problems.append(f"model fingerprint {manifest.model_fingerprint[:16]} != this model's "
                        f"{wanted.model_fingerprint[:16]}")
    for name, have, want in (("encoder", manifest.encoder, wanted.encoder),
                             ("tokens kept", manifest.tokens_kept, wanted.tokens_kept),
                             ("dim", manifest.dim, wanted.dim), ("pooled dim", manifest.pooled_dim, wanted.pooled_dim),
                             ("token selection", manifest.token_selection, wanted.token_selection),
                             ("max length", manifest.max_length, wanted.max_length)):
        if have != want:
            problems.append(f"{name} {have} != {want}")
    if problems:
        raise StoreError(f"store {directory!r} was written by another model: {'; '.join(problems)}. "
                         "Use a store written with this --model, or leave out --store to encode afresh")
    return OpenedStore(directory, manifest, check_store_parts(directory, manifest))


class _BeamStoreFs:
    """pipeline.store_paths.StoreFs on any Beam filesystem."""
    exists = staticmethod(FileSystems.exists)
    join = staticmethod(FileSystems.join)
    split = staticmethod(FileSystems.split)

    @staticmethod
    def read_text(path: str) -> str:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read().decode("utf-8")

    @staticmethod
    def names(directory: str) -> list[str]:
        if FileSystems.get_scheme(directory) is None:   # local: list subdirectories too
            return sorted(os.listdir(directory))
        matched = FileSystems.match([FileSystems.join(escape_glob(directory), "*")])[0].metadata_list
        return sorted({FileSystems.split(m.path)[1] for m in matched})


_BEAM_FS = _BeamStoreFs()


def write_manifest(store_dir: str, *, model_fingerprint: str, encoder: str, layout: StoreLayout,
                   token_selection: str, max_length: int, model_files_fingerprint: str | None) -> StoreManifest:
    """Write ``_MANIFEST.json`` (schema version 2) for the files now in ``store_dir``: rows counted
    from their footers, each file's size and SHA-256 (each file is read once), and the model's
    weight fingerprint and file fingerprint (None for a model without files: the baseline).

    Jobs call it on their staging directory only after the run's counts reconcile; the commit
    (pipeline/output/commit.py) moves it into place after the part files, so a store with a manifest
    is always complete."""
    files = store_files(store_dir)
    proofs = []
    for path in files:
        with open_part(path) as (_, size, sha):
            proofs.append((size, sha))
    manifest = StoreManifest(
        model_fingerprint=model_fingerprint, encoder=encoder, side=layout.side, tokens_kept=layout.tokens_kept,
        dim=layout.dim, dtype=layout.dtype, pooled_dim=layout.pooled_dim, token_selection=token_selection,
        max_length=max_length, rows=count_rows(files), files=[FileSystems.split(p)[1] for p in files],
        part_bytes=[size for size, _ in proofs], part_sha256=[sha for _, sha in proofs],
        model_files_fingerprint=model_files_fingerprint)
    write_json_file(FileSystems.join(store_dir, MANIFEST_FILE), manifest.to_json() + "\n")
    return manifest


def write_student_manifest(store_dir: str, student, model_dir: str | None, layout: StoreLayout) -> StoreManifest:
    """:func:`write_manifest` for a store that ``student`` (its ``config`` and weight ``fingerprint``:
    an ``encoders.checkpoint.Student`` or a ``pipeline.models.ModelFacts``) encoded from checkpoint
    ``model_dir`` (pinned; None: the baseline, which has no files)."""
    from encoders.remote import pinned_file_fingerprint

    config = student.config
    return write_manifest(store_dir, model_fingerprint=student.fingerprint, encoder=config.encoder, layout=layout,
                          token_selection=config.token_selection, max_length=config.max_length(layout.side),
                          model_files_fingerprint=pinned_file_fingerprint(model_dir))


def store_files(store_dir: str) -> list[str]:
    pattern = FileSystems.join(escape_glob(store_dir), f"{STORE_FILE_PREFIX}*{STORE_FILE_SUFFIX}")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def count_rows(paths: Sequence[str]) -> int:
    """Rows in Parquet files, from their footers only."""
    total = 0
    for path in paths:
        with FileSystems.open(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def read_store(store_dir: str, columns: Sequence[str] | None = None) -> tuple[StoreManifest, pa.Table]:
    """The whole store as one Arrow table (tests, small stores, broadcast lookups): only the part
    files its manifest lists, each checked first (:func:`check_store_parts`), and what their rows
    hold checked as they are read (:class:`StoreContentCheck`)."""
    manifest = read_manifest(store_dir)
    tables = []
    check = StoreContentCheck(store_dir)
    # The content is checked on the rows read here rather than in a second pass over the files.
    wanted = list(columns) if columns else None
    needed = None if wanted is None else list(dict.fromkeys(
        ["id", *wanted, *CONTENT_COLUMNS[manifest.dtype]] + (["pooled"] if manifest.pooled_dim else [])))
    for pin in check_store_parts(store_dir, manifest, content=False):
        with open_part(pin.path) as (handle, _, _):
            table = pq.read_table(handle, columns=needed)
        check.add(pin.path, table)
        tables.append(table if wanted is None else table.select(wanted))
    check.finish()
    schema = manifest.layout.schema()
    if columns:
        schema = pa.schema([schema.field(c) for c in columns])
    return manifest, pa.concat_tables(tables) if tables else schema.empty_table()


def store_layout(student, side: str, dtype: str) -> StoreLayout:
    """The layout of ``side``'s store for ``student`` (an ``encoders.checkpoint.Student``): its
    tokens kept, projected size and pooled size, in ``dtype``."""
    encoder = student.encoder.side(side)
    pooled_dim = encoder.transformer.config.hidden_size if student.config.pooled else None
    return StoreLayout(side=side, tokens_kept=encoder.num_tokens, dim=encoder.output_dim,
                       dtype=dtype, pooled_dim=pooled_dim)
