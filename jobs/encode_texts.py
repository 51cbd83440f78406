"""Stage one: encode every unique text of a table once and write an embedding store.

    python -m jobs.encode_texts --input texts.jsonl --text-col text --side left --output store/
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import click

from jobs.common import (ARGV_KEY, BEAM_EPILOG, BEAM_JOB_CONTEXT, DTYPES, FORMATS, abort_output_on_failure,
                         beam_args_for_run, device_option, JobCommand, main_module, output_option, overwrite_option,
                         dead_letter_option, preflight, run_job, run_options, run_started, stall_option, POSITIVE_INT,
                         torch_threads_option)
from jobs.engines import check_engine, engine_options

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    from encoders.checkpoint import Student
    from pipeline.output.commit import OutputDir
    from pipeline.store import StoreLayout
    from pipeline.summary import RunSummary


JOB_NAME = "encode_texts"


@dataclass(frozen=True)
class EncodeTextsJob:
    """Everything one stage-one run needs; built once from the command line."""
    inputs: tuple[str, ...]
    output: str
    text_col: str = "text"
    id_col: str | None = None
    side: str = "left"
    model_dir: str | None = None
    format: str | None = None
    overwrite: bool = False
    batch_size: int = 128
    dtype: str = "float16"
    device: str = "auto"
    max_dead_letter_fraction: float = 0.1
    engine: str = "beam"                  # jobs/engines.py: beam | spark
    spark_master: str | None = None
    spark_conf: tuple[str, ...] = ()
    torch_threads: int | None = None


# --------------------------------------------------------------------------- the command line

@click.command("encode-texts", cls=JobCommand, context_settings=BEAM_JOB_CONTEXT, epilog=BEAM_EPILOG)
@click.option("--input", "inputs", multiple=True, required=True, metavar="PATH",
              help="Input table: a path, glob or Beam filesystem path (gs://, s3://); repeat for more. "
                   "Format from the extension: .parquet, .jsonl, .csv, .tsv, the last three optionally .zst.")
@click.option("--format", type=click.Choice(FORMATS), default=None,
              help="Read every input as this format, whatever its extension.")
@click.option("--text-col", default="text", show_default=True, help="Column holding the text.")
@click.option("--id-col", default=None,
              help="Column holding the text's id. Without it, a text's id is a stable hash of its content.")
@click.option("--side", type=click.Choice(["left", "right"]), default="left", show_default=True,
              help="Which side of the pairs these texts are: left keeps N tokens, right keeps M.")
@click.option("--model", "model_dir", default=None, metavar="DIR",
              help="Student checkpoint directory. Default: the zero-training baseline on the packaged "
                   "all-MiniLM-L6-v2.")
@output_option("Store directory to create: part-*.parquet, _MANIFEST.json, _dead_letter/, _SUMMARY.json, _SUCCESS.",
               metavar="STORE_DIR")
@overwrite_option
@click.option("--batch-size", type=POSITIVE_INT, default=128, show_default=True,
              help="Texts per encoder batch (texts are sorted by length first, so padding stays small).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True,
              help="Embedding storage: float16, or int8 with a per-row scale (half the bytes).")
@device_option("Where the encoder runs; auto = CUDA when present (with mixed precision).")
@dead_letter_option
@torch_threads_option
@stall_option
@engine_options
@run_options
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool, stall_timeout: float, **flags) -> None:
    """Encode every unique text once and write an embedding store (stage one)."""
    def go() -> str:
        check_engine(flags, ctx.args)
        preflight(ctx, "encode_texts", flags)
        flags["spark_conf"] = tuple(flags["spark_conf"])
        job = EncodeTextsJob(inputs=tuple(flags.pop("inputs")), **flags)
        summary = run(job, beam_args_for_run(ctx.args, verbose), ctx.meta[ARGV_KEY])
        return summary.table()
    run_job(go, name="encode_texts", quiet=quiet, verbose=verbose, beam_args=ctx.args, stall_seconds=stall_timeout)


@abort_output_on_failure
def run(job: EncodeTextsJob, beam_args: list[str], argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, run the pipeline, write manifest and summary."""
    from encoders.remote import pin_model_dir
    from pipeline.provenance import table_metadata
    import apache_beam as beam
    from encoders.checkpoint import load_or_build_student
    from encoders.config import baseline_config
    from encoders.device import pick_device
    from pipeline.beam.counters import read_counters, split_dead_letters
    from pipeline.beam.encode import DEAD_LETTER_TAG, DedupeTexts, EncodeSettings, EncodeTexts, ReadRows
    from pipeline.beam.runner import make_pipeline, run_to_end, thread_plan, validate_beam_args
    from pipeline.beam.writes import WriteDeadLetters, WriteStore
    from pipeline.readers import check_columns, expand_inputs, expect_inputs, worker_path
    from pipeline.store import count_rows, store_files, store_layout
    from pipeline.text_checks import TextColumns

    validate_beam_args(beam_args)
    job = replace(job, output=worker_path(job.output), model_dir=worker_path(job.model_dir))
    pick_device(job.device)
    files = expand_inputs(job.inputs, job.format)
    columns = TextColumns(text=job.text_col, id=job.id_col)
    check_columns(files, [c for c in (columns.text, columns.id) if c])
    # The model is pinned here (local or remote: every file's size and SHA-256): every worker loads
    # the bytes this process fingerprints, or stops the run (exit 3) naming the file that changed.
    job = replace(job, model_dir=pin_model_dir(job.model_dir))
    student = load_or_build_student(job.model_dir, baseline_config())
    layout = store_layout(student, job.side, job.dtype)
    if job.engine == "spark":
        return run_on_spark(job, student, layout, files, columns, argv)
    out = open_job_output(job)

    provenance = table_metadata(JOB_NAME, {"model": (student.fingerprint, job.model_dir or student.config.encoder)})
    expect_inputs(files, ("rows_read",))   # the progress line's totals
    started = run_started()
    pipeline = make_pipeline(beam_args)
    read = pipeline | "ReadRows" >> ReadRows(files)
    deduped = read.rows | "DedupeTexts" >> DedupeTexts(columns)
    settings = EncodeSettings(model_dir=job.model_dir, side=job.side, batch_size=job.batch_size,
                              dtype=job.dtype, device=job.device,
                              threads=thread_plan(beam_args, job.torch_threads))
    (deduped["unique"]
     | "EncodeTexts" >> EncodeTexts(settings, layout)
     | "WriteStore" >> WriteStore(out.staged(), layout, provenance))
    ((read[DEAD_LETTER_TAG], deduped[DEAD_LETTER_TAG])
     | "AllDeadLetters" >> beam.Flatten()
     | "WriteDeadLetters" >> WriteDeadLetters(out.staged(), provenance))
    result = run_to_end(pipeline)   # the commit below runs here, in the launching process

    store_rows = count_rows(store_files(out.staged()))

    counters, dead_letters = split_dead_letters(read_counters(result))
    counts = {
        "rows_read": counters.get("rows_read", 0),
        "rows_kept": counters.get("rows_kept", 0),
        "rows_duplicate": counters.get("rows_duplicate", 0),
        "rows_dead_lettered": sum(dead_letters.values()),
        "texts_encoded": counters.get("texts_encoded", 0),
        "texts_truncated": counters.get("texts_truncated", 0),
        "store_rows": store_rows,
    }
    return finish(job, out, student, layout, counts, dead_letters, started, argv)


def open_job_output(job: EncodeTextsJob) -> OutputDir:
    """``--output`` opened for this run (pipeline/outputs.py: checked, locked, staged)."""
    from pipeline.output.commit import open_output

    return open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                       reads={"--input": job.inputs, "--model": [job.model_dir]})


def finish(job: EncodeTextsJob, out: OutputDir, student: Student, layout: StoreLayout, counts: dict[str, int],
           dead_letters: dict[str, int], started: float, argv: list[str] | None) -> RunSummary:
    """Either engine's counts -> reconciled, then the dead-letter limit, the manifest, the summary
    and the commit."""
    from encoders.remote import pinned_file_fingerprint
    from pipeline.dead_letters import check_dead_letter_limit
    from pipeline.store import write_manifest
    from pipeline.summary import RunSummary

    store_rows = counts["store_rows"]
    accounted = counts["rows_kept"] + counts["rows_duplicate"] + counts["rows_dead_lettered"]
    if accounted != counts["rows_read"] or store_rows != counts["rows_kept"]:
        # A bundle that did not fail must be complete: never report a run that lost rows as done.
        raise RuntimeError(f"row accounting failed: read {counts['rows_read']}, kept {counts['rows_kept']} + "
                           f"duplicates {counts['rows_duplicate']} + dead-lettered {counts['rows_dead_lettered']}"
                           f" = {accounted}; store rows {store_rows}")
    notes = []
    if job.model_dir is None:
        notes.append("no --model: the zero-training baseline (packaged all-MiniLM-L6-v2, [CLS] token + "
                     "mean-pooled sentence embedding); train a student for DiPair tokens")
    summary = RunSummary(
        job=JOB_NAME, arguments=list(argv if argv is not None else sys.argv[1:]), output=job.output,
        model_fingerprints={"model": student.fingerprint}, wall_seconds=round(time.monotonic() - started, 3),
        counts=counts, dead_letters=dead_letters,
        reconciliation=(f"rows read {counts['rows_read']:,} = kept {counts['rows_kept']:,} + duplicates "
                        f"{counts['rows_duplicate']:,} + dead-lettered {counts['rows_dead_lettered']:,}"),
        notes=notes)
    check_dead_letter_limit(counts["rows_read"], counts["rows_dead_lettered"], dead_letters,
                            job.max_dead_letter_fraction, summary.reconciliation)
    write_manifest(out.staged(), model_fingerprint=student.fingerprint,
                   model_files_fingerprint=pinned_file_fingerprint(job.model_dir), encoder=student.config.encoder,
                   layout=layout, token_selection=student.config.token_selection,
                   max_length=student.config.max_length(job.side))
    out.commit(summary)
    return summary


def run_on_spark(job: EncodeTextsJob, student: Student, layout: StoreLayout, files: list, columns,
                 argv: list[str] | None) -> RunSummary:
    """``--engine spark``: the same run on Spark (pipeline/spark/stores.py), committed as Beam's is."""
    from jobs.engines import parse_spark_conf
    from pipeline.output.layout import DEAD_LETTER_DIR
    from pipeline.provenance import table_metadata
    from pipeline.spark.session import spark_session, thread_plan
    from pipeline.spark.steps import SparkRun
    from pipeline.spark.stores import SparkSide, encode_stores, text_table_texts

    spark = spark_session(job.spark_master, parse_spark_conf(job.spark_conf))
    out = open_job_output(job)
    provenance = table_metadata(JOB_NAME, {"model": (student.fingerprint, job.model_dir or student.config.encoder)})
    started = run_started()
    sides = {job.side: SparkSide(layout, (), tuple(files), out.staged())}
    run = SparkRun()
    unique = text_table_texts(spark, run, sides, columns, out.staged(DEAD_LETTER_DIR), provenance)
    encode_stores(spark, run, unique, sides, job.model_dir, job.device, provenance, job.batch_size,
                  thread_plan(spark, job.torch_threads))
    run.keep_only_results([out.staged()])
    dead_letters = run.dead_letters().get(f"{job.side}_texts.", {})
    counts = {
        "rows_read": run.counts.get(f"{job.side}_text_rows_read", 0),
        "rows_kept": run.counts.get(f"{job.side}_text_rows_kept", 0),
        "rows_duplicate": run.counts.get(f"{job.side}_text_rows_duplicate", 0),
        "rows_dead_lettered": sum(dead_letters.values()),
        "texts_encoded": run.counts.get(f"{job.side}_texts_encoded", 0),
        "texts_truncated": run.counts.get(f"{job.side}_texts_truncated", 0),
        "store_rows": run.footer_rows("store", job.side),
    }
    return finish(job, out, student, layout, counts, dead_letters, started, argv)


if __name__ == "__main__":  # python -m jobs.encode_texts
    main_module("encode_texts")
