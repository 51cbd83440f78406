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

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from encoders.choices import DEVICES
from encoders.config import DEFAULT_ENCODER
from encoders.errors import FlagError
from encoders.settings import NON_NEGATIVE_INT, POSITIVE_INT, SEED, Range, check_settings, setting
from jobs.common import abort_output_on_failure, job_command, main_module, run_started
from jobs.text_tables import side_column_options, side_columns
from pipeline.choices import FORMATS
from pipeline.settings import LITERAL_OUTPUT, Output, TrainingRun

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    from encoders.checkpoint import Student
    from pipeline.summary import RunSummary
    from pipeline.text_checks import TextColumns


JOB_NAME = "build_candidates"


@dataclass(frozen=True, kw_only=True)
class Mining:
    """The two text pools, their columns, and how candidates are mined from them."""
    left_texts: tuple[str, ...] = setting(
        (), "Pool of left texts: a path, glob or Beam filesystem path; repeat for more. Format from the extension: "
            ".parquet, .jsonl, .csv, .tsv, the last three optionally .zst.", multiple=True, required=True,
        metavar="PATH")
    right_texts: tuple[str, ...] = setting((), "Pool of right texts (may be the same files as --left-texts).",
                                           multiple=True, required=True, metavar="PATH")
    format: str | None = setting(None, "Read every input as this format, whatever its extension.", choices=FORMATS)
    texts_text_col: str = setting("text", "Column holding the text.")
    texts_id_col: str | None = setting(None, "Column holding the text's id. Without it, a text's id is a stable hash "
                                             "of its content.")
    left_texts_id_col: str | None = None      # None: texts_id_col (jobs/text_tables.py declares the four)
    left_texts_text_col: str | None = None
    right_texts_id_col: str | None = None
    right_texts_text_col: str | None = None
    top_k: int = setting(10, "Nearest right texts per left text (exact cosine search), the text itself excluded.",
                         range=NON_NEGATIVE_INT, required=True, metavar="K")
    random_per_left: int = setting(1, "Random right texts per left text, as easy negatives (never a neighbour or the "
                                      "text itself).", range=NON_NEGATIVE_INT, metavar="R")
    encoder: str = setting(DEFAULT_ENCODER, "Sentence encoder (Hugging Face directory or hub id), mean pooled and "
                                            "normalised; the default is the packaged all-MiniLM-L6-v2, no download.",
                           metavar="MODEL")
    max_length: int = setting(128, "Tokens per text for the encoder.", range=Range(int, 2))
    batch_size: int = setting(128, "Texts per encoder batch (sorted by length first).", range=POSITIVE_INT)
    seed: int = setting(0, "Seeds the random pairs.", range=SEED)


@dataclass(frozen=True, kw_only=True)
class BuildCandidatesJob(TrainingRun, Output, Mining):
    """Everything one mining run needs, every field a flag (--help lists the last base's first)."""
    output: str = setting(help="Directory to create: part-00000-of-00001.parquet, _dead_letter/, _SUMMARY.json, "
                               "_SUCCESS." + LITERAL_OUTPUT, metavar="DIR", required=True)
    device: str = setting("auto", "Where encoding and search run; auto = CUDA when present.", choices=DEVICES)
    progress: bool = setting(True, "Show encoding progress bars.", negatable=True)

    def check(self) -> None:
        check_settings(self)
        if self.top_k + self.random_per_left < 1:
            raise FlagError("--top-k 0 with --random-per-left 0 would mine nothing: give --top-k K >= 1 "
                            "and/or --random-per-left R >= 1")

    def text_columns(self, side: str) -> TextColumns:
        """The columns of ``side``'s pool (its own flags, else the shared ones)."""
        from pipeline.text_checks import TextColumns

        chosen = side_columns(vars(self), side)
        return TextColumns(text=chosen["text"][0], id=chosen["id"][0])


# --------------------------------------------------------------------------- the command line

def report(job: BuildCandidatesJob, argv: list[str]) -> str:
    return run(job, argv).table()


main = job_command("build-candidates", BuildCandidatesJob, report,
                   "Mine candidate pairs (top-k neighbours + random pairs) for teacher labeling.",
                   extra=side_column_options)


# --------------------------------------------------------------------------- the job

def encoder_for(job: BuildCandidatesJob) -> Student:
    """The embedding model: the baseline student (all layers, mean-pooled normalised sentence
    embedding) on ``job.encoder``."""
    from encoders.checkpoint import build_student
    from encoders.config import baseline_config

    config = baseline_config().replace(encoder=job.encoder, left_max_length=job.max_length,
                                       right_max_length=job.max_length)
    return build_student(config)


@abort_output_on_failure
def run(job: BuildCandidatesJob, argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, read, encode, search, sample, write, summarise."""
    from pipeline.provenance import table_metadata
    import numpy as np
    import torch
    from encoders.device import pick_device
    from encoders.neighbours import embed_texts, sample_random, top_k_neighbours
    from pipeline.datasets import read_text_pool, write_candidates
    from pipeline.dead_letters import check_dead_letter_limit
    from pipeline.output.commit import open_output, write_dead_letter_file
    from pipeline.output.paths import local_path_or_none
    from pipeline.readers import check_columns, expand_inputs
    from pipeline.store import STORE_FILE_PREFIX, STORE_FILE_SUFFIX
    from pipeline.summary import RunSummary

    job.check()
    device = pick_device(job.device)
    columns = {name: job.text_columns(name) for name in ("left", "right")}
    files = {"left": expand_inputs(job.left_texts, job.format), "right": expand_inputs(job.right_texts, job.format)}
    for name, side_files in files.items():
        check_columns(side_files, [c for c in (columns[name].text, columns[name].id) if c])
    student = encoder_for(job)
    side = student.encoder.left.to(device).eval()  # one shared encoder: both pools in one space
    out = open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                      reads={"--left-texts": job.left_texts, "--right-texts": job.right_texts,
                             "--encoder": [local_path_or_none(job.encoder)]})

    started = run_started()
    pools = {name: read_text_pool(side_files, columns[name]) for name, side_files in files.items()}
    left, right = pools["left"], pools["right"]
    dead_letters: dict[str, int] = {}
    for name, pool in pools.items():
        for letter in pool.dead:
            key = f"{name}.{letter.reason}"
            dead_letters[key] = dead_letters.get(key, 0) + 1
    reconciliation = "; ".join(
        f"{name} rows read {p.rows_read:,} = kept {p.rows_kept:,} + duplicates {p.rows_duplicate:,} + dead-lettered "
        f"{len(p.dead):,}" for name, p in pools.items())
    # Before the encoding, the long part: a bad input is known once it has been read.
    check_dead_letter_limit(left.rows_read + right.rows_read, len(left.dead) + len(right.dead), dead_letters,
                            job.max_dead_letter_fraction, reconciliation)
    seconds = {}
    embeddings = {}
    for name, pool in pools.items():
        tic = time.perf_counter()
        if name == "right" and right.texts == left.texts:
            embeddings[name] = embeddings["left"]   # one pool on both sides (e.g. questions x questions)
        else:
            embeddings[name] = embed_texts(side, pool.texts, job.batch_size, f"encode {name}", job.bars()).to(device)
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
    provenance = table_metadata(JOB_NAME, {"encoder": (student.fingerprint, job.encoder)})
    by_source = write_candidates(path, left, right, embeddings, knn_sims.numpy(), knn_index_np, random_index,
                                 provenance)
    dead = [*left.dead, *right.dead]
    write_dead_letter_file(out.staged(), dead, provenance)

    counts = {}
    for name, pool in pools.items():
        counts.update({f"{name}_rows_read": pool.rows_read, f"{name}_rows_kept": pool.rows_kept,
                       f"{name}_rows_duplicate": pool.rows_duplicate, f"{name}_rows_dead_lettered": len(pool.dead),
                       f"{name}_texts": len(pool.texts)})
    counts.update({"self_pairs_excluded": int((exclude >= 0).sum()), "pairs_knn": by_source["knn"]["pairs"],
                   "pairs_random": by_source["random"]["pairs"],
                   "pairs_written": by_source["knn"]["pairs"] + by_source["random"]["pairs"]})
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


if __name__ == "__main__":  # python -m jobs.build_candidates
    main_module("build_candidates")
