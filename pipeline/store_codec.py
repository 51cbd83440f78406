"""The store's token codec: the one encoder and the one decoder of the embedding columns.

Plain numpy and pyarrow, no Beam, so the engine-agnostic scoring core (``pipeline/scoring_core.py``)
uses it as it is. Raw columns are viewed in their stored dtype (:func:`side_arrays`,
:func:`binary_values`); :func:`dequantize` and :func:`token_mask` turn them into what a head
reads, the same on numpy arrays (readers, tests) and on torch tensors (the scoring core, on the
device). The layout a table follows is a ``pipeline.store.StoreLayout``.

Shapes: B rows, N tokens kept, D projected size, H pooled size.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow as pa


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


def binary_values(column: pa.ChunkedArray | pa.Array, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A fixed-size binary column -> a numpy view (rows, *shape) of ``dtype`` (one copy at most)."""
    chunks = [column] if isinstance(column, pa.Array) else [c for c in column.chunks if len(c)]
    parts = []
    for chunk in chunks:
        width = chunk.type.byte_width
        data = chunk.buffers()[1]
        if data is not None and len(chunk):
            parts.append(np.frombuffer(data, np.uint8)[chunk.offset * width:(chunk.offset + len(chunk)) * width])
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    rows = sum(len(c) for c in chunks)
    return flat.view(dtype).reshape(rows, *shape)


class SideArrays(NamedTuple):
    """One side of B pairs as gathered from a store, still in the stored dtype.

    tokens (B, N, D) float16 or int8; scales (B,) float32 (int8) or None; num_tokens (B,);
    pooled (B, H) float16 or None.
    """
    tokens: np.ndarray
    scales: np.ndarray | None
    num_tokens: np.ndarray
    pooled: np.ndarray | None

    def take(self, rows: np.ndarray, tokens: bool = True) -> "SideArrays":
        """These arrays at ``rows``; ``tokens=False`` leaves the tokens out (None), for heads that do not read them."""
        return SideArrays(self.tokens[rows] if tokens and self.tokens is not None else None,
                          None if self.scales is None else self.scales[rows],
                          self.num_tokens[rows], None if self.pooled is None else self.pooled[rows])


def side_arrays(table: pa.Table, layout, prefix: str = "") -> SideArrays:
    """Store columns (``tokens``, ``num_tokens``, ``token_scale``, ``pooled``; names after
    ``prefix``) -> SideArrays, zero-copy where Arrow allows. ``layout``: a StoreLayout."""
    dtype = "<f2" if layout.dtype == "float16" else np.int8
    tokens = binary_values(table.column(prefix + "tokens"), dtype, (layout.tokens_kept, layout.dim))
    scales = (table.column(prefix + "token_scale").to_numpy() if layout.dtype == "int8" else None)
    pooled = (binary_values(table.column(prefix + "pooled"), "<f2", (layout.pooled_dim,))
              if layout.pooled_dim else None)
    return SideArrays(tokens, scales, table.column(prefix + "num_tokens").to_numpy(), pooled)


def decode_tokens(table: pa.Table, layout) -> np.ndarray:
    """The ``tokens`` column of a store table (of a StoreLayout ``layout``) -> (rows, N, D) float32."""
    dtype = "<f2" if layout.dtype == "float16" else np.int8
    values = binary_values(table.column("tokens"), dtype, (layout.tokens_kept, layout.dim)).astype(np.float32)
    return dequantize(values, table.column("token_scale").to_numpy() if layout.dtype == "int8" else None)


def decode_pooled(table: pa.Table, layout) -> np.ndarray:
    """The ``pooled`` column (of a StoreLayout ``layout``) -> (rows, H) float32."""
    return binary_values(table.column("pooled"), "<f2", (layout.pooled_dim,)).astype(np.float32)


def dequantize(tokens, scales):
    """Stored tokens already as float32, (B, N, D), times their int8 row scales (B,); float16
    stores have no scales (None) and are returned as they are. numpy arrays or torch tensors."""
    return tokens if scales is None else tokens * scales[:, None, None]


def token_mask(num_tokens, tokens_kept: int):
    """(rows,) num_tokens -> (rows, N) bool: the first min(num_tokens, N) slots are real.
    A numpy array gives a numpy mask; a torch tensor a tensor on its device."""
    if hasattr(num_tokens, "clamp"):  # torch, without importing it here
        import torch
        positions = torch.arange(tokens_kept, device=num_tokens.device)
        return positions[None, :] < num_tokens.clamp(max=tokens_kept)[:, None]
    return np.arange(tokens_kept)[None, :] < np.minimum(num_tokens, tokens_kept)[:, None]
