"""What pinning a ``--store`` costs (issue 24, item 4): a large float16 store, written once, then

* **open, before**: the pre-run check as it was (footers, then every row's content: finite
  embeddings, ids once), without hashing;
* **open, pinned**: :func:`pipeline.store.check_store_parts` as it is now (each part hashed and
  compared with its schema version 2 manifest, then the same content check);
* **write manifest**: :func:`pipeline.store.write_manifest` (each part hashed once, at commit);
* **worker read, before / pinned**: every row group read back as Arrow tables, plainly and
  through :func:`pipeline.store.read_pinned_part` (hash, rewind, then read: the bytes read are the
  bytes hashed).

    python benchmarks/store_pinning.py [--rows 200000] [--tokens 16] [--dim 128] [--parts 4] [--repeats 3]

Prints seconds (best of ``--repeats``), MB/s and each pinned figure's ratio to its "before". The
files are random float16 (incompressible), so their size on disk is rows x tokens x dim x 2 bytes.
Local disk, warm page cache after the first pass: the hashing is CPU (SHA-256) bound. On an object
store (gs://, s3://) the cheap proof is each object's size plus its generation (GCS) or ETag (S3),
one listing call for the whole store, with no byte read; see docs/scale.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.store import (StoreContentCheck, StoreLayout, CONTENT_COLUMNS, check_store_parts,  # noqa: E402
                            read_manifest, read_pinned_part, write_manifest)


def make_store(directory: Path, rows: int, tokens: int, dim: int, parts: int) -> StoreLayout:
    layout = StoreLayout("left", tokens, dim, "float16", None)
    rng = np.random.default_rng(0)
    per_part = -(-rows // parts)
    for part in range(parts):
        count = min(per_part, rows - part * per_part)
        ids = [f"text-{part}-{i}" for i in range(count)]
        values = rng.standard_normal((count, tokens * dim)).astype("<f2")
        table = pa.table({"id": ids, "text_hash": ids, "num_tokens": pa.array(np.full(count, tokens), pa.int32()),
                          "truncated": np.zeros(count, bool),
                          "tokens": pa.FixedSizeBinaryArray.from_buffers(
                              pa.binary(layout.token_bytes), count, [None, pa.py_buffer(values.tobytes())])},
                         schema=layout.schema())
        pq.write_table(table, directory / f"part-{part:05d}-of-{parts:05d}.parquet", compression="zstd",
                       row_group_size=65536)
    return layout


def open_before(directory: str, manifest) -> None:
    """The pre-run check without hashing: footers, then the content a row group at a time."""
    check = StoreContentCheck(directory)
    for name in manifest.files:
        path = f"{directory}/{name}"
        pq.ParquetFile(path).metadata.num_rows
        first = 0
        for batch in pq.ParquetFile(path).iter_batches(columns=["id", *CONTENT_COLUMNS[manifest.dtype]]):
            check.add(path, pa.Table.from_batches([batch]), first)
            first += batch.num_rows
    check.finish()


def best(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        layout = make_store(store, args.rows, args.tokens, args.dim, args.parts)
        size_mb = sum(p.stat().st_size for p in store.glob("part-*.parquet")) / 2 ** 20
        write = best(1, lambda: write_manifest(str(store), model_fingerprint="f" * 64, encoder="bench", layout=layout,
                                               token_selection="first", max_length=64, model_files_fingerprint=None))
        manifest = read_manifest(str(store))
        pins = []
        rows = [
            ("open, before", best(args.repeats, lambda: open_before(str(store), manifest))),
            ("open, pinned", best(args.repeats, lambda: pins.append(check_store_parts(str(store), manifest)))),
        ]

        def read_plain() -> None:
            for pin in pins[0]:
                for batch in pq.ParquetFile(pin.path).iter_batches(batch_size=65536):
                    pa.Table.from_batches([batch])

        def read_pinned() -> None:
            for pin in pins[0]:
                for _ in read_pinned_part(pin):
                    pass

        rows += [("worker read, before", best(args.repeats, read_plain)),
                 ("worker read, pinned", best(args.repeats, read_pinned))]
    print(f"store: {args.rows:,} rows x {args.tokens} x {args.dim} float16 in {args.parts} parts, {size_mb:,.0f} MB "
          f"on disk; write_manifest (hashes every part once): {write:.2f} s")
    print(f"{'step':<22}{'seconds':>9}{'MB/s':>9}{'pinned / before':>17}")
    for index, (name, seconds) in enumerate(rows):
        ratio = f"{seconds / rows[index - 1][1]:.2f}x" if name.endswith("pinned") else ""
        print(f"{name:<22}{seconds:>9.2f}{size_mb / seconds:>9,.0f}{ratio:>17}")


if __name__ == "__main__":
    main()
