"""Stage two on Beam as one call, the counterpart of Spark's ``execute_score``
(pipeline/spark/score.py): read the pairs, complete each side's store (rows of ``--store``
reused, texts not in it encoded), join and score, and write scores, stores and dead letters into
the staged output. jobs/score_pairs.py plans the run (pipeline/score_plan.py) and commits it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import apache_beam as beam
from apache_beam.io.parquetio import WriteToParquetBatched

# The runner and the counters are used through their modules, at call time: a test (or a tool)
# that replaces runner.make_pipeline or counters.read_counters reaches this run as it reaches the others.
from pipeline.beam import counters, runner
from pipeline.beam.encode import DEAD_LETTER_TAG, DedupeTexts, EncodeSettings, ReadRows
from pipeline.beam.score import (CompleteStore, DistinctPairTexts, ReadPairs, ScorePairs, ScoreSettings,
                                 dedupe_pair_chunks, read_store_tables)
from pipeline.beam.used_texts import UsedTextRows
from pipeline.beam.writes import WriteDeadLetters, WriteStore
from pipeline.provenance import stamped
from pipeline.readers import expect_inputs
from pipeline.store import COMPRESSION, STORE_FILE_PREFIX, STORE_FILE_SUFFIX

if TYPE_CHECKING:  # annotations only
    import pyarrow as pa
    from pipeline.readers import InputFile
    from pipeline.score_plan import SidePlan
    from pipeline.text_checks import TextColumns


@dataclass(frozen=True)
class BeamScoreRun:
    """Stage two's Beam pipeline, decided: ``score`` carries the pair columns, the scores table's
    schema, the batch size and the join's buckets; ``encode`` each side's encoder settings for
    texts not yet stored; ``staged(relative, prefix="")``: a path in the staged output
    (pipeline.output.commit.OutputDir.staged)."""
    pair_files: Sequence[InputFile]
    kept: Sequence[pa.Field]
    sides: Mapping[str, SidePlan]
    text_columns: Mapping[str, TextColumns]    # id mode: the columns of each side's text tables
    encode: Mapping[str, EncodeSettings]
    score: ScoreSettings
    join: str                                  # broadcast | shuffle
    dedupe_pairs: bool
    accelerator: str | None                    # resource hint of the scoring step
    scores_dir: str                            # relative to the output
    staged: Callable[..., str]
    provenance: dict[bytes, bytes]


def run_score_pipeline(beam_args: Sequence[str], run: BeamScoreRun) -> dict[str, int]:
    """Build and run the pipeline; its counters (pipeline/beam/counters.py) once it has ended."""
    columns, batch_size = run.score.columns, run.score.batch_size
    # The progress line's totals (with --dedupe-pairs fewer pairs are scored than read).
    expect_inputs(run.pair_files, ("pairs.rows_read",) + (() if run.dedupe_pairs else ("pairs.rows_scored",)))
    for side in run.sides.values():
        expect_inputs(side.text_files, (f"{side.side}_texts.rows_read",))
    pipeline = runner.make_pipeline(beam_args)
    read = pipeline | "ReadPairs" >> ReadPairs(run.pair_files, columns, chunk_size=batch_size, kept=run.kept,
                                               spread_batches=not runner.is_local_runner(beam_args))
    pairs = dedupe_pair_chunks(read.pairs, batch_size, run.score.buckets) if run.dedupe_pairs else read.pairs
    dead_letters = [read.dead_letters]
    tables = {}
    for side, store in run.sides.items():
        label = side.capitalize()
        if columns.id_mode and not store.text_files:
            unique = pipeline | f"No{label}Texts" >> beam.Create([])   # --store alone gives this side's texts
        elif columns.id_mode:
            text_rows = pipeline | f"Read{label}Texts" >> ReadRows(store.text_files, counter_prefix=f"{side}_texts.")
            # Only the rows whose id a pair names go on (pipeline/beam/used_texts.py).
            used_rows = text_rows.rows | f"Used{label}Texts" >> UsedTextRows(
                side, run.text_columns[side].id, pairs, counter_prefix=f"{side}_texts.")
            deduped = used_rows | f"Dedupe{label}Texts" >> DedupeTexts(
                run.text_columns[side], counter_prefix=f"{side}_texts.")
            unique = deduped["unique"]
            dead_letters += [text_rows[DEAD_LETTER_TAG], deduped[DEAD_LETTER_TAG]]
        else:
            unique = read.texts(side) | f"Distinct{label}Texts" >> DistinctPairTexts()
        old = (read_store_tables(pipeline, store.existing_parts, f"{label}Store") if store.existing_parts
               else pipeline | f"No{label}Store" >> beam.Create([]))
        tables[side] = unique | f"Complete{label}Store" >> CompleteStore(run.encode[side], store.layout, old, f"{side}.")
        tables[side] | f"Write{label}Store" >> WriteStore(run.staged(store.output), store.layout, run.provenance)

    scored = pairs | "ScorePairs" >> ScorePairs(run.score, run.join, tables["left"], tables["right"], run.accelerator)
    scored.scores | "WriteScores" >> WriteToParquetBatched(
        run.staged(run.scores_dir, STORE_FILE_PREFIX), schema=stamped(run.score.output_schema, run.provenance),
        codec=COMPRESSION, file_name_suffix=STORE_FILE_SUFFIX)
    dead_letters.append(scored.dead_letters)
    (tuple(dead_letters) | "AllDeadLetters" >> beam.Flatten()
     | "WriteDeadLetters" >> WriteDeadLetters(run.staged(), run.provenance))
    return counters.read_counters(runner.run_to_end(pipeline))
