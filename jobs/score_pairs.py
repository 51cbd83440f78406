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
                         preflight, run_job, run_options, run_started, split_list, stall_option, dead_letter_option,
                         POSITIVE_INT, head_speed_options, torch_threads_option)
from jobs.engines import check_engine, engine_options
from jobs.text_tables import side_column_options, side_columns

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    import pyarrow as pa
    from pipeline.models import ModelFacts
    from pipeline.beam.score import PairColumns
    from pipeline.readers import InputFile
    from pipeline.store import PartPin, StoreLayout
    from pipeline.summary import RunSummary
    from pipeline.text_checks import TextColumns


JOB_NAME = "score_pairs"
JOINS = ("auto", "broadcast", "shuffle")
OUTPUT_COLUMNS = ("left_id", "right_id", "score", "probs")   # what --keep-cols may not be named like
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
    left_texts_id_col: str | None = None      # None: texts_id_col (jobs/text_tables.py)
    left_texts_text_col: str | None = None
    right_texts_id_col: str | None = None
    right_texts_text_col: str | None = None
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
    max_dead_letter_fraction: float = 0.1
    engine: str = "beam"                  # jobs/engines.py: beam | spark
    spark_master: str | None = None
    spark_conf: tuple[str, ...] = ()
    torch_threads: int | None = None
    compile: bool = False
    head_quantize: str | None = None

    @property
    def columns(self) -> PairColumns:
        from pipeline.beam.score import PairColumns

        return PairColumns.for_scoring(self.left_col, self.right_col, self.left_id_col, self.right_id_col,
                                       self.keep_cols)

    def text_columns(self, side: str) -> TextColumns:
        """The id and text columns of ``side``'s text tables (its own flags, else the shared ones)."""
        from pipeline.text_checks import TextColumns

        chosen = side_columns(vars(self), side)
        return TextColumns(text=chosen["text"][0], id=chosen["id"][0])


@dataclass(frozen=True)
class SidePlan:
    """One side's store: its layout, the files it starts from, where it is written (staged)."""
    side: str
    layout: StoreLayout
    existing_parts: tuple[PartPin, ...]   # the --store side's part files, pinned (empty without --store)
    existing_rows: int
    text_files: tuple[InputFile, ...]
    output: str   # relative to --output, e.g. store/left


def check_arguments(job: ScorePairsJob) -> None:
    """Flag combinations that cannot work, named before anything is read."""
    from pipeline.errors import FlagError
    from pipeline.preflight import check_keep_cols

    if (job.left_id_col is None) != (job.right_id_col is None):
        raise FlagError("--left-id-col and --right-id-col go together: give both (pairs of ids) or neither "
                        "(pairs of texts)")
    if job.left_id_col and job.store is None and not (job.left_texts and job.right_texts):
        raise FlagError("pairs of ids need --left-texts and --right-texts (id/text tables) or a --store holding "
                        "their texts")
    if not job.left_id_col and (job.left_texts or job.right_texts):
        raise FlagError("--left-texts/--right-texts are for pairs of ids: also give --left-id-col and --right-id-col")
    if job.join not in JOINS:
        raise FlagError(f"--join {job.join!r} is not allowed: choose one of {', '.join(JOINS)}")
    check_keep_cols(job.keep_cols, OUTPUT_COLUMNS)      # also the pre-flight's: each once, no output column


def existing_store(job: ScorePairsJob, student: ModelFacts, side: str) -> tuple[tuple[PartPin, ...], int, str]:
    """(part files pinned, rows, dtype) of ``--store``'s side, checked against the model; empty if none."""
    from pipeline.store import StoreWanted, open_store_side

    if job.store is None:
        return (), 0, job.dtype
    layout = student.layout(side, job.dtype)
    store = open_store_side(job.store, side, StoreWanted(
        student.fingerprint, student.config.encoder, layout.tokens_kept, layout.dim, layout.pooled_dim,
        student.config.token_selection, student.config.max_length(side)))
    return store.parts, store.manifest.rows, store.manifest.dtype


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


def score_meaning(job: ScorePairsJob, student: ModelFacts) -> str:
    """What the scores table's ``score`` means (its ``pairscore.score`` metadata)."""
    from pipeline.provenance import CLASS_PROBABILITY_SCORE, COSINE_SCORE, PROBABILITY_SCORE

    if job.model_dir is None:
        return COSINE_SCORE
    return CLASS_PROBABILITY_SCORE if student.config.num_outputs > 1 else PROBABILITY_SCORE


def output_schema(job: ScorePairsJob, student: ModelFacts, files: list[InputFile],
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


def text_row_counts(side: str, counts: dict[str, int], dead: dict[str, int]) -> dict[str, int]:
    """The summary's counts of ``side``'s text-table rows (id mode), from its counters."""
    return {f"{side}_text_rows_read": counts.get("rows_read", 0),
            f"{side}_text_rows_kept": counts.get("rows_kept", 0),
            f"{side}_text_rows_duplicate": counts.get("rows_duplicate", 0),
            f"{side}_text_rows_unused": counts.get("rows_unused", 0),
            f"{side}_text_rows_dead_lettered": sum(dead.values())}


def reconcile_text_rows(side: str, counts: dict[str, int]) -> str:
    """``left text rows read N = kept + duplicates + unused + dead-lettered``; RuntimeError when
    a row is unaccounted for. Unused: no pair names its id (pipeline/beam/used_texts.py)."""
    parts = [counts[f"{side}_text_rows_{name}"] for name in ("kept", "duplicate", "unused", "dead_lettered")]
    read = counts[f"{side}_text_rows_read"]
    line = (f"{side} text rows read {read:,} = kept {parts[0]:,} + duplicates {parts[1]:,} + unused {parts[2]:,} "
            f"+ dead-lettered {parts[3]:,}")
    if sum(parts) != read:
        raise RuntimeError(f"text row accounting failed: {line}")
    return line


def shuffle_buckets(store_bytes: int, pair_rows: int, minimum: int = 64) -> int:
    """Partitions of the shuffle join and of ``--dedupe-pairs``: enough that one bucket's store
    rows (about 256 MiB) and pairs (about 2M) fit a worker, and never fewer than ``minimum`` so
    that many workers share the work (Beam: 64; Spark: twice its task slots, each bucket a task)."""
    return max(minimum, -(-store_bytes // (256 << 20)), -(-pair_rows // (2 << 20)))


# --------------------------------------------------------------------------- the command line

@click.command("score-pairs", cls=JobCommand, context_settings=BEAM_JOB_CONTEXT, epilog=BEAM_EPILOG)
@click.option("--pairs", multiple=True, required=True, metavar="PATH",
              help="Pair table: path, glob or Beam filesystem path; repeat for more. Format from the extension "
                   "(.parquet, .jsonl, .csv, .tsv, the last three optionally .zst).")
@click.option("--format", type=click.Choice(FORMATS), default=None, help="Read the pair tables as this format.")
@click.option("--left-col", default="left", show_default=True, help="Left text column (pairs of texts).")
@click.option("--right-col", default="right", show_default=True, help="Right text column (pairs of texts).")
@click.option("--left-id-col", default=None,
              help="Left id column (pairs of ids; texts from --left-texts and/or --store).")
@click.option("--right-id-col", default=None,
              help="Right id column (pairs of ids; texts from --right-texts and/or --store).")
@click.option("--left-texts", multiple=True, metavar="PATH", help="Id/text table of the left texts.")
@click.option("--right-texts", multiple=True, metavar="PATH", help="Id/text table of the right texts.")
@click.option("--texts-id-col", default="id", show_default=True, help="Id column of the text tables.")
@click.option("--texts-text-col", default="text", show_default=True, help="Text column of the text tables.")
@side_column_options
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
@click.option("--broadcast-limit-mb", type=POSITIVE_INT, default=1024, show_default=True,
              help="Memory a worker may spend on both stores for the broadcast join.")
@click.option("--dedupe-pairs", is_flag=True,
              help="Score each (left id, right id) once and count repeats as duplicates. Default: every "
                   "row is scored and written, so outputs line up one-to-one with inputs.")
@click.option("--batch-size", type=POSITIVE_INT, default=8192, show_default=True,
              help="Pairs per head batch (and per chunk of pairs).")
@click.option("--encode-batch-size", type=POSITIVE_INT, default=128, show_default=True,
              help="Texts per encoder batch for texts not yet in a store.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True,
              help="Storage of newly encoded embeddings (an existing --store keeps its own).")
@device_option("Where models run; auto = CUDA when present (mixed precision on GPU).")
@click.option("--accelerator", default=None, metavar="HINT",
              help="Beam resource hint for the scoring step, e.g. "
                   "'type:nvidia-l4;count:1;install-nvidia-driver' (Dataflow); the join stays on CPU workers.")
@dead_letter_option
@head_speed_options
@torch_threads_option
@stall_option
@engine_options
@run_options
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool, stall_timeout: float, **flags) -> None:
    """Score pairs with a student (stage two), running stage one for texts not yet stored."""
    def go() -> str:
        check_engine(flags, ctx.args, {"--accelerator": flags["accelerator"], "--dedupe-pairs": flags["dedupe_pairs"]})
        preflight(ctx, "score_pairs", flags)
        for name in ("pairs", "left_texts", "right_texts", "spark_conf"):
            flags[name] = tuple(flags[name])
        summary = run(ScorePairsJob(**flags), beam_args_for_run(ctx.args, verbose), ctx.meta[ARGV_KEY])
        return summary.table()
    run_job(go, name="score_pairs", quiet=quiet, verbose=verbose, beam_args=ctx.args, stall_seconds=stall_timeout)


@abort_output_on_failure
def run(job: ScorePairsJob, beam_args: list[str], argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, run the pipeline, write manifests and summary."""
    from pipeline.errors import FlagError
    from encoders.remote import pin_model_dir
    from pipeline.provenance import stamped, table_metadata
    import apache_beam as beam
    from apache_beam.io.parquetio import WriteToParquetBatched
    from encoders.config import SIDES
    from encoders.device import pick_device
    from pipeline.beam.counters import read_counters, split_dead_letters
    from pipeline.beam.encode import DEAD_LETTER_TAG, DedupeTexts, EncodeSettings, ReadRows
    from pipeline.beam.runner import is_local_runner, make_pipeline, run_to_end, thread_plan, validate_beam_args
    from pipeline.beam.score import (CompleteStore, DistinctPairTexts, PAIRS, ReadPairs, ScorePairs, ScoreSettings,
                                     dedupe_pair_chunks, read_store_tables)
    from pipeline.beam.used_texts import UsedTextRows
    from pipeline.beam.writes import WriteDeadLetters, WriteStore
    from pipeline.pairs import kept_fields
    from pipeline.readers import check_columns, count_input_rows, expand_inputs, expect_inputs, worker_path
    from pipeline.scoring_core import head_option_refused
    from pipeline.models import model_facts
    from pipeline.store import COMPRESSION, STORE_FILE_PREFIX, STORE_FILE_SUFFIX, count_rows, store_files

    check_arguments(job)
    validate_beam_args(beam_args)
    job = replace(job, output=worker_path(job.output), model_dir=worker_path(job.model_dir),
                  store=worker_path(job.store))
    refused = head_option_refused(pick_device(job.device), job.compile, job.head_quantize)
    if refused:
        raise FlagError(refused)
    columns = job.columns
    pair_files = expand_inputs(job.pairs, job.format)
    check_columns(pair_files, columns.required() + list(job.keep_cols))
    kept = kept_fields(pair_files, job.keep_cols)
    text_files = {side: () for side in SIDES}
    if columns.id_mode:
        for side, patterns in (("left", job.left_texts), ("right", job.right_texts)):
            if not patterns:
                continue     # this side's texts come from --store alone
            text_files[side] = tuple(expand_inputs(patterns))
            check_columns(text_files[side], [job.text_columns(side).id, job.text_columns(side).text])
    # The model is pinned here (local or remote: every file's size and SHA-256): every worker loads
    # the bytes this process fingerprints, or stops the run (exit 3) naming the file that changed.
    job = replace(job, model_dir=pin_model_dir(job.model_dir))
    # Config, fingerprint and head only: the encoder loads in the workers, if a text needs it.
    student = model_facts(job.model_dir, job.store)
    plans = {}
    for side in SIDES:
        parts, rows, dtype = existing_store(job, student, side)
        plans[side] = SidePlan(side, student.layout(side, dtype), parts, rows, text_files[side],
                               STORE_DIR + "/" + side)
    pair_rows = count_input_rows(pair_files) if (not columns.id_mode or job.dedupe_pairs) else 0
    join, why = choose_join(job, plans, 0 if columns.id_mode else pair_rows)
    bound = store_bytes_bound(plans, 0 if columns.id_mode else pair_rows)
    buckets = shuffle_buckets(bound, pair_rows)
    schema = output_schema(job, student, pair_files, kept)
    if job.engine == "spark":
        return run_on_spark(job, student, plans, pair_files, kept, schema, join, why, (bound, pair_rows), argv)
    out = open_job_output(job)

    provenance = table_metadata(JOB_NAME, {"model": (student.fingerprint, job.model_dir or student.config.encoder)},
                                score=score_meaning(job, student))
    # The progress line's totals (with --dedupe-pairs fewer pairs are scored than read).
    expect_inputs(pair_files, ("pairs.rows_read",) + (() if job.dedupe_pairs else ("pairs.rows_scored",)))
    for plan in plans.values():
        expect_inputs(plan.text_files, (f"{plan.side}_texts.rows_read",))
    threads = thread_plan(beam_args, job.torch_threads)   # applied on each worker (encoders/threads.py)
    started = run_started()
    pipeline = make_pipeline(beam_args)
    read = pipeline | "ReadPairs" >> ReadPairs(pair_files, columns, chunk_size=job.batch_size, kept=kept,
                                                    spread_batches=not is_local_runner(beam_args))
    pairs = dedupe_pair_chunks(read.pairs, job.batch_size, buckets) if job.dedupe_pairs else read.pairs
    dead_letters = [read.dead_letters]
    side_tables = {}
    for side, plan in plans.items():
        label = side.capitalize()
        if columns.id_mode and not plan.text_files:
            unique = pipeline | f"No{label}Texts" >> beam.Create([])   # --store alone gives this side's texts
        elif columns.id_mode:
            text_rows = pipeline | f"Read{label}Texts" >> ReadRows(plan.text_files, counter_prefix=f"{side}_texts.")
            # Only the rows whose id a pair names go on (pipeline/beam/used_texts.py).
            used_rows = text_rows.rows | f"Used{label}Texts" >> UsedTextRows(
                side, job.text_columns(side).id, pairs, counter_prefix=f"{side}_texts.")
            deduped = used_rows | f"Dedupe{label}Texts" >> DedupeTexts(
                job.text_columns(side), counter_prefix=f"{side}_texts.")
            unique = deduped["unique"]
            dead_letters += [text_rows[DEAD_LETTER_TAG], deduped[DEAD_LETTER_TAG]]
        else:
            unique = read.texts(side) | f"Distinct{label}Texts" >> DistinctPairTexts()
        old = (read_store_tables(pipeline, plan.existing_parts, f"{label}Store") if plan.existing_parts
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
    scored.scores | "WriteScores" >> WriteToParquetBatched(
        out.staged(SCORES_DIR, STORE_FILE_PREFIX), schema=stamped(schema, provenance), codec=COMPRESSION, file_name_suffix=STORE_FILE_SUFFIX)
    dead_letters.append(scored.dead_letters)
    tuple(dead_letters) | "AllDeadLetters" >> beam.Flatten() | "WriteDeadLetters" >> WriteDeadLetters(out.staged(), provenance)
    result = run_to_end(pipeline)   # the commit below runs here, in the launching process

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
            counts.update(text_row_counts(side, side_counts, side_dead))
        encoded, _ = split_dead_letters(counters, f"{side}.")
        counts[f"{side}_texts_encoded"] = encoded.get("texts_encoded", 0)
        counts[f"{side}_texts_reused"] = encoded.get("texts_reused", 0)
        counts[f"{side}_texts_truncated"] = encoded.get("texts_truncated", 0)
        pair_dead.update({f"{side}_texts:{k}": v for k, v in side_dead.items()})
    return finish(job, out, student, plans, counts, pair_dead, f"join: {join} ({why})", started, argv)


def open_job_output(job: ScorePairsJob):
    """``--output`` opened for this run (pipeline/outputs.py: checked, locked, staged)."""
    from pipeline.output.commit import open_output

    return open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                       reads={"--pairs": job.pairs, "--left-texts": job.left_texts, "--right-texts": job.right_texts,
                              "--store": [job.store], "--model": [job.model_dir]})


def finish(job: ScorePairsJob, out, student: ModelFacts, plans: dict[str, SidePlan], counts: dict[str, int],
           pair_dead: dict[str, int], join_note: str, started: float, argv: list[str] | None) -> RunSummary:
    """Either engine's counts -> reconciled, then the dead-letter limit, the stores' manifests, the
    summary and the commit."""
    from encoders.config import SIDES
    from encoders.remote import pinned_file_fingerprint
    from pipeline.dead_letters import check_dead_letter_limit
    from pipeline.store import write_manifest
    from pipeline.summary import RunSummary

    accounted = counts["pairs_scored"] + counts["pairs_duplicate"] + counts["pairs_dead_lettered"]
    if accounted != counts["pairs_read"] or counts["rows_written"] != counts["pairs_scored"]:
        raise RuntimeError(f"pair accounting failed: read {counts['pairs_read']}, scored {counts['pairs_scored']} + "
                           f"duplicates {counts['pairs_duplicate']} + dead-lettered {counts['pairs_dead_lettered']}; "
                           f"rows written {counts['rows_written']}")
    reconciliation = (f"pairs read {counts['pairs_read']:,} = scored {counts['pairs_scored']:,} + duplicates "
                      f"{counts['pairs_duplicate']:,} + dead-lettered {counts['pairs_dead_lettered']:,}")
    if job.columns.id_mode:
        reconciliation += "".join("; " + reconcile_text_rows(side, counts) for side in SIDES)
    notes = [join_note]
    if job.model_dir is None:
        notes.append("no --model: scores are the zero-training baseline, the cosine of the packaged "
                     "all-MiniLM-L6-v2's mean-pooled sentence embeddings (in [-1, 1], not a probability)")
    summary = RunSummary(
        job=JOB_NAME, arguments=list(argv if argv is not None else sys.argv[1:]), output=job.output,
        model_fingerprints={"model": student.fingerprint}, wall_seconds=round(time.monotonic() - started, 3),
        counts=counts, dead_letters=dict(sorted(pair_dead.items())),
        reconciliation=reconciliation,
        notes=notes)
    # Every row read (pairs, and the text tables in id mode) against every row dead-lettered.
    rows_read = counts["pairs_read"] + sum(counts.get(f"{side}_text_rows_read", 0) for side in SIDES)
    check_dead_letter_limit(rows_read, sum(pair_dead.values()), pair_dead, job.max_dead_letter_fraction,
                            summary.reconciliation)
    # Manifests only now that the counts reconcile: a store with a manifest is a complete store.
    for side, plan in plans.items():
        write_manifest(out.staged(plan.output), model_fingerprint=student.fingerprint,
                       model_files_fingerprint=pinned_file_fingerprint(job.model_dir), encoder=student.config.encoder,
                       layout=plan.layout, token_selection=student.config.token_selection,
                       max_length=student.config.max_length(side))
    out.commit(summary)
    return summary


def run_on_spark(job: ScorePairsJob, student: ModelFacts, plans: dict[str, SidePlan], pair_files: list[InputFile],
                 kept: list[pa.Field], schema: pa.Schema, join: str, why: str, sizes: tuple[int, int],
                 argv: list[str] | None) -> RunSummary:
    """``--engine spark``: the same run on Spark (pipeline/spark/score.py), committed as Beam's is.
    ``sizes``: (stores' size bound, pair rows), which size the bucketed join's buckets."""
    from encoders.config import SIDES
    from jobs.engines import parse_spark_conf
    from pipeline.output.layout import DEAD_LETTER_DIR
    from pipeline.provenance import table_metadata
    from pipeline.spark.score import SparkScoreSettings, SparkSide, execute_score
    from pipeline.spark.session import spark_session, task_slots, thread_plan
    from pipeline.store import verify_part_pins

    spark = spark_session(job.spark_master, parse_spark_conf(job.spark_conf))
    threads = thread_plan(spark, job.torch_threads)
    out = open_job_output(job)
    provenance = table_metadata(JOB_NAME, {"model": (student.fingerprint, job.model_dir or student.config.encoder)},
                                score=score_meaning(job, student))
    started = run_started()
    settings = SparkScoreSettings(
        pair_files=tuple(pair_files), columns=job.columns, kept=tuple(kept), schema=schema, provenance=provenance,
        sides={side: SparkSide(plan.layout, tuple(part.path for part in plan.existing_parts), plan.text_files,
                               out.staged(plan.output))
               for side, plan in plans.items()},
        texts={side: job.text_columns(side) for side in SIDES}, scores_dir=out.staged(SCORES_DIR),
        dead_letter_dir=out.staged(DEAD_LETTER_DIR), model_dir=job.model_dir, device=job.device,
        batch_size=job.batch_size, encode_batch_size=job.encode_batch_size, threads=threads, join=join,
        buckets=shuffle_buckets(*sizes, minimum=2 * task_slots(spark)))
    result = execute_score(spark, settings)
    # Spark's tasks read the --store parts by path: the run commits only if every part is still the
    # one pinned at its start (one rewritten meanwhile: InputChanged naming it, exit 3).
    verify_part_pins(part for plan in plans.values() for part in plan.existing_parts)
    dead_letters = result.dead_letters()
    pair_dead = dict(dead_letters.get("pairs.", {}))
    counts = {"pairs_read": result.counts["pairs_read"], "pairs_scored": result.counts["rows_written"],
              "pairs_duplicate": 0, "pairs_dead_lettered": sum(pair_dead.values()),
              "rows_written": result.counts["rows_written"]}
    for side in SIDES:
        side_dead = dead_letters.get(f"{side}_texts.", {})
        if job.columns.id_mode:
            for name in ("read", "kept", "duplicate"):
                counts[f"{side}_text_rows_{name}"] = result.counts.get(f"{side}_text_rows_{name}", 0)
            counts[f"{side}_text_rows_unused"] = 0      # Spark encodes every row of the text tables
            counts[f"{side}_text_rows_dead_lettered"] = sum(side_dead.values())
        for name in ("texts_encoded", "texts_reused", "texts_truncated"):
            counts[f"{side}_{name}"] = result.counts.get(f"{side}_{name}", 0)
        pair_dead.update({f"{side}_texts:{k}": v for k, v in side_dead.items()})
    return finish(job, out, student, plans, counts, pair_dead,
                  f"join: {join} ({why}); engine: spark ({spark.sparkContext.master})", started, argv)


if __name__ == "__main__":  # python -m jobs.score_pairs
    main_module("score_pairs")
