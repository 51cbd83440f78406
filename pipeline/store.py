"""The embedding store: one Parquet (zstd) row per unique text of one side, plus a manifest.

Schema (schema version 1)::

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
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

SCHEMA_VERSION = 1
MANIFEST_FILE = "_MANIFEST.json"
STORE_FILE_PREFIX = "part"
STORE_FILE_SUFFIX = ".parquet"
DTYPES = ("float16", "int8")
COMPRESSION = "zstd"


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
            raise ValueError(f"store dtype {self.dtype!r} is not allowed: choose one of {', '.join(DTYPES)}")

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

    @property
    def layout(self) -> StoreLayout:
        return StoreLayout(self.side, self.tokens_kept, self.dim, self.dtype, self.pooled_dim)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StoreManifest":
        data = json.loads(text)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"store schema version {data.get('schema_version')!r} is not supported "
                             f"(this pairscore reads {SCHEMA_VERSION})")
        return cls(**data)


def encode_token_block(tokens: np.ndarray, dtype: str) -> tuple[list[bytes], np.ndarray | None]:
    """(B, N, D) float32 -> one bytes value per text, plus (B,) float32 scales for int8.

    int8 uses a symmetric per-row scale, max|x| / 127, so each text keeps its own range.
    """
    batch = tokens.shape[0]
    if dtype == "float16":
        flat = np.ascontiguousarray(tokens.astype("<f2")).reshape(batch, -1)
        return [row.tobytes() for row in flat], None
    flat = tokens.reshape(batch, -1).astype(np.float32)
    scale = np.abs(flat).max(axis=1) / 127.0
    scale[scale == 0] = 1.0  # an all-zero row: any scale decodes it back to zeros
    quantized = np.clip(np.rint(flat / scale[:, None]), -127, 127).astype(np.int8)
    return [row.tobytes() for row in quantized], scale.astype(np.float32)


def decode_tokens(table: pa.Table, layout: StoreLayout) -> np.ndarray:
    """The ``tokens`` column of a store table -> (rows, N, D) float32."""
    raw = np.frombuffer(_binary_buffer(table.column("tokens")), dtype="<f2" if layout.dtype == "float16" else np.int8)
    values = raw.reshape(table.num_rows, layout.tokens_kept, layout.dim).astype(np.float32)
    if layout.dtype == "int8":
        values *= table.column("token_scale").to_numpy()[:, None, None]
    return values


def decode_pooled(table: pa.Table, layout: StoreLayout) -> np.ndarray:
    """The ``pooled`` column -> (rows, H) float32."""
    raw = np.frombuffer(_binary_buffer(table.column("pooled")), dtype="<f2")
    return raw.reshape(table.num_rows, layout.pooled_dim).astype(np.float32)


def token_mask(num_tokens: np.ndarray, tokens_kept: int) -> np.ndarray:
    """(rows,) num_tokens -> (rows, N) bool: the first min(num_tokens, N) slots are real."""
    return np.arange(tokens_kept)[None, :] < np.minimum(num_tokens, tokens_kept)[:, None]


def _binary_buffer(column: pa.ChunkedArray) -> bytes | memoryview:
    """The values of a fixed-size binary column as one contiguous buffer (no per-row copies)."""
    chunks = [c for c in column.chunks if len(c)]
    if not chunks:
        return b""
    parts = []
    for chunk in chunks:
        width = chunk.type.byte_width
        data = chunk.buffers()[1]
        parts.append(memoryview(data)[chunk.offset * width:(chunk.offset + len(chunk)) * width])
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_manifest(store_dir: str) -> StoreManifest:
    path = FileSystems.join(store_dir, MANIFEST_FILE)
    if not FileSystems.exists(path):
        raise ValueError(f"{store_dir!r} is not an embedding store: {MANIFEST_FILE} is missing")
    with FileSystems.open(path) as handle:
        return StoreManifest.from_json(handle.read().decode("utf-8"))


def write_manifest(store_dir: str, *, model_fingerprint: str, encoder: str, layout: StoreLayout,
                   token_selection: str, max_length: int) -> StoreManifest:
    """Write ``_MANIFEST.json`` for the files now in ``store_dir`` (rows counted from their footers).

    Jobs call it on their staging directory only after the run's counts reconcile; the commit
    (pipeline/outputs.py) moves it into place after the part files, so a store with a manifest
    is always complete."""
    files = store_files(store_dir)
    manifest = StoreManifest(
        model_fingerprint=model_fingerprint, encoder=encoder, side=layout.side, tokens_kept=layout.tokens_kept,
        dim=layout.dim, dtype=layout.dtype, pooled_dim=layout.pooled_dim, token_selection=token_selection,
        max_length=max_length, rows=count_rows(files), files=[FileSystems.split(p)[1] for p in files])
    with FileSystems.create(FileSystems.join(store_dir, MANIFEST_FILE)) as handle:
        handle.write((manifest.to_json() + "\n").encode("utf-8"))
    return manifest


def store_files(store_dir: str) -> list[str]:
    pattern = FileSystems.join(store_dir, f"{STORE_FILE_PREFIX}*{STORE_FILE_SUFFIX}")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def count_rows(paths: Sequence[str]) -> int:
    """Rows in Parquet files, from their footers only."""
    total = 0
    for path in paths:
        with FileSystems.open(path) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def read_store(store_dir: str, columns: Sequence[str] | None = None) -> tuple[StoreManifest, pa.Table]:
    """The whole store as one Arrow table (tests, small stores, broadcast lookups)."""
    manifest = read_manifest(store_dir)
    tables = []
    for path in store_files(store_dir):
        with FileSystems.open(path) as handle:
            tables.append(pq.read_table(handle, columns=list(columns) if columns else None))
    schema = manifest.layout.schema()
    if columns:
        schema = pa.schema([schema.field(c) for c in columns])
    return manifest, pa.concat_tables(tables) if tables else schema.empty_table()




class TokenLookup:
    """A store held in memory for the broadcast join: id -> row, tokens kept as stored.

    tokens: (R, N, D) float16 (or int8 with (R,) scales); num_tokens: (R,); pooled: (R, H)
    float16 or None. Holding the stored dtype halves memory against float32; each scoring
    batch converts only the rows it gathers.
    """

    def __init__(self, tables: Sequence[pa.Table], layout: StoreLayout):
        self.layout = layout
        table = pa.concat_tables(tables) if tables else layout.schema().empty_table()
        ids = table.column("id").to_pylist()
        # Later rows win: newly encoded rows come after reused ones and replace them.
        self.row_of = {id_: row for row, id_ in enumerate(ids)}
        dtype = "<f2" if layout.dtype == "float16" else np.int8
        raw = np.frombuffer(_binary_buffer(table.column("tokens")), dtype=dtype)
        self.tokens = raw.reshape(table.num_rows, layout.tokens_kept, layout.dim)
        self.scales = table.column("token_scale").to_numpy() if layout.dtype == "int8" else None
        self.num_tokens = table.column("num_tokens").to_numpy()
        self.pooled = (np.frombuffer(_binary_buffer(table.column("pooled")), dtype="<f2")
                       .reshape(table.num_rows, layout.pooled_dim) if layout.pooled_dim else None)

    def __len__(self) -> int:
        return len(self.row_of)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row index per id, -1 where the store has no such id."""
        get = self.row_of.get
        return np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """rows (B,) valid indices -> tokens (B, N, D) float32, mask (B, N) bool, pooled (B, H) or None."""
        tokens = self.tokens[rows].astype(np.float32)
        if self.scales is not None:
            tokens *= self.scales[rows][:, None, None]
        mask = token_mask(self.num_tokens[rows], self.layout.tokens_kept)
        pooled = self.pooled[rows].astype(np.float32) if self.pooled is not None else None
        return tokens, mask, pooled
