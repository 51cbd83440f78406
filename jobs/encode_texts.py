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
                         preflight, run_job, run_options, run_started, stall_option,
                         torch_threads_option)

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
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
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Texts per encoder batch (texts are sorted by length first, so padding stays small).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True,
              help="Embedding storage: float16, or int8 with a per-row scale (half the bytes).")
@device_option("Where the encoder runs; auto = CUDA when present (with mixed precision).")
@torch_threads_option
@stall_option
@run_options
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool, stall_timeout: float, **flags) -> None:
    """Encode every unique text once and write an embedding store (stage one)."""
    def go() -> str:
        preflight(ctx, "encode_texts", flags)
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
    from pipeline.beam.runner import make_pipeline, thread_plan, validate_beam_args
    from pipeline.beam.writes import WriteDeadLetters, WriteStore
    from pipeline.outputs import open_output
    from pipeline.readers import check_columns, expand_inputs, worker_path
    from pipeline.store import count_rows, store_files, store_layout, write_manifest
    from pipeline.summary import RunSummary
    from pipeline.text_checks import TextColumns

    validate_beam_args(beam_args)
    job = replace(job, output=worker_path(job.output), model_dir=worker_path(job.model_dir))
    pick_device(job.device)
    files = expand_inputs(job.inputs, job.format)
    columns = TextColumns(text=job.text_col, id=job.id_col)
    check_columns(files, [c for c in (columns.text, columns.id) if c])
    # A remote model is pinned here: every worker loads the bytes this process fingerprints.
    job = replace(job, model_dir=pin_model_dir(job.model_dir))
    student = load_or_build_student(job.model_dir, baseline_config())
    layout = store_layout(student, job.side, job.dtype)
    out = open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                      reads={"--input": job.inputs, "--model": [job.model_dir]})

    provenance = table_metadata(JOB_NAME, {"model": (student.fingerprint, job.model_dir or student.config.encoder)})
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
    result = pipeline.run()
    result.wait_until_finish()   # the commit below runs here, in the launching process

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
    write_manifest(out.staged(), model_fingerprint=student.fingerprint, encoder=student.config.encoder,
                   layout=layout, token_selection=student.config.token_selection,
                   max_length=student.config.max_length(job.side))
    out.commit(summary)
    return summary


if __name__ == "__main__":  # python -m jobs.encode_texts
    main_module("encode_texts")
