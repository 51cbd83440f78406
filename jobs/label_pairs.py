"""Label pairs with a teacher cross-encoder: the distillation set the student learns from.

    python -m jobs.label_pairs --pairs 'pairs/*.parquet' --teacher teacher/ --output distill/ \
        [--temperature 1.0] [--previous distill-yesterday/]

Writes ``DIR/part-*.parquet`` (see pipeline/beam/label.py for the columns), ``DIR/_dead_letter/``,
``DIR/_MANIFEST.json`` (teacher fingerprint, temperature, columns), ``DIR/_SUMMARY.json`` and
``DIR/_SUCCESS``, committed at the end (pipeline/output/). The job's steps: jobs/runner.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import click

from jobs.common import (BEAM_EPILOG, BEAM_JOB_CONTEXT, FORMATS, POSITIVE_INT, JobCommand, Number, dead_letter_option,
                         device_option, main_module, output_option, overwrite_option, run_options, split_list,
                         stall_option, torch_threads_option)
from jobs.engines import check_engine, engine_options
from jobs.runner import Counted, Job, Plan, Report, run, run_command

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    import pyarrow as pa
    from encoders.teacher import Teacher
    from pipeline.output.commit import OutputDir
    from pipeline.labeling import LabelSettings
    from pipeline.pairs import PairColumns
    from pipeline.readers import InputFile

__all__ = ["LabelPairsJob", "main", "run"]   # run(LabelPairsJob(...), beam_args)


@dataclass(frozen=True)
class LabelPlan(Plan):
    """What :meth:`LabelPairsJob.plan` decided, before anything is written."""
    teacher: Teacher
    columns: PairColumns
    files: list[InputFile]
    kept: list[pa.Field]             # --keep-cols, typed (pipeline.pairs.kept_fields)
    schema: pa.Schema                # of the distillation set
    previous_files: list[str]        # --previous's part files
    settings: LabelSettings          # how the teacher runs (each engine sets its workers' threads)


@dataclass(frozen=True)
class LabelPairsJob(Job):
    """Everything one labeling run needs; built once from the command line."""
    name = "label_pairs"   # a class attribute (runner.Job.name), not a field: no annotation, so a run as __main__ builds it too
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

    def check(self) -> None:
        from pipeline.datasets import BASE_COLUMNS
        from pipeline.errors import FlagError
        from pipeline.preflight import check_keep_cols

        if not self.temperature > 0:
            raise FlagError(f"--temperature {self.temperature!r} is not allowed: give a number > 0 (1 = the "
                            "teacher's own probabilities; > 1 softer labels)")
        if self.batch_size < 1:
            raise FlagError(f"--batch-size {self.batch_size!r} is not allowed: give a positive integer")
        if self.max_length is not None and self.max_length < 4:
            raise FlagError(f"--max-length {self.max_length!r} is not allowed: give an integer of at least 4")
        check_keep_cols(self.keep_cols, BASE_COLUMNS)        # also the pre-flight's: each once, no output column
        if self.previous is not None and _same_path(self.previous, self.output):
            raise FlagError(f"--previous {self.previous!r} is also --output: write the new set to a new directory "
                            "(the previous one is read while the new one is written)")

    def reads(self) -> dict[str, tuple[str | None, ...]]:
        return {"--pairs": self.pairs, "--teacher": (self.teacher,), "--previous": (self.previous,)}

    def plan(self, beam_args: list[str]) -> LabelPlan:
        """The pairs and their columns, the teacher (pinned when remote: every worker loads the
        bytes this process fingerprints), the output schema, --previous checked against both."""
        from encoders.device import pick_device
        from encoders.remote import pin_model_dir
        from encoders.teacher import load_teacher
        from pipeline.datasets import distillation_schema, previous_set_files
        from pipeline.errors import FlagError
        from pipeline.labeling import LabelSettings
        from pipeline.pairs import PairColumns, kept_fields
        from pipeline.provenance import table_metadata
        from pipeline.readers import check_columns, expand_inputs, worker_path

        # A teacher that is not a local path may be a cached hub id: it stays as given.
        job = replace(self, output=worker_path(self.output), previous=worker_path(self.previous),
                      teacher=worker_path(self.teacher) if os.path.exists(self.teacher) else self.teacher)
        pick_device(job.device)
        columns = PairColumns(left=job.left_col, right=job.right_col, left_id=job.left_id_col,
                              right_id=job.right_id_col, keep=tuple(job.keep_cols))
        files = expand_inputs(job.pairs, job.format)
        check_columns(files, columns.needed())
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
        previous_files = previous_set_files(job.previous, teacher.fingerprint, schema) if job.previous else []
        provenance = table_metadata(self.name, {"teacher": (teacher.fingerprint, job.teacher)})
        settings = LabelSettings(teacher=job.teacher, fingerprint=teacher.fingerprint, schema=schema,
                                 keep=columns.keep, temperature=job.temperature, batch_size=job.batch_size,
                                 device=job.device, max_length=job.max_length)
        return LabelPlan(job, provenance, beam_args, teacher, columns, files, kept, schema, previous_files, settings)

    def execute(self, plan: LabelPlan, out: OutputDir) -> Counted:
        from pipeline.readers import expect_inputs
        from pipeline.store import count_rows, store_files

        # The progress line's totals (with --previous, some pairs are skipped, not labeled).
        expect_inputs(plan.files, ("rows_read",) if self.previous else ("rows_read", "pairs_labeled"))
        counted = (_execute_on_spark if self.engine == "spark" else _execute_on_beam)(plan, out)
        counted.counts["output_rows"] = count_rows(store_files(out.staged()))
        return counted

    def summarise(self, plan: LabelPlan, counted: Counted) -> Report:
        from pipeline.accounting import Balance

        c = counted.counts
        balances = [Balance("pairs read", c["pairs_read"], (("labeled", c["pairs_labeled"]), ("already labeled",
                            c["pairs_skipped_labeled"]), ("dead-lettered", c["pairs_dead_lettered"]))),
                    Balance("output rows", c["output_rows"], (("labeled", c["pairs_labeled"]),
                                                              ("copied", c["previous_rows_copied"])))]
        return Report(c, counted.dead_letters, balances, {"teacher": plan.teacher.fingerprint},
                      rows_read=c["pairs_read"], notes=self._notes(c),
                      metrics={"temperature": self.temperature, "task": plan.teacher.task.to_dict()})

    def finalise(self, plan: LabelPlan, out: OutputDir, counted: Counted) -> None:
        """The distillation set's manifest (pipeline/datasets.py), which train_student reads."""
        from apache_beam.io.filesystems import FileSystems
        from pipeline.datasets import DistillationManifest, schema_columns
        from pipeline.store import store_files

        task = plan.teacher.task
        DistillationManifest(
            teacher_fingerprint=plan.teacher.fingerprint, teacher=self.teacher, task=task.to_dict(),
            num_outputs=task.num_outputs, temperature=self.temperature, columns=schema_columns(plan.schema),
            kept_columns=list(plan.columns.keep), rows=counted.counts["output_rows"],
            files=[FileSystems.split(p)[1] for p in store_files(out.staged())], previous=self.previous,
            notes=self._notes(counted.counts)).write(out.staged())

    def _notes(self, counts: dict[str, int]) -> list[str]:
        if not self.previous:
            return []
        return [f"--previous {self.previous}: {counts['pairs_skipped_labeled']:,} pairs already labeled there were "
                f"skipped; all {counts['previous_rows_copied']:,} of its rows were copied through (soft labels "
                f"recomputed at T={self.temperature:g}), so {self.output} is the complete set"]


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
def main(ctx: click.Context, **flags) -> None:
    """Label pairs with a teacher cross-encoder and write the distillation set."""
    run_command(ctx, LabelPairsJob, flags, before=lambda: check_engine(flags, ctx.args))


def _counts(counted: dict[str, int], dead_letters: dict[str, int]) -> dict[str, int]:
    """The summary's counts (but ``output_rows``) from either engine's."""
    return {"pairs_read": counted.get("pairs_read", 0), "pairs_labeled": counted.get("pairs_labeled", 0),
            "pairs_skipped_labeled": counted.get("pairs_skipped_labeled", 0),
            "pairs_dead_lettered": sum(dead_letters.values()), "pairs_truncated": counted.get("pairs_truncated", 0),
            "previous_rows_copied": counted.get("previous_rows_copied", 0)}


def _execute_on_beam(plan: LabelPlan, out: OutputDir) -> Counted:
    """Read the pairs, skip those --previous holds, label the rest, write them with --previous's
    rows and the dead letters (pipeline/beam/label.py)."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from pipeline.beam.counters import read_counters, split_dead_letters
    from pipeline.beam.encode import DEAD_LETTER_TAG, ReadRows
    from pipeline.beam.label import ExtractPairs, LabelPairs, ReadPrevious, SkipLabeled, WriteDistillationSet
    from pipeline.beam.runner import make_pipeline, run_to_end, thread_plan
    from pipeline.beam.writes import WriteDeadLetters
    from pipeline.paths import escape_glob
    from pipeline.provenance import stamped

    job = plan.job
    settings = replace(plan.settings, threads=thread_plan(plan.engine_args, job.torch_threads))
    pipeline = make_pipeline(plan.engine_args)
    read = pipeline | "ReadRows" >> ReadRows(plan.files)
    extracted = read.rows | "ExtractPairs" >> ExtractPairs(plan.columns, plan.kept)
    pairs = extracted.pairs
    tables = []
    if plan.previous_files:
        previous = pipeline | "ReadPrevious" >> ReadPrevious(
            FileSystems.join(escape_glob(job.previous), "part*.parquet"), plan.schema, job.temperature)
        pairs = pairs | "SkipLabeled" >> SkipLabeled(previous["keys"])
        tables.append(previous["rows"])
    tables.insert(0, pairs | "LabelPairs" >> LabelPairs(settings))
    (tables | "AllRows" >> beam.Flatten()
     | "WriteDistillationSet" >> WriteDistillationSet(out.staged(), stamped(plan.schema, plan.provenance)))
    ((read[DEAD_LETTER_TAG], extracted[DEAD_LETTER_TAG])
     | "AllDeadLetters" >> beam.Flatten()
     | "WriteDeadLetters" >> WriteDeadLetters(out.staged(), plan.provenance))
    counters, dead_letters = split_dead_letters(read_counters(run_to_end(pipeline)))
    counters["pairs_read"] = counters.get("rows_read", 0)
    return Counted(_counts(counters, dead_letters), dead_letters)


def _execute_on_spark(plan: LabelPlan, out: OutputDir) -> Counted:
    """``--engine spark``: the same labeling on Spark (pipeline/spark/label.py), staged as Beam's is."""
    from jobs.engines import parse_spark_conf
    from pipeline.output.layout import DEAD_LETTER_DIR
    from pipeline.spark.label import SparkLabelSettings, execute_label
    from pipeline.spark.session import spark_session, thread_plan

    job = plan.job
    spark = spark_session(job.spark_master, parse_spark_conf(job.spark_conf))
    result = execute_label(spark, SparkLabelSettings(
        pair_files=tuple(plan.files), columns=plan.columns, kept=tuple(plan.kept),
        label=replace(plan.settings, threads=thread_plan(spark, job.torch_threads)), provenance=plan.provenance,
        directory=out.staged(), dead_letter_dir=out.staged(DEAD_LETTER_DIR), previous_files=tuple(plan.previous_files)))
    dead_letters = result.dead_letters().get("", {})
    return Counted(_counts(result.counts, dead_letters), dead_letters)


def _same_path(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b)



if __name__ == "__main__":  # python -m jobs.label_pairs
    main_module("label_pairs")
