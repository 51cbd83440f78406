"""Stage one: encode every unique text of a table once and write an embedding store.

    python -m jobs.encode_texts --input texts.jsonl --text-col text --side left --output store/
"""
from __future__ import annotations

if __name__ == "__main__":
    # `python -m jobs.encode_texts`: the command line (jobs/cli.py, light) parses the flags before the
    # imports below run, and imports this module by name only to run the job.
    from jobs.cli import main_module
    main_module("encode_texts")

import sys
import time
from dataclasses import dataclass, replace

import apache_beam as beam

from encoders.checkpoint import Student, load_or_build_student
from encoders.config import baseline_config
from jobs import cli
from jobs.common import run_started
from pipeline.beam.encode import DEAD_LETTER_TAG, DedupeTexts, EncodeSettings, EncodeTexts, ReadRows
from pipeline.text_checks import TextColumns
from encoders.device import pick_device
from pipeline.beam.writes import WriteDeadLetters, WriteStore
from pipeline.outputs import abort_output_on_failure, open_output
from pipeline.readers import check_columns, expand_inputs, worker_path
from pipeline.beam.runner import make_pipeline, validate_beam_args
from pipeline.store import StoreLayout, count_rows, store_files, write_manifest
from pipeline.beam.counters import read_counters, split_dead_letters
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


def store_layout(student: Student, side: str, dtype: str) -> StoreLayout:
    encoder = student.encoder.side(side)
    pooled_dim = encoder.transformer.config.hidden_size if student.config.pooled else None
    return StoreLayout(side=side, tokens_kept=encoder.num_tokens, dim=encoder.output_dim,
                       dtype=dtype, pooled_dim=pooled_dim)


@abort_output_on_failure
def run(job: EncodeTextsJob, beam_args: list[str], argv: list[str] | None = None) -> RunSummary:
    """Check everything that can be checked, run the pipeline, write manifest and summary."""
    validate_beam_args(beam_args)
    job = replace(job, output=worker_path(job.output), model_dir=worker_path(job.model_dir))
    pick_device(job.device)
    files = expand_inputs(job.inputs, job.format)
    columns = TextColumns(text=job.text_col, id=job.id_col)
    check_columns(files, [c for c in (columns.text, columns.id) if c])
    student = load_or_build_student(job.model_dir, baseline_config())
    layout = store_layout(student, job.side, job.dtype)
    out = open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                      reads={"--input": job.inputs, "--model": [job.model_dir]})

    started = run_started()
    pipeline = make_pipeline(beam_args)
    read = pipeline | "ReadRows" >> ReadRows(files)
    deduped = read.rows | "DedupeTexts" >> DedupeTexts(columns)
    settings = EncodeSettings(model_dir=job.model_dir, side=job.side, batch_size=job.batch_size,
                              dtype=job.dtype, device=job.device)
    (deduped["unique"]
     | "EncodeTexts" >> EncodeTexts(settings, layout)
     | "WriteStore" >> WriteStore(out.staged(), layout))
    ((read[DEAD_LETTER_TAG], deduped[DEAD_LETTER_TAG])
     | "AllDeadLetters" >> beam.Flatten()
     | "WriteDeadLetters" >> WriteDeadLetters(out.staged()))
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


# The command line is declared in jobs/cli.py (light, so that --help and bad arguments answer
# before the imports above); ``main`` is kept for callers of ``jobs.encode_texts.main``.
main = cli.encode_texts
