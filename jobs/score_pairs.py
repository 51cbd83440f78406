"""Stage two: score pairs with a student, encoding only the texts not yet in the stores.

    python -m jobs.score_pairs --pairs pairs.jsonl --output scores/
    python -m jobs.score_pairs --pairs pairs.parquet --left-id-col q --right-id-col p \\
        --left-texts queries.parquet --right-texts products.parquet --model student/ \\
        --store last-night/store --output tonight/

The job's steps (jobs/runner.py): check the flags, plan (pipeline/score_plan.py: the stores, the
join, the schema), execute on Beam (pipeline/beam/score.py) or Spark (pipeline/spark/score.py),
summarise; the runner reconciles and commits.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import click

from jobs.common import (BEAM_EPILOG, BEAM_JOB_CONTEXT, DTYPES, FORMATS, POSITIVE_INT, JobCommand, dead_letter_option,
                         device_option, head_speed_options, main_module, output_option, overwrite_option, run_options,
                         split_list, stall_option, torch_threads_option)
from jobs.engines import check_engine, engine_options
from jobs.runner import Counted, Job, Plan, Report, run, run_command
from jobs.text_tables import side_column_options, side_columns
from pipeline.choices import SCORES_COLUMNS

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    import pyarrow as pa
    from pipeline.models import ModelFacts
    from pipeline.beam.score import PairColumns
    from pipeline.output.commit import OutputDir
    from pipeline.readers import InputFile
    from pipeline.score_plan import SidePlan
    from pipeline.text_checks import TextColumns

__all__ = ["JOINS", "OUTPUT_COLUMNS", "ScorePairsJob", "main", "run"]   # run(ScorePairsJob(...), beam_args)

JOINS = ("auto", "broadcast", "shuffle")
OUTPUT_COLUMNS = SCORES_COLUMNS   # what --keep-cols may not be named like
SCORES_DIR = "scores"        # OUT/scores/: the scores table
STORE_DIR = "store"          # OUT/store/{left,right}/: tomorrow's --store
SIDES = ("left", "right")    # encoders.config.SIDES
BASELINE_NOTE = ("no --model: scores are the zero-training baseline, the cosine of the packaged all-MiniLM-L6-v2's "
                 "mean-pooled sentence embeddings (in [-1, 1], not a probability)")


@dataclass(frozen=True)
class ScorePlan(Plan):
    """What :meth:`ScorePairsJob.plan` decided, before anything is written."""
    student: ModelFacts              # config, fingerprint, layouts: the encoder loads in the workers, if a text needs it
    sides: dict[str, SidePlan]
    pair_files: list[InputFile]
    kept: list[pa.Field]            # --keep-cols, typed (pipeline.pairs.kept_fields)
    schema: pa.Schema               # of the scores table
    join: str
    why: str                        # how the join was chosen
    store_bytes: int                # both stores' size bound (pipeline.score_plan.store_bytes_bound)
    pair_rows: int                  # counted when a step needs them (text mode, --dedupe-pairs), else 0


@dataclass(frozen=True)
class ScorePairsJob(Job):
    """Everything one stage-two run needs; built once from the command line."""
    name = "score_pairs"   # a class attribute (runner.Job.name), not a field: no annotation, so a run as __main__ builds it too
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

    def check(self) -> None:
        """Flag combinations that cannot work, named before anything is read."""
        from pipeline.errors import FlagError
        from pipeline.preflight import check_keep_cols

        if (self.left_id_col is None) != (self.right_id_col is None):
            raise FlagError("--left-id-col and --right-id-col go together: give both (pairs of ids) or neither "
                            "(pairs of texts)")
        if self.left_id_col and self.store is None and not (self.left_texts and self.right_texts):
            raise FlagError("pairs of ids need --left-texts and --right-texts (id/text tables) or a --store holding "
                            "their texts")
        if not self.left_id_col and (self.left_texts or self.right_texts):
            raise FlagError("--left-texts/--right-texts are for pairs of ids: also give --left-id-col and "
                            "--right-id-col")
        if self.join not in JOINS:
            raise FlagError(f"--join {self.join!r} is not allowed: choose one of {', '.join(JOINS)}")
        check_keep_cols(self.keep_cols, OUTPUT_COLUMNS)      # also the pre-flight's: each once, no output column
        if self.engine == "spark":
            from pipeline.spark.steps import refuse_reserved_kept
            refuse_reserved_kept(self.keep_cols)

    def reads(self) -> dict[str, tuple[str | None, ...]]:
        return {"--pairs": self.pairs, "--left-texts": self.left_texts, "--right-texts": self.right_texts,
                "--store": (self.store,), "--model": (self.model_dir,)}

    def plan(self, beam_args: list[str]) -> ScorePlan:
        """Inputs and their columns, the model (pinned: every worker loads the bytes this process
        fingerprints, or stops the run naming the file that changed), each side's store, the join."""
        from encoders.device import pick_device
        from encoders.remote import pin_model_dir
        from pipeline.errors import FlagError
        from pipeline.models import model_facts
        from pipeline.pairs import kept_fields
        from pipeline.provenance import table_metadata
        from pipeline.readers import check_columns, count_input_rows, expand_inputs, worker_path
        from pipeline.score_plan import (SidePlan, choose_join, existing_store, score_meaning, scores_schema,
                                         store_bytes_bound)
        from pipeline.scoring_core import head_option_refused

        job = replace(self, output=worker_path(self.output), model_dir=worker_path(self.model_dir),
                      store=worker_path(self.store))
        refused = head_option_refused(pick_device(job.device), job.compile, job.head_quantize)
        if refused:
            raise FlagError(refused)
        columns = job.columns
        pair_files = expand_inputs(job.pairs, job.format)
        check_columns(pair_files, columns.required() + list(job.keep_cols))
        kept = kept_fields(pair_files, job.keep_cols)
        text_files = {side: () for side in SIDES}
        for side, patterns in (("left", job.left_texts), ("right", job.right_texts)):
            if columns.id_mode and patterns:       # without, this side's texts come from --store alone
                text_files[side] = tuple(expand_inputs(patterns))
                check_columns(text_files[side], [job.text_columns(side).id, job.text_columns(side).text])
        job = replace(job, model_dir=pin_model_dir(job.model_dir))
        student = model_facts(job.model_dir, job.store)     # ModelError for a checkpoint that cannot score
        sides = {}
        for side in SIDES:
            parts, rows, dtype = existing_store(job.store, student, side, job.dtype)
            sides[side] = SidePlan(side, student.layout(side, dtype), parts, rows, text_files[side],
                                   STORE_DIR + "/" + side)
        pair_rows = count_input_rows(pair_files) if (not columns.id_mode or job.dedupe_pairs) else 0
        bound = store_bytes_bound(sides, 0 if columns.id_mode else pair_rows)
        provenance = table_metadata(self.name, {"model": (student.fingerprint, job.model_dir or student.config.encoder)},
                                    score=score_meaning(job.model_dir, student))
        return ScorePlan(job, provenance, beam_args, student, sides, pair_files, kept, scores_schema(student, kept),
                         *choose_join(job.join, job.broadcast_limit_mb, bound), bound, pair_rows)

    def execute(self, plan: ScorePlan, out: OutputDir) -> Counted:
        return (_execute_on_spark if self.engine == "spark" else _execute_on_beam)(plan, out)

    def summarise(self, plan: ScorePlan, counted: Counted) -> Report:
        from pipeline.accounting import Balance, text_row_balance

        c = counted.counts
        balances = [Balance("pairs read", c["pairs_read"], (("scored", c["pairs_scored"]), ("duplicates",
                            c["pairs_duplicate"]), ("dead-lettered", c["pairs_dead_lettered"]))),
                    Balance("rows written", c["rows_written"], (("scored", c["pairs_scored"]),), shown=False)]
        if self.columns.id_mode:
            balances += [text_row_balance(side, c) for side in SIDES]
        # Every row read (pairs, and the text tables in id mode) against every row dead-lettered.
        return Report(c, dict(sorted(counted.dead_letters.items())), balances, {"model": plan.student.fingerprint},
                      rows_read=c["pairs_read"] + sum(c.get(f"{side}_text_rows_read", 0) for side in SIDES),
                      notes=counted.notes + ([BASELINE_NOTE] if self.model_dir is None else []))

    def finalise(self, plan: ScorePlan, out: OutputDir, counted: Counted) -> None:
        """The stores' manifests, only now that the counts reconcile: a store with one is complete."""
        from pipeline.store import write_student_manifest

        for store in plan.sides.values():
            write_student_manifest(out.staged(store.output), plan.student, self.model_dir, store.layout)


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
def main(ctx: click.Context, **flags) -> None:
    """Score pairs with a student (stage two), running stage one for texts not yet stored."""
    beam_only = {"--accelerator": flags["accelerator"], "--dedupe-pairs": flags["dedupe_pairs"]}
    run_command(ctx, ScorePairsJob, flags, before=lambda: check_engine(flags, ctx.args, beam_only))


def _execute_on_beam(plan: ScorePlan, out: OutputDir) -> Counted:
    """The run on Beam (pipeline/beam/score_run.py), its counters as the summary names them."""
    from pipeline.beam.counters import split_dead_letters
    from pipeline.beam.encode import EncodeSettings
    from pipeline.beam.runner import thread_plan
    from pipeline.beam.score import PAIRS, ScoreSettings
    from pipeline.beam.score_run import BeamScoreRun, run_score_pipeline
    from pipeline.score_plan import score_counts, shuffle_buckets
    from pipeline.store import count_rows, store_files

    job, columns = plan.job, plan.job.columns
    threads = thread_plan(plan.engine_args, job.torch_threads)   # applied on each worker (encoders/threads.py)
    encode = {side: EncodeSettings(model_dir=job.model_dir, side=side, batch_size=job.encode_batch_size,
                                   dtype=store.layout.dtype, device=job.device, threads=threads)
              for side, store in plan.sides.items()}
    score = ScoreSettings(model_dir=job.model_dir, left_layout=plan.sides["left"].layout,
                          right_layout=plan.sides["right"].layout, output_schema=plan.schema, keep=job.keep_cols,
                          batch_size=job.batch_size, device=job.device, columns=columns,
                          pair_paths=tuple(f.path for f in plan.pair_files), threads=threads, compile=job.compile,
                          quantize=job.head_quantize, buckets=shuffle_buckets(plan.store_bytes, plan.pair_rows))
    counters = run_score_pipeline(plan.engine_args, BeamScoreRun(
        plan.pair_files, plan.kept, plan.sides, {side: job.text_columns(side) for side in SIDES}, encode, score,
        plan.join, job.dedupe_pairs, job.accelerator, SCORES_DIR, out.staged, plan.provenance))

    def rows(named: dict[str, int]) -> dict[str, int]:      # rows_read -> read, ...
        return {name[5:]: n for name, n in named.items() if name.startswith("rows_")}
    pair_counts, pair_dead = split_dead_letters(counters, PAIRS)
    sides = {}
    for side in SIDES:
        side_rows, side_dead = split_dead_letters(counters, f"{side}_texts.")
        sides[side] = (rows(side_rows), side_dead, split_dead_letters(counters, f"{side}.")[0])
    counts, dead = score_counts(columns.id_mode, rows(pair_counts), pair_dead,
                                count_rows(store_files(out.staged(SCORES_DIR))), sides)
    return Counted(counts, dead, [f"join: {plan.join} ({plan.why})"])


def _execute_on_spark(plan: ScorePlan, out: OutputDir) -> Counted:
    """``--engine spark``: the same run on Spark (pipeline/spark/score.py), committed as Beam's is."""
    from jobs.engines import parse_spark_conf
    from pipeline.output.layout import DEAD_LETTER_DIR
    from pipeline.score_plan import score_counts, shuffle_buckets
    from pipeline.spark.score import SparkScoreSettings, SparkSide, execute_score
    from pipeline.spark.session import spark_session, task_slots, thread_plan
    from pipeline.store import verify_part_pins

    job = plan.job
    spark = spark_session(job.spark_master, parse_spark_conf(job.spark_conf))
    settings = SparkScoreSettings(
        pair_files=tuple(plan.pair_files), columns=job.columns, kept=tuple(plan.kept), schema=plan.schema,
        provenance=plan.provenance,
        sides={side: SparkSide(store.layout, tuple(part.path for part in store.existing_parts), store.text_files,
                               out.staged(store.output))
               for side, store in plan.sides.items()},
        texts={side: job.text_columns(side) for side in SIDES}, scores_dir=out.staged(SCORES_DIR),
        dead_letter_dir=out.staged(DEAD_LETTER_DIR), model_dir=job.model_dir, device=job.device,
        batch_size=job.batch_size, encode_batch_size=job.encode_batch_size,
        threads=thread_plan(spark, job.torch_threads), join=plan.join,
        buckets=shuffle_buckets(plan.store_bytes, plan.pair_rows, minimum=2 * task_slots(spark)))
    result = execute_score(spark, settings)
    # Spark's tasks read the --store parts by path: the run commits only if every part is still the
    # one pinned at its start (one rewritten meanwhile: InputChanged naming it, exit 3).
    verify_part_pins(part for store in plan.sides.values() for part in store.existing_parts)
    dead_letters, c = result.dead_letters(), result.counts
    # Spark encodes every row of the text tables: none is unused.
    sides = {side: ({name: c.get(f"{side}_text_rows_{name}", 0) for name in ("read", "kept", "duplicate")},
                    dead_letters.get(f"{side}_texts.", {}),
                    {name[len(side) + 1:]: n for name, n in c.items() if name.startswith(side + "_")})
             for side in SIDES}
    counts, dead = score_counts(job.columns.id_mode, {"read": c["pairs_read"], "scored": c["rows_written"]},
                                dead_letters.get("pairs.", {}), c["rows_written"], sides)
    return Counted(counts, dead, [f"join: {plan.join} ({plan.why}); engine: spark ({spark.sparkContext.master})"])


if __name__ == "__main__":  # python -m jobs.score_pairs
    main_module("score_pairs")
