"""Stage two: score pairs with a student, encoding only the texts not yet in the stores.

    python -m jobs.score_pairs --pairs pairs.jsonl --output scores/
    python -m jobs.score_pairs --pairs pairs.parquet --left-id-col q --right-id-col p \\
        --left-texts queries.parquet --right-texts products.parquet --model student/ \\
        --store last-night/store --output tonight/
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import click

from jobs.common import (ARGV_KEY, BEAM_EPILOG, BEAM_JOB_CONTEXT, DTYPES, FORMATS, abort_output_on_failure,
                         beam_args_for_run, device_option, JobCommand, main_module, output_option, overwrite_option,
                         preflight, run_job, run_options, run_started, split_list, stall_option,
                         head_speed_options, torch_threads_option)

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    import pyarrow as pa
    from encoders.checkpoint import Student
    from pipeline.beam.score import PairColumns
    from pipeline.readers import InputFile
    from pipeline.store import StoreLayout
    from pipeline.summary import RunSummary


JOB_NAME = "score_pairs"
JOINS = ("auto", "broadcast", "shuffle")
SCORES_DIR = "scores"        # OUT/scores/: the scores table
STORE_DIR = "store"          # OUT/store/{left,right}/: tomorrow's --store
# Python overhead per row of a store held in memory (dict entry, id string, arrays' share).
LOOKUP_OVERHEAD_BYTES = 200


@dataclass(frozen=True)
class ScorePairsJob:
    """Everything one stage-two run needs; built once from the command line."""
    pairs: tuple[str, ...]
    output: str
    left_col: str = "left"
    right_col: str = "right"
    left_id_col: str | None = None
    right_id_col: str | None = None
    left_texts: tuple[str, ...] = ()
    right_texts: tuple[str, ...] = ()
    texts_id_col: str = "id"
    texts_text_col: str = "text"
    keep_cols: tuple[str, ...] = ()
    model_dir: str | None = None
    store: str | None = None
    join: str = "auto"
    broadcast_limit_mb: int = 1024
    dedupe_pairs: bool = False
    format: str | None = None
    overwrite: bool = False
    batch_size: int = 8192
    encode_batch_size: int = 128
    dtype: str = "float16"
    device: str = "auto"
    accelerator: str | None = None
    torch_threads: int | None = None
    compile: bool = False
    head_quantize: str | None = None

    @property
    def columns(self) -> PairColumns:
        from pipeline.beam.score import PairColumns

        return PairColumns(self.left_col, self.right_col, self.left_id_col, self.right_id_col, self.keep_cols)


@dataclass(frozen=True)
class SidePlan:
    """One side's store: its layout, the files it starts from, where it is written (staged)."""
    side: str
    layout: StoreLayout
    existing_files: tuple[str, ...]
    existing_rows: int
    text_files: tuple[InputFile, ...]
    output: str   # relative to --output, e.g. store/left


def check_arguments(job: ScorePairsJob) -> None:
    """Flag combinations that cannot work, named before anything is read."""
    if (job.left_id_col is None) != (job.right_id_col is None):
        raise ValueError("--left-id-col and --right-id-col go together: give both (pairs of ids) or neither "
                         "(pairs of texts)")
    if job.left_id_col and not (job.left_texts and job.right_texts):
        raise ValueError("pairs of ids need --left-texts and --right-texts (id/text tables) to find their texts")
    if not job.left_id_col and (job.left_texts or job.right_texts):
        raise ValueError("--left-texts/--right-texts are for pairs of ids: also give --left-id-col and --right-id-col")
    if job.join not in JOINS:
        raise ValueError(f"--join {job.join!r} is not allowed: choose one of {', '.join(JOINS)}")
    reserved = {"left_id", "right_id", "score", "probs"}
    clashing = sorted(reserved & set(job.keep_cols))
    if clashing:
        raise ValueError(f"--keep-cols {','.join(clashing)} would overwrite output columns {sorted(reserved)}")


def existing_store(job: ScorePairsJob, student: Student, side: str) -> tuple[tuple[str, ...], int, str]:
    """(files, rows, dtype) of ``--store``'s side, checked against the model; empty if none."""
    from pipeline.store import StoreWanted, open_store_side, store_layout

    if job.store is None:
        return (), 0, job.dtype
    layout = store_layout(student, side, job.dtype)
    store = open_store_side(job.store, side, StoreWanted(
        student.fingerprint, student.config.encoder, layout.tokens_kept, layout.dim, layout.pooled_dim,
        student.config.token_selection, student.config.max_length(side)))
    return store.files, store.manifest.rows, store.manifest.dtype


def store_bytes_bound(plans: dict[str, SidePlan], pair_rows: int) -> int:
    """Both stores' size, bounded before the run (their final size is known only after it): rows
    of the existing store plus every row that could add a text (the text tables in id mode, two
    per pair in text mode)."""
    from pipeline.readers import count_input_rows

    estimate = 0
    for plan in plans.values():
        new_rows = count_input_rows(plan.text_files) if plan.text_files else pair_rows
        # Pooled embeddings are held as stored, float16 (pipeline.scoring_core.StoreLookup).
        row_bytes = plan.layout.token_bytes + 2 * (plan.layout.pooled_dim or 0) + LOOKUP_OVERHEAD_BYTES
        estimate += (plan.existing_rows + new_rows) * row_bytes
    return estimate


def choose_join(job: ScorePairsJob, plans: dict[str, SidePlan], pair_rows: int) -> tuple[str, str]:
    """(join, why). Broadcast when both stores fit ``--broadcast-limit-mb`` in a worker's memory
    (:func:`store_bytes_bound`)."""
    if job.join != "auto":
        return job.join, f"--join {job.join}"
    estimate = store_bytes_bound(plans, pair_rows)
    limit = job.broadcast_limit_mb * 2 ** 20
    join = "broadcast" if estimate <= limit else "shuffle"
    return join, f"auto: stores bounded by {estimate / 2 ** 20:,.0f} MB vs --broadcast-limit-mb {job.broadcast_limit_mb}"


def score_meaning(job: ScorePairsJob, student: Student) -> str:
    """What the scores table's ``score`` means (its ``pairscore.score`` metadata)."""
    from pipeline.provenance import CLASS_PROBABILITY_SCORE, COSINE_SCORE, PROBABILITY_SCORE

    if job.model_dir is None:
        return COSINE_SCORE
    return CLASS_PROBABILITY_SCORE if student.config.num_outputs > 1 else PROBABILITY_SCORE


def output_schema(job: ScorePairsJob, student: Student, files: list[InputFile],
                  kept: list[pa.Field] | None = None) -> pa.Schema:
    """left_id, right_id, score (+ probs for k classes) and the kept columns, typed by
    :func:`pipeline.pairs.kept_fields` (Parquet keeps its types, JSONL JSON's, CSV/TSV strings;
    inputs that disagree fail here, before the pipeline starts)."""
    import pyarrow as pa
    from pipeline.pairs import kept_fields

    fields = [pa.field("left_id", pa.string()), pa.field("right_id", pa.string()), pa.field("score", pa.float32())]
    if student.config.num_outputs > 1:
        fields.append(pa.field("probs", pa.list_(pa.float32())))
    fields += kept if kept is not None else kept_fields(files, job.keep_cols)
    return pa.schema(fields)


def shuffle_buckets(store_bytes: int, pair_rows: int) -> int:
    """Partitions of the shuffle join and of ``--dedupe-pairs``: enough that one bucket's store
    rows (about 256 MiB) and pairs (about 2M) fit a worker, and never fewer than 64 so that
    many workers share the work."""
    return max(64, -(-store_bytes // (256 << 20)), -(-pair_rows // (2 << 20)))


# --------------------------------------------------------------------------- the command line

@click.command("score-pairs", cls=JobCommand, context_settings=BEAM_JOB_CONTEXT, epilog=BEAM_EPILOG)
@click.option("--pairs", multiple=True, required=True, metavar="PATH",
              help="Pair table: path, glob or Beam filesystem path; repeat for more. Format from the extension "
                   "(.parquet, .jsonl, .csv, .tsv, the last three optionally .zst).")
@click.option("--format", type=click.Choice(FORMATS), default=None, help="Read the pair tables as this format.")
@click.option("--left-col", default="left", show_default=True, help="Left text column (pairs of texts).")
@click.option("--right-col", default="right", show_default=True, help="Right text column (pairs of texts).")
@click.option("--left-id-col", default=None, help="Left id column (pairs of ids; needs --left-texts).")
@click.option("--right-id-col", default=None, help="Right id column (pairs of ids; needs --right-texts).")
@click.option("--left-texts", multiple=True, metavar="PATH", help="Id/text table of the left texts.")
@click.option("--right-texts", multiple=True, metavar="PATH", help="Id/text table of the right texts.")
@click.option("--texts-id-col", default="id", show_default=True, help="Id column of the text tables.")
@click.option("--texts-text-col", default="text", show_default=True, help="Text column of the text tables.")
@click.option("--keep-cols", callback=split_list, default=None, metavar="A,B",
              help="Pair columns copied to the output as they are.")
@click.option("--model", "model_dir", default=None, metavar="DIR",
              help="Student checkpoint. Default: zero-training baseline (cosine of the packaged MiniLM's "
                   "mean-pooled sentence embeddings).")
@click.option("--store", default=None, metavar="DIR",
              help="Stores of an earlier run (DIR/left, DIR/right, e.g. last night's OUTPUT/store): texts "
                   "already there are reused, not re-encoded. Refused if written by another model.")
@output_option("Directory to create: scores/ (the scores table), store/{left,right}/ (tomorrow's --store), "
               "_dead_letter/, _SUMMARY.json, _SUCCESS.")
@overwrite_option
@click.option("--join", type=click.Choice(JOINS), default="auto", show_default=True,
              help="broadcast: stores held in each worker's memory; shuffle: CoGroupByKey, scales past memory; "
                   "auto: broadcast when the stores fit --broadcast-limit-mb.")
@click.option("--broadcast-limit-mb", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Memory a worker may spend on both stores for the broadcast join.")
@click.option("--dedupe-pairs", is_flag=True,
              help="Score each (left id, right id) once and count repeats as duplicates. Default: every "
                   "row is scored and written, so outputs line up one-to-one with inputs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Pairs per head batch (and per chunk of pairs).")
@click.option("--encode-batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Texts per encoder batch for texts not yet in a store.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True,
              help="Storage of newly encoded embeddings (an existing --store keeps its own).")
@device_option("Where models run; auto = CUDA when present (mixed precision on GPU).")
@click.option("--accelerator", default=None, metavar="HINT",
              help="Beam resource hint for the scoring step, e.g. "
                   "'type:nvidia-l4;count:1;install-nvidia-driver' (Dataflow); the join stays on CPU workers.")
@head_speed_options
@torch_threads_option
@stall_option
@run_options
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool, stall_timeout: float, **flags) -> None:
    """Score pairs with a student (stage two), running stage one for texts not yet stored."""
    def go() -> str:
        preflight(ctx, "score_pairs", flags)
        for name in ("pairs", "left_texts", "right_texts"):
            flags[name] = tuple(flags[name])
        summary = run(ScorePairsJob(**flags), beam_args_for_run(ctx.args, verbose), ctx.meta[ARGV_KEY])
        return summary.table()
    run_job(go, name="score_pairs", quiet=quiet, verbose=verbose, beam_args=ctx.args, stall_seconds=stall_timeout)


@abort_output_on_failure
def run(job: ScorePairsJob, beam_args: list[str], argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, run the pipeline, write manifests and summary."""
    from encoders.remote import pin_model_dir
    from pipeline.provenance import stamped, table_metadata
    import apache_beam as beam
    from apache_beam.io.parquetio import WriteToParquetBatched
    from encoders.checkpoint import load_or_build_student
    from encoders.config import SIDES, baseline_config
    from encoders.device import pick_device
    from pipeline.beam.counters import read_counters, split_dead_letters
    from pipeline.beam.encode import DEAD_LETTER_TAG, DedupeTexts, EncodeSettings, ReadRows
    from pipeline.beam.runner import is_local_runner, make_pipeline, thread_plan, validate_beam_args
    from pipeline.beam.score import (CompleteStore, DistinctPairTexts, PAIRS, ReadPairs, ScorePairs, ScoreSettings,
                                     dedupe_pair_chunks, read_store_tables)
    from pipeline.beam.writes import WriteDeadLetters, WriteStore
    from pipeline.outputs import open_output
    from pipeline.pairs import kept_fields
    from pipeline.readers import check_columns, count_input_rows, expand_inputs, worker_path
    from pipeline.scoring_core import head_option_refused
    from pipeline.store import (COMPRESSION, STORE_FILE_PREFIX, STORE_FILE_SUFFIX, count_rows, store_files,
                                store_layout, write_manifest)
    from pipeline.summary import RunSummary
    from pipeline.text_checks import TextColumns

    check_arguments(job)
    validate_beam_args(beam_args)
    job = replace(job, output=worker_path(job.output), model_dir=worker_path(job.model_dir),
                  store=worker_path(job.store))
    refused = head_option_refused(pick_device(job.device), job.compile, job.head_quantize)
    if refused:
        raise ValueError(refused)
    columns = job.columns
    pair_files = expand_inputs(job.pairs, job.format)
    check_columns(pair_files, columns.required() + list(job.keep_cols))
    kept = kept_fields(pair_files, job.keep_cols)
    text_files = {side: () for side in SIDES}
    if columns.id_mode:
        for side, patterns in (("left", job.left_texts), ("right", job.right_texts)):
            text_files[side] = tuple(expand_inputs(patterns))
            check_columns(text_files[side], [job.texts_id_col, job.texts_text_col])
    # A remote model is pinned here: every worker loads the bytes this process fingerprints.
    job = replace(job, model_dir=pin_model_dir(job.model_dir))
    student = load_or_build_student(job.model_dir, baseline_config())
    if student.head is None:
        raise ValueError(f"model {job.model_dir!r} has no head to score with")
    plans = {}
    for side in SIDES:
        files, rows, dtype = existing_store(job, student, side)
        plans[side] = SidePlan(side, store_layout(student, side, dtype), files, rows, text_files[side],
                               STORE_DIR + "/" + side)
    pair_rows = count_input_rows(pair_files) if (not columns.id_mode or job.dedupe_pairs) else 0
    join, why = choose_join(job, plans, 0 if columns.id_mode else pair_rows)
    buckets = shuffle_buckets(store_bytes_bound(plans, 0 if columns.id_mode else pair_rows), pair_rows)
    schema = output_schema(job, student, pair_files, kept)
    out = open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                      reads={"--pairs": job.pairs, "--left-texts": job.left_texts, "--right-texts": job.right_texts,
                             "--store": [job.store], "--model": [job.model_dir]})

    provenance = table_metadata(JOB_NAME, {"model": (student.fingerprint, job.model_dir or student.config.encoder)},
                                score=score_meaning(job, student))
    threads = thread_plan(beam_args, job.torch_threads)   # applied on each worker (encoders/threads.py)
    started = run_started()
    pipeline = make_pipeline(beam_args)
    read = pipeline | "ReadPairs" >> ReadPairs(pair_files, columns, chunk_size=job.batch_size, kept=kept,
                                                    spread_batches=not is_local_runner(beam_args))
    pairs = dedupe_pair_chunks(read["pairs"], job.batch_size, buckets) if job.dedupe_pairs else read["pairs"]
    dead_letters = [read[DEAD_LETTER_TAG]]
    side_tables = {}
    for side, plan in plans.items():
        label = side.capitalize()
        if columns.id_mode:
            text_rows = pipeline | f"Read{label}Texts" >> ReadRows(plan.text_files, counter_prefix=f"{side}_texts.")
            deduped = text_rows.rows | f"Dedupe{label}Texts" >> DedupeTexts(
                TextColumns(job.texts_text_col, job.texts_id_col), counter_prefix=f"{side}_texts.")
            unique = deduped["unique"]
            dead_letters += [text_rows[DEAD_LETTER_TAG], deduped[DEAD_LETTER_TAG]]
        else:
            unique = read[f"{side}_texts"] | f"Distinct{label}Texts" >> DistinctPairTexts()
        old = (read_store_tables(pipeline, plan.existing_files, f"{label}Store") if plan.existing_files
               else pipeline | f"No{label}Store" >> beam.Create([]))
        settings = EncodeSettings(model_dir=job.model_dir, side=side, batch_size=job.encode_batch_size,
                                  dtype=plan.layout.dtype, device=job.device, threads=threads)
        side_tables[side] = unique | f"Complete{label}Store" >> CompleteStore(settings, plan.layout, old, f"{side}.")
        side_tables[side] | f"Write{label}Store" >> WriteStore(out.staged(plan.output), plan.layout, provenance)

    score_settings = ScoreSettings(model_dir=job.model_dir, left_layout=plans["left"].layout,
                                   right_layout=plans["right"].layout, output_schema=schema, keep=job.keep_cols,
                                   batch_size=job.batch_size, device=job.device, columns=columns,
                                   pair_paths=tuple(f.path for f in pair_files),
                                   threads=threads, compile=job.compile, quantize=job.head_quantize,
                                   buckets=buckets)
    scored = pairs | "ScorePairs" >> ScorePairs(score_settings, join, side_tables["left"], side_tables["right"],
                                                  job.accelerator)
    scored["scores"] | "WriteScores" >> WriteToParquetBatched(
        out.staged(SCORES_DIR, STORE_FILE_PREFIX), schema=stamped(schema, provenance), codec=COMPRESSION, file_name_suffix=STORE_FILE_SUFFIX)
    dead_letters.append(scored[DEAD_LETTER_TAG])
    tuple(dead_letters) | "AllDeadLetters" >> beam.Flatten() | "WriteDeadLetters" >> WriteDeadLetters(out.staged(), provenance)
    result = pipeline.run()
    result.wait_until_finish()   # the commit below runs here, in the launching process

    counters = read_counters(result)
    pair_counts, pair_dead = split_dead_letters(counters, PAIRS)
    score_files = store_files(out.staged(SCORES_DIR))
    counts = {
        "pairs_read": pair_counts.get("rows_read", 0),
        "pairs_scored": pair_counts.get("rows_scored", 0),
        "pairs_duplicate": pair_counts.get("rows_duplicate", 0),
        "pairs_dead_lettered": sum(pair_dead.values()),
        "rows_written": count_rows(score_files),
    }
    for side in SIDES:
        side_counts, side_dead = split_dead_letters(counters, f"{side}_texts.")
        if columns.id_mode:
            counts[f"{side}_text_rows_read"] = side_counts.get("rows_read", 0)
            counts[f"{side}_text_rows_dead_lettered"] = sum(side_dead.values())
        encoded, _ = split_dead_letters(counters, f"{side}.")
        counts[f"{side}_texts_encoded"] = encoded.get("texts_encoded", 0)
        counts[f"{side}_texts_reused"] = encoded.get("texts_reused", 0)
        counts[f"{side}_texts_truncated"] = encoded.get("texts_truncated", 0)
        pair_dead.update({f"{side}_texts:{k}": v for k, v in side_dead.items()})
    accounted = counts["pairs_scored"] + counts["pairs_duplicate"] + counts["pairs_dead_lettered"]
    if accounted != counts["pairs_read"] or counts["rows_written"] != counts["pairs_scored"]:
        raise RuntimeError(f"pair accounting failed: read {counts['pairs_read']}, scored {counts['pairs_scored']} + "
                           f"duplicates {counts['pairs_duplicate']} + dead-lettered {counts['pairs_dead_lettered']}; "
                           f"rows written {counts['rows_written']}")
    notes = [f"join: {join} ({why})"]
    if job.model_dir is None:
        notes.append("no --model: scores are the zero-training baseline, the cosine of the packaged "
                     "all-MiniLM-L6-v2's mean-pooled sentence embeddings (in [-1, 1], not a probability)")
    summary = RunSummary(
        job=JOB_NAME, arguments=list(argv if argv is not None else sys.argv[1:]), output=job.output,
        model_fingerprints={"model": student.fingerprint}, wall_seconds=round(time.monotonic() - started, 3),
        counts=counts, dead_letters=dict(sorted(pair_dead.items())),
        reconciliation=(f"pairs read {counts['pairs_read']:,} = scored {counts['pairs_scored']:,} + duplicates "
                        f"{counts['pairs_duplicate']:,} + dead-lettered {counts['pairs_dead_lettered']:,}"),
        notes=notes)
    # Manifests only now that the counts reconcile: a store with a manifest is a complete store.
    for side, plan in plans.items():
        write_manifest(out.staged(plan.output), model_fingerprint=student.fingerprint, encoder=student.config.encoder,
                       layout=plan.layout, token_selection=student.config.token_selection,
                       max_length=student.config.max_length(side))
    out.commit(summary)
    return summary


if __name__ == "__main__":  # python -m jobs.score_pairs
    main_module("score_pairs")
