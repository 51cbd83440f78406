"""The least a scoring job must do, in plain pyarrow + numpy: the yardstick for ``score_pairs``'s
data path (``benchmarks/score_pairs.py`` runs both on the same files).

    python benchmarks/minimal_cosine.py PAIRS.parquet LEFT_ID_COL RIGHT_ID_COL STORE_DIR OUTPUT.parquet

Reads the pair ids in record batches, maps them to store rows (``pyarrow.compute.index_in``
against each store's ids), gathers the stored pooled embeddings (float16 -> float32), takes
their cosine and writes ``left_id, right_id, score`` as zstd Parquet. Nothing is validated and
no dead letter is kept: it is a floor, not a job.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def load_pooled(store_dir: str) -> tuple[pa.Array, np.ndarray]:
    """A store's ids (R,) and L2-normalised pooled embeddings (R, H) float32."""
    manifest = json.load(open(os.path.join(store_dir, "_MANIFEST.json")))
    table = pa.concat_tables([pq.read_table(os.path.join(store_dir, name), columns=["id", "pooled"])
                              for name in manifest["files"]])
    pooled = table.column("pooled").combine_chunks()
    width = pooled.type.byte_width
    values = np.frombuffer(pooled.buffers()[1], "<f2")[pooled.offset * width // 2:
                                                        (pooled.offset + len(pooled)) * width // 2]
    vectors = values.reshape(len(pooled), manifest["pooled_dim"]).astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return table.column("id").combine_chunks(), vectors


def main(pairs: str, left_col: str, right_col: str, store: str, output: str) -> None:
    left_ids, left = load_pooled(os.path.join(store, "left"))
    right_ids, right = load_pooled(os.path.join(store, "right"))
    schema = pa.schema([("left_id", pa.string()), ("right_id", pa.string()), ("score", pa.float32())])
    with pq.ParquetWriter(output, schema, compression="zstd") as writer:
        for batch in pq.ParquetFile(pairs).iter_batches(batch_size=65536, columns=[left_col, right_col]):
            rows_left = pc.index_in(batch.column(0), value_set=left_ids).to_numpy(zero_copy_only=False)
            rows_right = pc.index_in(batch.column(1), value_set=right_ids).to_numpy(zero_copy_only=False)
            scores = np.einsum("ij,ij->i", left[rows_left.astype(np.int64)], right[rows_right.astype(np.int64)])
            writer.write_table(pa.table([batch.column(0), batch.column(1), pa.array(scores.astype(np.float32))],
                                        schema=schema))


if __name__ == "__main__":
    main(*sys.argv[1:6])
