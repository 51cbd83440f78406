"""Stage two for Spark users (notebooks, existing Spark jobs): a DataFrame of pairs -> a lazy
DataFrame of scores, and a writer that commits a pairscore output directory.

    from pipeline.spark.api import score_pairs_frame, write_scores

    scored = score_pairs_frame(pairs_df, store="runs/last-night/store", model_dir="student/",
                               left_id_col="q", right_id_col="p", keep=("rank",))
    scored.frame.filter("reason is null").groupBy("left_id").max("score").show()   # lazy, plain Spark
    summary = write_scores(scored, "runs/tonight")                                 # one evaluation

The stores must exist (an earlier run's ``store/`` or ``encode_texts`` outputs): this API scores,
it does not encode. Pairs of ids name the stores' ids; pairs of texts (``left_col``/``right_col``)
are looked up by their content hash, as ``score_pairs`` does. Each worker loads both stores from
their files (never collected to the driver nor broadcast) once per Python worker, keyed by the files'
sizes and modification times.

Dead letters travel in the same rows: the scored frame has the output columns (``left_id``,
``right_id``, ``score``, ``probs`` for k classes, the kept columns) and ``reason``, ``detail``,
``source``, ``row``, which are null on a scored row; a dead letter's score columns are null and its
``source`` is ``dataframe[partition P]:ROW``. :func:`write_scores` writes ``scores/`` and
``_dead_letter/`` from one evaluation of the plan, through the same staging and commit as the jobs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import files
from pipeline.dead_letters import DEAD_LETTER_SCHEMA, DeadLetter
from pipeline.models import HeadHandler
from pipeline.provenance import stamped
from pipeline.scoring_core import PairColumns, prepare_pairs, score_pairs
from pipeline.spark import tasks
from pipeline.spark.batches import DEFAULT_BATCH_BYTES, arrow_batch_bytes, byte_slices, scored_rows
from pipeline.spark.steps import SparkRun, collect, narrow, refuse_reserved_kept
from pipeline.store import StoreLayout
from pipeline.writers import COMPRESSION
from pipeline.errors import UsageError

JOB_NAME = "score_pairs"
LETTER_COLUMNS = tuple(DEAD_LETTER_SCHEMA.names)   # reason, detail, source, row


@dataclass(frozen=True)
class ScoredFrame:
    """A lazy DataFrame of scores and dead letters (``frame``), and what the writer needs."""
    frame: object              # pyspark.sql.DataFrame
    schema: pa.Schema          # the scores table's schema (without the dead-letter columns)
    provenance: dict
    model_fingerprint: str
    store: str
    model_dir: str | None


@dataclass(frozen=True)
class _ScoreBatches:
    """Task body: pair batches -> scores and dead letters in one schema (``out_schema``)."""
    columns: PairColumns
    kept: tuple[pa.Field, ...]
    schema: pa.Schema
    out_schema: pa.Schema
    layouts: dict[str, StoreLayout]
    store_files: dict[str, tuple[str, ...]]
    model_dir: str | None
    device: str
    batch_size: int
    batch_bytes: int = DEFAULT_BATCH_BYTES

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        handler = HeadHandler(self.model_dir, self.device, self.batch_size)
        scorer = tasks.loaded(("head", handler.tag), handler.load_model)
        left, right = (tasks.store_lookup(self.store_files[s], self.layouts[s]) for s in ("left", "right"))
        ctx = TaskContext.get()
        path = f"dataframe[partition {ctx.partitionId() if ctx else 0}]"
        first = 0
        rows_per_batch = scored_rows(self.layouts, self.batch_size, self.batch_bytes)
        for table in self._tables(batches, rows_per_batch):
            positions = np.arange(first, first + table.num_rows, dtype=np.int64)
            first += table.num_rows
            prepared = prepare_pairs(table, self.columns, self.kept, 0, positions, path)
            letters = list(prepared.dead_letters)
            if prepared.pairs.num_rows:
                scores, missing = score_pairs(prepared.pairs, left, right, scorer, self.schema, self.columns, [path])
                letters += missing
                if scores.num_rows:
                    nulls = [pa.nulls(scores.num_rows, pa.string()) for _ in LETTER_COLUMNS]
                    yield from pa.Table.from_arrays(list(scores.columns) + nulls, schema=self.out_schema).to_batches()
            if letters:
                records = [letter.to_record() for letter in letters]
                arrays = [pa.nulls(len(records), f.type) for f in self.schema]
                arrays += [pa.array([r[name] for r in records], pa.string()) for name in LETTER_COLUMNS]
                yield pa.RecordBatch.from_arrays(arrays, schema=self.out_schema)


    def _tables(self, batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
        """Spark's batches, cut to at most ``rows`` pairs and ``batch_bytes`` bytes each."""
        for batch in batches:
            table = pa.Table.from_batches([batch])
            yield from byte_slices(table.cast(pa.schema([f.with_type(narrow(f.type)) for f in table.schema])),
                                   rows, self.batch_bytes)


def score_pairs_frame(pairs, store: str, model_dir: str | None = None, *, left_col: str = "left",
                      right_col: str = "right", left_id_col: str | None = None, right_id_col: str | None = None,
                      keep: Sequence[str] = (), device: str = "cpu", batch_size: int = 8192) -> ScoredFrame:
    """A DataFrame of pairs -> :class:`ScoredFrame` (lazy: nothing runs until it is evaluated).

    ``store``: a directory with ``left/`` and ``right/`` stores written by ``model_dir``'s student
    (None: the zero-training baseline), checked here against the model as ``--store`` is.
    """
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_type

    from encoders.checkpoint import load_or_build_student
    from encoders.config import SIDES, baseline_config
    from pipeline.provenance import CLASS_PROBABILITY_SCORE, COSINE_SCORE, PROBABILITY_SCORE, table_metadata
    from pipeline.store import StoreWanted, open_store_side

    refuse_reserved_kept(keep)
    columns = PairColumns.for_scoring(left_col, right_col, left_id_col, right_id_col, tuple(keep))
    missing = [c for c in columns.required() + list(keep) if c not in pairs.columns]
    if missing:
        raise UsageError(f"the pairs DataFrame has no column {', '.join(map(repr, missing))}: it has "
                         f"{', '.join(pairs.columns)}")
    kept = tuple(pa.field(name, narrow(to_arrow_type(pairs.schema[name].dataType))) for name in keep)
    student = load_or_build_student(model_dir, baseline_config())
    layouts, parts = {}, {}
    for side in SIDES:
        encoder = student.encoder.side(side)
        opened = open_store_side(store, side, StoreWanted(
            student.fingerprint, student.config.encoder, encoder.num_tokens, encoder.output_dim,
            encoder.transformer.config.hidden_size if student.config.pooled else None,
            student.config.token_selection, student.config.max_length(side)))
        layouts[side], parts[side] = opened.manifest.layout, tuple(opened.files)
    fields = [pa.field("left_id", pa.string()), pa.field("right_id", pa.string()), pa.field("score", pa.float32())]
    if student.config.num_outputs > 1:
        fields.append(pa.field("probs", pa.list_(pa.float32())))
    schema = pa.schema(fields + list(kept))
    out_schema = pa.schema(list(schema) + [pa.field(name, pa.string()) for name in LETTER_COLUMNS])
    meaning = (COSINE_SCORE if model_dir is None else
               CLASS_PROBABILITY_SCORE if student.config.num_outputs > 1 else PROBABILITY_SCORE)
    provenance = table_metadata(JOB_NAME, {"model": (student.fingerprint, model_dir or student.config.encoder)},
                                score=meaning)
    frame = pairs.select(*columns.needed()).mapInArrow(
        _ScoreBatches(columns, kept, schema, out_schema, layouts, parts, model_dir, device, batch_size,
                      arrow_batch_bytes(pairs.sparkSession)),
        from_arrow_schema(out_schema))
    return ScoredFrame(frame, schema, provenance, student.fingerprint, store, model_dir)


@dataclass(frozen=True)
class _WriteScored:
    """Task body: scored rows -> a scores part file and a dead-letter part file per task."""
    schema: pa.Schema
    scores_dir: str
    dead_letter_dir: str
    provenance: dict

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.compute as pc

        path = files.join(self.scores_dir, tasks.attempt_name("scores"))
        letters: list[DeadLetter] = []
        rows = scored = 0
        with files.create(path) as handle, pq.ParquetWriter(handle, stamped(self.schema, self.provenance),
                                                              compression=COMPRESSION) as out:
            for batch in batches:
                table = pa.Table.from_batches([batch])
                rows += table.num_rows
                good = pc.is_null(table.column("reason"))
                scores = table.filter(good).select(self.schema.names)
                out.write_table(scores.cast(self.schema))
                scored += scores.num_rows
                for record in table.filter(pc.invert(good)).select(list(LETTER_COLUMNS)).to_pylist():
                    letters.append(DeadLetter(record["reason"], record["detail"], record["source"],
                                              json.loads(record["row"])))
        results = [("scores", "", path, scored, {"rows_read": rows})]
        if letters:
            results.append(tasks.write_dead_letters(self.dead_letter_dir, "pairs", "pairs.", letters, self.provenance))
        yield tasks.result_batch(results)


def write_scores(scored: ScoredFrame, output: str, *, overwrite: bool = False, max_dead_letter_fraction: float = 0.1):
    """Evaluate ``scored`` once and commit ``output`` as ``score_pairs`` does: ``scores/``,
    ``_dead_letter/``, ``_SUMMARY.json`` with reconciled counts, ``_SUCCESS``. Returns the RunSummary.
    More dead letters than ``max_dead_letter_fraction`` of the pairs (or every pair dead): nothing
    is committed (``pipeline.errors.DeadLetterLimit``), as with ``--max-dead-letter-fraction``."""
    from pipeline.dead_letters import check_dead_letter_limit
    from pipeline.output.commit import open_output
    from pipeline.output.guard import abort_output_on_failure
    from pipeline.output.layout import DEAD_LETTER_DIR
    from pipeline.summary import RunSummary

    @abort_output_on_failure
    def write():
        started = time.monotonic()
        out = open_output(output, job=JOB_NAME, overwrite=overwrite,
                          reads={"--store": [scored.store], "--model": [scored.model_dir]})
        run = SparkRun()
        scores_dir, dead_dir = out.staged("scores"), out.staged(DEAD_LETTER_DIR)
        written = run.add(collect(scored.frame.mapInArrow(
            _WriteScored(scored.schema, scores_dir, dead_dir, scored.provenance), tasks.RESULT_DDL)))
        run.keep_only_results([scores_dir, dead_dir])
        dead = run.dead_letters().get("pairs.", {})
        counts = {"pairs_read": sum(r["info"]["rows_read"] for r in written if r["kind"] == "scores"),
                  "pairs_scored": run.footer_rows("scores"), "pairs_dead_lettered": sum(dead.values())}
        counts["rows_written"] = counts["pairs_scored"]
        if counts["pairs_scored"] + counts["pairs_dead_lettered"] != counts["pairs_read"]:
            raise RuntimeError(f"pair accounting failed: {counts}")
        summary = RunSummary(
            job=JOB_NAME, arguments=[], output=output, model_fingerprints={"model": scored.model_fingerprint},
            wall_seconds=round(time.monotonic() - started, 3), counts=counts, dead_letters=dead,
            reconciliation=(f"pairs read {counts['pairs_read']:,} = scored {counts['pairs_scored']:,} + "
                            f"dead-lettered {counts['pairs_dead_lettered']:,}"),
            notes=["written by pipeline.spark.api.write_scores from a DataFrame of pairs"])
        check_dead_letter_limit(counts["pairs_read"], counts["pairs_dead_lettered"], dead, max_dead_letter_fraction,
                                summary.reconciliation)
        out.commit(summary)
        return summary
    return write()
