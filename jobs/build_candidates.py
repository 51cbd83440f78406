"""Mine unlabeled candidate pairs worth distilling on, as DiPair's appendix B builds its transfer set.

    python -m jobs.build_candidates --left-texts queries.jsonl --right-texts products.jsonl \
        --top-k 20 --random-per-left 2 --output candidates/

Both pools are encoded with a sentence embedding (default: the packaged all-MiniLM-L6-v2, mean
pooled, L2-normalised, as the zero-training baseline encodes), each left text gets its top-k
nearest right texts by exact search, plus random right texts as easy negatives; self-pairs
(identical texts) are dropped and every text pair appears once. The output is ready for
``jobs.label_pairs``.

Plain PyTorch + pyarrow on one machine, no Beam: exact top-k is a global reduction of each
left text over the whole right pool, i.e. blocks of one matrix product against every right
embedding, so the right pool's embeddings must sit in one process anyway; Beam would add
per-element cost without lifting that limit. Where it stops: the right embeddings take
``NR x H x 4`` bytes (H = 384: 1.5 kB per text, 1.5 GB per million) and the search costs
``2 x NL x NR x H`` flops (on this 2-core CPU, ~180 GFLOP/s fp32: 100k x 100k about 45 s, 1M x 1M
over an hour, when encoding the two pools already takes hours at ~100 texts/s). Past a few
million right texts use an approximate index (FAISS, ScaNN) instead.

Shapes: NL left texts, NR right texts, H embedding size, k neighbours per left text.
"""
from __future__ import annotations

if __name__ == "__main__":
    # `python -m jobs.build_candidates`: the command line (jobs/cli.py, light) parses the flags before the
    # imports below run, and imports this module by name only to run the job.
    from jobs.cli import main_module
    main_module("build_candidates")

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from apache_beam.io.filesystems import FileSystems
from tqdm.auto import tqdm

from encoders.checkpoint import Student, build_student
from encoders.config import baseline_config
from encoders.dual_encoder import SideEncoder
from encoders.sources import DEFAULT_ENCODER
from encoders.device import autocast
from encoders.inference import length_order
from jobs import cli
from jobs.common import run_started
from pipeline.dead_letters import DeadLetter
from encoders.device import pick_device
from pipeline.text_checks import TextColumns, TextRow, extract_text, resolve_id
from pipeline.outputs import abort_output_on_failure, local_path_or_none, open_output, write_dead_letter_file
from pipeline.progress import bar_options
from pipeline.readers import InputFile, check_columns, expand_inputs, read_rows
from pipeline.store import COMPRESSION, STORE_FILE_PREFIX, STORE_FILE_SUFFIX
from pipeline.summary import RunSummary

JOB_NAME = "build_candidates"
SOURCES = ("knn", "random")
CANDIDATE_SCHEMA = pa.schema([
    ("left", pa.string()), ("right", pa.string()), ("left_id", pa.string()), ("right_id", pa.string()),
    ("source", pa.string()),        # 'knn' | 'random'
    ("similarity", pa.float32()),   # cosine of the two sentence embeddings
    ("rank", pa.int32()),           # 1..k among the left text's neighbours; null for random pairs
])
# Memory for one block of similarities (block rows x NR float32): bounds the search's working set
# whatever the pool sizes.
SIMILARITY_BLOCK_BYTES = 256 << 20


@dataclass(frozen=True)
class BuildCandidatesJob:
    """Everything one mining run needs; built once from the command line."""
    left_texts: tuple[str, ...]
    right_texts: tuple[str, ...]
    output: str
    top_k: int = 10
    random_per_left: int = 1
    texts_text_col: str = "text"
    texts_id_col: str | None = None
    encoder: str = DEFAULT_ENCODER
    max_length: int = 128
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    format: str | None = None
    overwrite: bool = False
    progress: bool = True

    def check(self) -> None:
        for flag, value, least in (("--top-k", self.top_k, 0), ("--random-per-left", self.random_per_left, 0),
                                   ("--batch-size", self.batch_size, 1), ("--max-length", self.max_length, 2)):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{flag} {value!r} is not allowed: give an integer >= {least}")
        if self.top_k + self.random_per_left < 1:
            raise ValueError("--top-k 0 with --random-per-left 0 would mine nothing: give --top-k K >= 1 "
                             "and/or --random-per-left R >= 1")


# --------------------------------------------------------------------------- texts

@dataclass
class TextPool:
    """The unique texts of one side (P each) and how every row read was accounted for.

    With an id column, texts that several ids share appear once, under their smallest id.
    """
    texts: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_kept: int = 0
    rows_duplicate: int = 0
    dead: list[DeadLetter] = field(default_factory=list)


def read_text_pool(files: Sequence[InputFile], columns: TextColumns) -> TextPool:
    """Read, check and dedupe one side's texts with stage one's rules (extract_text, resolve_id):
    rows read = kept (one per unique id) + duplicates + dead letters."""
    pool = TextPool()
    by_id: dict[str, list[TextRow]] = {}
    for file in files:
        for item in read_rows(file):
            pool.rows_read += 1
            result = item if isinstance(item, DeadLetter) else extract_text(item, columns)
            if isinstance(result, DeadLetter):
                pool.dead.append(result)
            else:
                by_id.setdefault(result.id, []).append(result)
    ids_of_text: dict[str, list[str]] = {}
    for id_, rows in by_id.items():
        unique, duplicates, rejected = resolve_id(id_, rows)
        pool.rows_duplicate += duplicates
        pool.dead += rejected
        if unique is not None:
            pool.rows_kept += 1
            ids_of_text.setdefault(unique.text, []).append(id_)
    pool.texts = list(ids_of_text)
    pool.ids = [min(ids) for ids in ids_of_text.values()]
    return pool


# --------------------------------------------------------------------------- embedding and search

@torch.inference_mode()
def embed_texts(side: SideEncoder, texts: Sequence[str], batch_size: int, progress: str | None = None) -> torch.Tensor:
    """Texts -> (P, H) float32 L2-normalised mean-pooled embeddings, in input order.

    Texts are sorted by token count before being cut into batches, so each batch pads only to
    its own longest text.
    """
    device = next(side.parameters()).device
    tokenized = side.tokenize(texts)
    out = torch.empty(len(texts), side.transformer.config.hidden_size)
    bar = tqdm(total=len(texts), desc=progress, unit="text", disable=progress is None,
               **bar_options())
    for index in length_order(tokenized, batch_size):
        batch = side.collate([tokenized[i] for i in index]).to(device)
        with autocast(device):
            encoded = side(batch.input_ids, batch.attention_mask)
        out[torch.from_numpy(index)] = encoded.pooled.float().cpu()
        bar.update(len(index))
    bar.close()
    return out


def top_k_neighbours(left: torch.Tensor, right: torch.Tensor, k: int, exclude: torch.Tensor,
                     block_bytes: int = SIMILARITY_BLOCK_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact maximum-inner-product search (cosine, for normalised embeddings).

    left (NL, H), right (NR, H); exclude (NL,) long: a right index each left row must not get
    (its identical text), -1 for none. Returns similarities (NL, k') float32 and right indices
    (NL, k') long, best first, k' = min(k, NR); slots with no candidate left (k >= NR with an
    excluded index) hold index -1. Left rows are taken in blocks so a block of similarities
    stays under ``block_bytes``.
    """
    count = min(k, right.shape[0])
    values = torch.empty(left.shape[0], count)
    indices = torch.empty(left.shape[0], count, dtype=torch.long)
    if count == 0:
        return values, indices
    block = max(1, block_bytes // (4 * right.shape[0]))
    right_t = right.T.contiguous()                                           # (H, NR)
    for start in range(0, left.shape[0], block):
        stop = min(start + block, left.shape[0])
        sims = left[start:stop] @ right_t                                    # (b, NR)
        rows = exclude[start:stop]
        has = torch.nonzero(rows >= 0).squeeze(1)
        sims[has, rows[has]] = -math.inf
        top_values, top_indices = sims.topk(count, dim=1)                    # (b, k'), sorted
        top_indices[torch.isinf(top_values)] = -1
        values[start:stop], indices[start:stop] = top_values.cpu(), top_indices.cpu()
    return values, indices


def sample_random(num_right: int, per_left: int, excluded: Sequence[set[int]], rng: np.random.Generator
                  ) -> list[np.ndarray]:
    """For each left row, ``per_left`` distinct right indices drawn uniformly from those not in
    its ``excluded`` set (its neighbours and its identical text); fewer when fewer remain."""
    picks = []
    for banned in excluded:
        take = min(per_left, num_right - len(banned))
        if take <= 0:
            picks.append(np.empty(0, dtype=np.int64))
        elif num_right <= 4 * (len(banned) + per_left):
            # Small pool: draw from the explicit complement.
            allowed = np.setdiff1d(np.arange(num_right), np.fromiter(banned, np.int64, len(banned)))
            picks.append(rng.choice(allowed, size=take, replace=False))
        else:
            # Large pool: rejection sampling; at least 3 in 4 draws are acceptable here.
            chosen: list[int] = []
            while len(chosen) < take:
                j = int(rng.integers(num_right))
                if j not in banned and j not in chosen:
                    chosen.append(j)
            picks.append(np.array(chosen, dtype=np.int64))
    return picks


# --------------------------------------------------------------------------- the job

def encoder_for(job: BuildCandidatesJob) -> Student:
    """The embedding model: the baseline student (all layers, mean-pooled normalised sentence
    embedding) on ``job.encoder``."""
    config = baseline_config().replace(encoder=job.encoder, left_max_length=job.max_length,
                                       right_max_length=job.max_length)
    return build_student(config)


@abort_output_on_failure
def run(job: BuildCandidatesJob, argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, read, encode, search, sample, write, summarise."""
    job.check()
    device = pick_device(job.device)
    columns = TextColumns(text=job.texts_text_col, id=job.texts_id_col)
    files = {"left": expand_inputs(job.left_texts, job.format), "right": expand_inputs(job.right_texts, job.format)}
    for side_files in files.values():
        check_columns(side_files, [c for c in (columns.text, columns.id) if c])
    student = encoder_for(job)
    side = student.encoder.left.to(device).eval()  # one shared encoder: both pools in one space
    out = open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                      reads={"--left-texts": job.left_texts, "--right-texts": job.right_texts,
                             "--encoder": [local_path_or_none(job.encoder)]})

    started = run_started()
    pools = {name: read_text_pool(side_files, columns) for name, side_files in files.items()}
    left, right = pools["left"], pools["right"]
    seconds = {}
    embeddings = {}
    for name, pool in pools.items():
        tic = time.perf_counter()
        if name == "right" and right.texts == left.texts:
            embeddings[name] = embeddings["left"]   # one pool on both sides (e.g. questions x questions)
        else:
            embeddings[name] = embed_texts(side, pool.texts, job.batch_size,
                                           f"encode {name}" if job.progress else None).to(device)
        seconds[f"encode_{name}"] = round(time.perf_counter() - tic, 2)

    # A left text whose identical text is in the right pool must not be paired with it.
    right_index = {text: j for j, text in enumerate(right.texts)}
    exclude = torch.tensor([right_index.get(t, -1) for t in left.texts], dtype=torch.long)
    tic = time.perf_counter()
    knn_sims, knn_index = top_k_neighbours(embeddings["left"], embeddings["right"], job.top_k, exclude.to(device))
    seconds["search"] = round(time.perf_counter() - tic, 2)
    knn_index_np = knn_index.numpy()
    excluded = [set(int(j) for j in row if j >= 0) | ({int(x)} if x >= 0 else set())
                for row, x in zip(knn_index_np, exclude.tolist())]
    random_index = sample_random(len(right.texts), job.random_per_left, excluded, np.random.default_rng(job.seed))

    path = out.staged(f"{STORE_FILE_PREFIX}-00000-of-00001{STORE_FILE_SUFFIX}")
    by_source = write_candidates(path, left, right, embeddings, knn_sims.numpy(), knn_index_np, random_index)
    dead = [*left.dead, *right.dead]
    write_dead_letter_file(out.staged(), dead)

    counts = {}
    for name, pool in pools.items():
        counts.update({f"{name}_rows_read": pool.rows_read, f"{name}_rows_kept": pool.rows_kept,
                       f"{name}_rows_duplicate": pool.rows_duplicate, f"{name}_rows_dead_lettered": len(pool.dead),
                       f"{name}_texts": len(pool.texts)})
    counts.update({"self_pairs_excluded": int((exclude >= 0).sum()), "pairs_knn": by_source["knn"]["pairs"],
                   "pairs_random": by_source["random"]["pairs"],
                   "pairs_written": by_source["knn"]["pairs"] + by_source["random"]["pairs"]})
    dead_letters: dict[str, int] = {}
    for name, pool in pools.items():
        for letter in pool.dead:
            key = f"{name}.{letter.reason}"
            dead_letters[key] = dead_letters.get(key, 0) + 1
    reconciliation = "; ".join(
        f"{name} rows read {p.rows_read:,} = kept {p.rows_kept:,} + duplicates {p.rows_duplicate:,} + dead-lettered "
        f"{len(p.dead):,}" for name, p in pools.items())
    reconciliation += (f"; pairs written {counts['pairs_written']:,} = knn {counts['pairs_knn']:,} + random "
                       f"{counts['pairs_random']:,}")
    notes = [f"exact search: {len(left.texts):,} x {len(right.texts):,} similarities of {side.transformer.config.hidden_size} "
             f"dims on {device}"]
    short = len(left.texts) * min(job.top_k, len(right.texts)) - counts["pairs_knn"]
    if short:
        notes.append(f"{short:,} neighbour slots stayed empty: the right pool has fewer than --top-k texts besides "
                     "the left text itself")
    summary = RunSummary(
        job=JOB_NAME, arguments=list(argv if argv is not None else sys.argv[1:]), output=job.output,
        model_fingerprints={"encoder": student.fingerprint}, wall_seconds=round(time.monotonic() - started, 3),
        counts=counts, dead_letters=dict(sorted(dead_letters.items())), reconciliation=reconciliation, notes=notes,
        metrics={"seconds": seconds, "sources": by_source})
    out.commit(summary)
    return summary


def write_candidates(path: str, left: TextPool, right: TextPool, embeddings: dict[str, torch.Tensor],
                     knn_sims: np.ndarray, knn_index: np.ndarray, random_index: list[np.ndarray],
                     rows_per_group: int = 65536) -> dict[str, dict[str, float]]:
    """Write each left text's neighbours (by rank), then its random pairs, as zstd Parquet row groups.

    knn_sims, knn_index: (NL, k') from :func:`top_k_neighbours`; random_index: NL arrays of right
    indices. Returns per source the pairs written and their mean similarity.
    """
    left_emb, right_emb = embeddings["left"].cpu().numpy(), embeddings["right"].cpu().numpy()
    totals = {source: [0, 0.0] for source in SOURCES}
    rows: list[tuple] = []  # (left index, right index, source, similarity, rank)

    with FileSystems.create(path) as handle, pq.ParquetWriter(handle, CANDIDATE_SCHEMA, compression=COMPRESSION) as out:
        def flush() -> None:
            if not rows:
                return
            for row in rows:
                totals[row[2]][0] += 1
                totals[row[2]][1] += row[3]
            i, j, source, similarity, rank = zip(*rows)
            out.write_table(pa.Table.from_pydict({
                "left": [left.texts[x] for x in i], "right": [right.texts[x] for x in j],
                "left_id": [left.ids[x] for x in i], "right_id": [right.ids[x] for x in j],
                "source": list(source), "similarity": list(similarity), "rank": list(rank)}, schema=CANDIDATE_SCHEMA))
            rows.clear()

        for i in range(len(left.texts)):
            for rank, (j, similarity) in enumerate(zip(knn_index[i], knn_sims[i]), start=1):
                if j >= 0:
                    rows.append((i, int(j), "knn", float(similarity), rank))
            picks = random_index[i]
            rows.extend((i, int(j), "random", float(similarity), None)
                        for j, similarity in zip(picks, right_emb[picks] @ left_emb[i]))
            if len(rows) >= rows_per_group:
                flush()
        flush()
    return {source: {"pairs": count, "mean_similarity": round(total / count, 4) if count else None}
            for source, (count, total) in totals.items()}


# The command line is declared in jobs/cli.py (light, so that --help and bad arguments answer
# before the imports above); ``main`` is kept for callers of ``jobs.build_candidates.main``.
main = cli.build_candidates
