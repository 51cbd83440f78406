"""Label pairs with a teacher cross-encoder: the distillation set the student learns from.

    python -m jobs.label_pairs --pairs 'pairs/*.parquet' --teacher teacher/ --output distill/ \
        [--temperature 1.0] [--previous distill-yesterday/]

Writes ``DIR/part-*.parquet`` (see pipeline/beam/label.py for the columns), ``DIR/_dead_letter/``,
``DIR/_MANIFEST.json`` (teacher fingerprint, temperature, columns), ``DIR/_SUMMARY.json`` and
``DIR/_SUCCESS``, committed at the end (pipeline/outputs.py).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import click

from jobs.common import (ARGV_KEY, BEAM_EPILOG, BEAM_JOB_CONTEXT, FORMATS, abort_output_on_failure, beam_args_for_run,
                         device_option, JobCommand, main_module, output_option, overwrite_option, preflight, run_job,
                         run_options, run_started, split_list, stall_option, dead_letter_option, Number, POSITIVE_INT,
                         torch_threads_option)
from jobs.engines import check_engine, engine_options

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    from pipeline.datasets import DistillationManifest
    from pipeline.summary import RunSummary


JOB_NAME = "label_pairs"


@dataclass(frozen=True)
class LabelPairsJob:
    """Everything one labeling run needs; built once from the command line."""
    pairs: tuple[str, ...]
    teacher: str
    output: str
    left_col: str = "left"
    right_col: str = "right"
    left_id_col: str | None = None
    right_id_col: str | None = None
    keep_cols: tuple[str, ...] = ()
    temperature: float = 1.0
    previous: str | None = None
    batch_size: int = 64
    max_length: int | None = None
    device: str = "auto"
    torch_threads: int | None = None
    format: str | None = None
    overwrite: bool = False
    max_dead_letter_fraction: float = 0.1
    engine: str = "beam"                  # jobs/engines.py: beam | spark
    spark_master: str | None = None
    spark_conf: tuple[str, ...] = ()


def _check(job: LabelPairsJob) -> None:
    from pipeline.errors import FlagError
    from pipeline.datasets import BASE_COLUMNS
    from pipeline.preflight import check_keep_cols

    if not job.temperature > 0:
        raise FlagError(f"--temperature {job.temperature!r} is not allowed: give a number > 0 (1 = the teacher's "
                        "own probabilities; > 1 softer labels)")
    if job.batch_size < 1:
        raise FlagError(f"--batch-size {job.batch_size!r} is not allowed: give a positive integer")
    if job.max_length is not None and job.max_length < 4:
        raise FlagError(f"--max-length {job.max_length!r} is not allowed: give an integer of at least 4")
    check_keep_cols(job.keep_cols, BASE_COLUMNS)        # also the pre-flight's: each once, no output column
    if job.previous is not None and _same_path(job.previous, job.output):
        raise FlagError(f"--previous {job.previous!r} is also --output: write the new set to a new directory "
                        "(the previous one is read while the new one is written)")


def _same_path(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b)


def _check_previous(job: LabelPairsJob, fingerprint: str, schema) -> tuple[DistillationManifest, list[str]]:
    """The previous set must come from the same teacher and have the same columns."""
    from pipeline.readers import InputError
    from pipeline.datasets import DistillationManifest, schema_columns
    from pipeline.store import store_files

    manifest = DistillationManifest.read(job.previous)
    if manifest.teacher_fingerprint != fingerprint:
        raise InputError(f"--previous {job.previous!r} was labeled by another teacher (fingerprint "
                         f"{manifest.teacher_fingerprint[:16]}, this one {fingerprint[:16]}): its labels cannot be "
                         "reused; drop --previous to label every pair with this teacher")
    if manifest.columns != schema_columns(schema):
        raise InputError(f"--previous {job.previous!r} has columns {manifest.columns} but this run writes "
                         f"{schema_columns(schema)}: use the same --keep-cols (and input column types) as the "
                         "previous run")
    files = store_files(job.previous)
    if not files:
        raise InputError(f"--previous {job.previous!r} holds no part-*.parquet files")
    return manifest, files


# --------------------------------------------------------------------------- the command line

@click.command("label-pairs", cls=JobCommand, context_settings=BEAM_JOB_CONTEXT, epilog=BEAM_EPILOG)
@click.option("--pairs", multiple=True, required=True, metavar="PATH",
              help="Pairs to label: a path, glob or Beam filesystem path (gs://, s3://); repeat for more. Format "
                   "from the extension: .parquet, .jsonl, .csv, .tsv, the last three optionally .zst.")
@click.option("--format", type=click.Choice(FORMATS), default=None,
              help="Read every input as this format, whatever its extension.")
@click.option("--left-col", default="left", show_default=True, help="Column holding the left text.")
@click.option("--right-col", default="right", show_default=True, help="Column holding the right text.")
@click.option("--left-id-col", default=None,
              help="Column holding the left text's id (with --right-id-col). Without them an id is a stable hash "
                   "of the text.")
@click.option("--right-id-col", default=None, help="Column holding the right text's id.")
@click.option("--keep-cols", callback=split_list, default=None, metavar="A,B",
              help="Input columns to copy to the output (Parquet types kept; text formats as strings).")
@click.option("--teacher", required=True, metavar="DIR",
              help="Teacher checkpoint: a train_teacher output, or any Hugging Face sequence-classification "
                   "cross-encoder (path or cached hub id) with its trained head.")
@click.option("--temperature", type=Number(float, 0, low_open=True, allowed="give a number > 0 (1 = the teacher's "
                                                                          "own probabilities; > 1 softer labels)"),
              default=1.0, show_default=True,
              help="T of the soft labels: sigmoid(logit / T), or softmax(logits / T) for k classes.")
@click.option("--previous", default=None, metavar="DIR",
              help="A previous label_pairs output from the same teacher: pairs it holds (same left and right "
                   "text) are not labeled again, and all its rows are copied into --output, which is then the "
                   "complete distillation set.")
@output_option("Directory to create: part-*.parquet, _dead_letter/, _MANIFEST.json, _SUMMARY.json, _SUCCESS.")
@overwrite_option
@dead_letter_option
@click.option("--batch-size", type=POSITIVE_INT, default=64, show_default=True,
              help="Pairs per teacher batch (pairs are sorted by length first, so padding stays small).")
@click.option("--max-length", type=Number(int, 4, allowed="give an integer of at least 4"), default=None,
              help="Tokens per pair; default: the teacher's own (teacher.json, else the tokenizer's, at most 512). "
                   "Changing it changes the teacher fingerprint.")
@device_option("Where the teacher runs; auto = CUDA when present (with mixed precision).")
@torch_threads_option
@stall_option
@engine_options
@run_options
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool, stall_timeout: float, **flags) -> None:
    """Label pairs with a teacher cross-encoder and write the distillation set."""
    def go() -> str:
        check_engine(flags, ctx.args)
        preflight(ctx, "label_pairs", flags)
        flags["spark_conf"] = tuple(flags["spark_conf"])
        job = LabelPairsJob(pairs=tuple(flags.pop("pairs")), keep_cols=flags.pop("keep_cols"), **flags)
        summary = run(job, beam_args_for_run(ctx.args, verbose), ctx.meta[ARGV_KEY])
        return summary.table()
    run_job(go, name="label_pairs", quiet=quiet, verbose=verbose, beam_args=ctx.args, stall_seconds=stall_timeout)


@abort_output_on_failure
def run(job: LabelPairsJob, beam_args: list[str], argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, run the pipeline, write manifest and summary."""
    from pipeline.errors import FlagError
    from encoders.remote import pin_model_dir
    from pipeline.provenance import table_metadata
    from apache_beam.io.filesystems import FileSystems
    from encoders.device import pick_device
    from encoders.teacher import load_teacher
    from pipeline.dead_letters import check_dead_letter_limit
    from pipeline.beam.label import LabelSettings
    from pipeline.beam.runner import thread_plan, validate_beam_args
    from pipeline.datasets import DistillationManifest, distillation_schema, schema_columns
    from pipeline.output.commit import open_output
    from pipeline.pairs import PairColumns, kept_fields
    from pipeline.readers import check_columns, expand_inputs, expect_inputs, worker_path
    from pipeline.store import MANIFEST_FILE, count_rows, store_files
    from pipeline.summary import RunSummary
    from pipeline.writers import write_json_file

    validate_beam_args(beam_args)
    # A teacher that is not a local path may be a cached hub id: it stays as given.
    job = replace(job, output=worker_path(job.output), previous=worker_path(job.previous),
                  teacher=worker_path(job.teacher) if os.path.exists(job.teacher) else job.teacher)
    _check(job)
    pick_device(job.device)
    columns = PairColumns(left=job.left_col, right=job.right_col, left_id=job.left_id_col,
                          right_id=job.right_id_col, keep=tuple(job.keep_cols))
    files = expand_inputs(job.pairs, job.format)
    check_columns(files, columns.needed())
    # A remote teacher is pinned here: every worker loads the bytes this process fingerprints.
    job = replace(job, teacher=pin_model_dir(job.teacher))
    teacher = load_teacher(job.teacher)
    if job.max_length is not None:
        positions = getattr(teacher.model.config, "max_position_embeddings", None)
        if positions is not None and job.max_length > positions:
            raise FlagError(f"--max-length {job.max_length} is not allowed for teacher {job.teacher!r}: its "
                            f"position embeddings stop at {positions}")
        teacher.task = teacher.task.replace(max_length=job.max_length)
    kept = kept_fields(files, columns.keep)
    schema = distillation_schema(teacher.task.num_outputs, kept)
    settings = LabelSettings(teacher=job.teacher, fingerprint=teacher.fingerprint, schema=schema,
                             keep=columns.keep, temperature=job.temperature, batch_size=job.batch_size,
                             device=job.device, max_length=job.max_length,
                             threads=thread_plan(beam_args, job.torch_threads))
    previous_files = _check_previous(job, teacher.fingerprint, schema)[1] if job.previous else []
    out = open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                      reads={"--pairs": job.pairs, "--teacher": [job.teacher], "--previous": [job.previous]})

    provenance = table_metadata(JOB_NAME, {"teacher": (teacher.fingerprint, job.teacher)})
    # The progress line's totals (with --previous, some pairs are skipped, not labeled).
    expect_inputs(files, ("rows_read",) if job.previous else ("rows_read", "pairs_labeled"))
    started = run_started()
    if job.engine == "spark":
        counts, dead_letters = run_on_spark(job, settings, files, columns, kept, previous_files, out, provenance)
    else:
        counts, dead_letters = run_on_beam(job, beam_args, settings, files, columns, kept, previous_files, out,
                                           provenance)
    written = store_files(out.staged())
    rows = counts["output_rows"] = count_rows(written)
    accounted = counts["pairs_labeled"] + counts["pairs_skipped_labeled"] + counts["pairs_dead_lettered"]
    if accounted != counts["pairs_read"] or rows != counts["pairs_labeled"] + counts["previous_rows_copied"]:
        # A bundle that did not fail must be complete: never report a run that lost pairs as done.
        raise RuntimeError(f"pair accounting failed: read {counts['pairs_read']}, labeled {counts['pairs_labeled']} + "
                           f"skipped {counts['pairs_skipped_labeled']} + dead-lettered "
                           f"{counts['pairs_dead_lettered']} = {accounted}; output rows {rows}, copied "
                           f"{counts['previous_rows_copied']}")
    notes = []
    if job.previous:
        notes.append(f"--previous {job.previous}: {counts['pairs_skipped_labeled']:,} pairs already labeled there "
                     f"were skipped; all {counts['previous_rows_copied']:,} of its rows were copied through (soft "
                     f"labels recomputed at T={job.temperature:g}), so {job.output} is the complete set")
    manifest = DistillationManifest(
        teacher_fingerprint=teacher.fingerprint, teacher=job.teacher, task=teacher.task.to_dict(),
        num_outputs=teacher.task.num_outputs, temperature=job.temperature, columns=schema_columns(schema),
        kept_columns=list(columns.keep), rows=rows, files=[FileSystems.split(p)[1] for p in written],
        previous=job.previous, notes=notes)
    write_json_file(out.staged(MANIFEST_FILE), manifest.to_json() + "\n")
    summary = RunSummary(
        job=JOB_NAME, arguments=list(argv if argv is not None else sys.argv[1:]), output=job.output,
        model_fingerprints={"teacher": teacher.fingerprint}, wall_seconds=round(time.monotonic() - started, 3),
        counts=counts, dead_letters=dead_letters,
        reconciliation=(f"pairs read {counts['pairs_read']:,} = labeled {counts['pairs_labeled']:,} + already labeled "
                        f"{counts['pairs_skipped_labeled']:,} + dead-lettered {counts['pairs_dead_lettered']:,}; "
                        f"output rows {rows:,} = labeled + copied {counts['previous_rows_copied']:,}"),
        notes=notes, metrics={"temperature": job.temperature, "task": teacher.task.to_dict()})
    check_dead_letter_limit(counts["pairs_read"], counts["pairs_dead_lettered"], dead_letters,
                            job.max_dead_letter_fraction, summary.reconciliation)
    out.commit(summary)
    return summary


def run_on_beam(job: LabelPairsJob, beam_args: list[str], settings, files, columns, kept, previous_files, out,
                provenance) -> tuple[dict[str, int], dict[str, int]]:
    """The labeling pipeline on Beam -> (counts but ``output_rows``, dead letters by reason)."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from pipeline.beam.counters import read_counters, split_dead_letters
    from pipeline.beam.encode import DEAD_LETTER_TAG, ReadRows
    from pipeline.beam.label import ExtractPairs, LabelPairs, ReadPrevious, SkipLabeled, WriteDistillationSet
    from pipeline.beam.runner import make_pipeline, run_to_end
    from pipeline.beam.writes import WriteDeadLetters
    from pipeline.paths import escape_glob
    from pipeline.provenance import stamped

    schema = settings.schema
    pipeline = make_pipeline(beam_args)
    read = pipeline | "ReadRows" >> ReadRows(files)
    extracted = read.rows | "ExtractPairs" >> ExtractPairs(columns, kept)
    pairs = extracted.pairs
    tables = []
    if previous_files:
        previous = pipeline | "ReadPrevious" >> ReadPrevious(
            FileSystems.join(escape_glob(job.previous), "part*.parquet"), schema, job.temperature)
        pairs = pairs | "SkipLabeled" >> SkipLabeled(previous["keys"])
        tables.append(previous["rows"])
    tables.insert(0, pairs | "LabelPairs" >> LabelPairs(settings))
    (tables | "AllRows" >> beam.Flatten() | "WriteDistillationSet" >> WriteDistillationSet(out.staged(), stamped(schema, provenance)))
    ((read[DEAD_LETTER_TAG], extracted[DEAD_LETTER_TAG])
     | "AllDeadLetters" >> beam.Flatten()
     | "WriteDeadLetters" >> WriteDeadLetters(out.staged(), provenance))
    result = run_to_end(pipeline)   # the commit runs after this, in the launching process

    counters, dead_letters = split_dead_letters(read_counters(result))
    return {
        "pairs_read": counters.get("rows_read", 0),
        "pairs_labeled": counters.get("pairs_labeled", 0),
        "pairs_skipped_labeled": counters.get("pairs_skipped_labeled", 0),
        "pairs_dead_lettered": sum(dead_letters.values()),
        "pairs_truncated": counters.get("pairs_truncated", 0),
        "previous_rows_copied": counters.get("previous_rows_copied", 0),
    }, dead_letters


def run_on_spark(job: LabelPairsJob, settings, files, columns, kept, previous_files, out,
                 provenance) -> tuple[dict[str, int], dict[str, int]]:
    """``--engine spark``: the same labeling on Spark (pipeline/spark/label.py), staged as Beam's
    is -> (counts but ``output_rows``, dead letters by reason)."""
    from jobs.engines import parse_spark_conf
    from pipeline.output.layout import DEAD_LETTER_DIR
    from pipeline.spark.label import SparkLabelSettings, execute_label
    from pipeline.spark.session import spark_session, thread_plan

    spark = spark_session(job.spark_master, parse_spark_conf(job.spark_conf))
    result = execute_label(spark, SparkLabelSettings(
        pair_files=tuple(files), columns=columns, kept=tuple(kept),
        label=replace(settings, threads=thread_plan(spark, job.torch_threads)), provenance=provenance,
        directory=out.staged(), dead_letter_dir=out.staged(DEAD_LETTER_DIR), previous_files=tuple(previous_files)))
    dead_letters = result.dead_letters().get("", {})
    counts = {name: result.counts[name] for name in ("pairs_read", "pairs_labeled", "pairs_skipped_labeled")}
    counts["pairs_dead_lettered"] = sum(dead_letters.values())
    counts.update({name: result.counts[name] for name in ("pairs_truncated", "previous_rows_copied")})
    return counts, dead_letters


if __name__ == "__main__":  # python -m jobs.label_pairs
    main_module("label_pairs")
