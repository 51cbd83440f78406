"""Stage one: encode every unique text of a table once and write an embedding store.

    python -m jobs.encode_texts --input texts.jsonl --text-col text --side left --output store/

The job's steps (jobs/runner.py): plan (inputs, columns, the model pinned, the store's layout),
execute on Beam (pipeline/beam/encode.py) or Spark (pipeline/spark/stores.py), summarise; the
runner reconciles and commits.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import click

from jobs.common import (BEAM_EPILOG, BEAM_JOB_CONTEXT, DTYPES, FORMATS, POSITIVE_INT, JobCommand, dead_letter_option,
                         device_option, main_module, output_option, overwrite_option, run_options, stall_option,
                         torch_threads_option)
from jobs.engines import check_engine, engine_options
from jobs.runner import Counted, Job, Plan, Report, run, run_command

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    from encoders.checkpoint import Student
    from pipeline.output.commit import OutputDir
    from pipeline.readers import InputFile
    from pipeline.store import StoreLayout
    from pipeline.text_checks import TextColumns

__all__ = ["EncodeTextsJob", "main", "run"]   # run(EncodeTextsJob(...), beam_args)

BASELINE_NOTE = ("no --model: the zero-training baseline (packaged all-MiniLM-L6-v2, [CLS] token + mean-pooled "
                 "sentence embedding); train a student for DiPair tokens")


@dataclass(frozen=True)
class EncodePlan(Plan):
    """What :meth:`EncodeTextsJob.plan` decided, before anything is written."""
    student: Student
    layout: StoreLayout
    files: list[InputFile]
    columns: TextColumns


@dataclass(frozen=True)
class EncodeTextsJob(Job):
    """Everything one stage-one run needs; built once from the command line."""
    name = "encode_texts"   # a class attribute (runner.Job.name), not a field: no annotation, so a run as __main__ builds it too
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

    def reads(self) -> dict[str, tuple[str | None, ...]]:
        return {"--input": self.inputs, "--model": (self.model_dir,)}

    def plan(self, beam_args: list[str]) -> EncodePlan:
        """The inputs and their columns, the model (pinned: every worker loads the bytes this
        process fingerprints, or stops the run naming the file that changed), the store's layout."""
        from encoders.checkpoint import load_or_build_student
        from encoders.config import baseline_config
        from encoders.device import pick_device
        from encoders.remote import pin_model_dir
        from pipeline.provenance import table_metadata
        from pipeline.readers import check_columns, expand_inputs, worker_path
        from pipeline.store import store_layout
        from pipeline.text_checks import TextColumns

        job = replace(self, output=worker_path(self.output), model_dir=worker_path(self.model_dir))
        pick_device(job.device)
        files = expand_inputs(job.inputs, job.format)
        columns = TextColumns(text=job.text_col, id=job.id_col)
        check_columns(files, [c for c in (columns.text, columns.id) if c])
        job = replace(job, model_dir=pin_model_dir(job.model_dir))
        student = load_or_build_student(job.model_dir, baseline_config())
        provenance = table_metadata(self.name, {"model": (student.fingerprint, job.model_dir or student.config.encoder)})
        return EncodePlan(job, provenance, beam_args, student, store_layout(student, job.side, job.dtype), files,
                          columns)

    def execute(self, plan: EncodePlan, out: OutputDir) -> Counted:
        return (_execute_on_spark if self.engine == "spark" else _execute_on_beam)(plan, out)

    def summarise(self, plan: EncodePlan, counted: Counted) -> Report:
        from pipeline.accounting import Balance

        c = counted.counts
        balances = [Balance("rows read", c["rows_read"], (("kept", c["rows_kept"]), ("duplicates", c["rows_duplicate"]),
                                                          ("dead-lettered", c["rows_dead_lettered"]))),
                    # A bundle that did not fail must be complete: never report a run that lost rows as done.
                    Balance("store rows", c["store_rows"], (("kept", c["rows_kept"]),), shown=False)]
        return Report(c, counted.dead_letters, balances, {"model": plan.student.fingerprint}, rows_read=c["rows_read"],
                      notes=[BASELINE_NOTE] if self.model_dir is None else [])

    def finalise(self, plan: EncodePlan, out: OutputDir, counted: Counted) -> None:
        """The store's manifest, only now that the counts reconcile: a store with one is complete."""
        from pipeline.store import write_student_manifest

        write_student_manifest(out.staged(), plan.student, self.model_dir, plan.layout)


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
def main(ctx: click.Context, **flags) -> None:
    """Encode every unique text once and write an embedding store (stage one)."""
    run_command(ctx, EncodeTextsJob, flags, before=lambda: check_engine(flags, ctx.args))


def _counts(read: dict[str, int], dead_letters: dict[str, int], store_rows: int) -> dict[str, int]:
    """The summary's counts from either engine's (``read``: rows_read, rows_kept, ..., texts_truncated)."""
    return {"rows_read": read.get("rows_read", 0), "rows_kept": read.get("rows_kept", 0),
            "rows_duplicate": read.get("rows_duplicate", 0), "rows_dead_lettered": sum(dead_letters.values()),
            "texts_encoded": read.get("texts_encoded", 0), "texts_truncated": read.get("texts_truncated", 0),
            "store_rows": store_rows}


def _execute_on_beam(plan: EncodePlan, out: OutputDir) -> Counted:
    """Read, deduplicate, encode, write the store and the dead letters (pipeline/beam/encode.py)."""
    import apache_beam as beam
    from pipeline.beam.counters import read_counters, split_dead_letters
    from pipeline.beam.encode import DEAD_LETTER_TAG, DedupeTexts, EncodeSettings, EncodeTexts, ReadRows
    from pipeline.beam.runner import make_pipeline, run_to_end, thread_plan
    from pipeline.beam.writes import WriteDeadLetters, WriteStore
    from pipeline.readers import expect_inputs
    from pipeline.store import count_rows, store_files

    job = plan.job
    expect_inputs(plan.files, ("rows_read",))   # the progress line's totals
    pipeline = make_pipeline(plan.engine_args)
    read = pipeline | "ReadRows" >> ReadRows(plan.files)
    deduped = read.rows | "DedupeTexts" >> DedupeTexts(plan.columns)
    settings = EncodeSettings(model_dir=job.model_dir, side=job.side, batch_size=job.batch_size,
                              dtype=job.dtype, device=job.device,
                              threads=thread_plan(plan.engine_args, job.torch_threads))
    (deduped["unique"]
     | "EncodeTexts" >> EncodeTexts(settings, plan.layout)
     | "WriteStore" >> WriteStore(out.staged(), plan.layout, plan.provenance))
    ((read[DEAD_LETTER_TAG], deduped[DEAD_LETTER_TAG])
     | "AllDeadLetters" >> beam.Flatten()
     | "WriteDeadLetters" >> WriteDeadLetters(out.staged(), plan.provenance))
    counters, dead_letters = split_dead_letters(read_counters(run_to_end(pipeline)))
    return Counted(_counts(counters, dead_letters, count_rows(store_files(out.staged()))), dead_letters)


def _execute_on_spark(plan: EncodePlan, out: OutputDir) -> Counted:
    """``--engine spark``: the same run on Spark (pipeline/spark/stores.py), committed as Beam's is."""
    from jobs.engines import parse_spark_conf
    from pipeline.output.layout import DEAD_LETTER_DIR
    from pipeline.spark.session import spark_session, thread_plan
    from pipeline.spark.steps import SparkRun
    from pipeline.spark.stores import SparkSide, encode_stores, text_table_texts

    job = plan.job
    spark = spark_session(job.spark_master, parse_spark_conf(job.spark_conf))
    sides = {job.side: SparkSide(plan.layout, (), tuple(plan.files), out.staged())}
    steps = SparkRun()
    unique = text_table_texts(spark, steps, sides, plan.columns, out.staged(DEAD_LETTER_DIR), plan.provenance)
    encode_stores(spark, steps, unique, sides, job.model_dir, job.device, plan.provenance, job.batch_size,
                  thread_plan(spark, job.torch_threads))
    steps.keep_only_results([out.staged()])
    dead_letters = steps.dead_letters().get(f"{job.side}_texts.", {})
    # Spark names its counts by side: left_text_rows_read -> rows_read, left_texts_encoded -> texts_encoded.
    read = {name[len(job.side) + 1:].replace("text_rows", "rows"): n for name, n in steps.counts.items()
            if name.startswith(job.side + "_")}
    return Counted(_counts(read, dead_letters, steps.footer_rows("store", job.side)), dead_letters)


if __name__ == "__main__":  # python -m jobs.encode_texts
    main_module("encode_texts")
