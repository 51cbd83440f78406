"""Pre-flight: the mistakes a person makes most, answered in well under a second and a half.

A job imports Beam, torch and transformers before it can run (seconds to tens of seconds on a busy
machine). :func:`check` runs first, after the flags have parsed and before those imports, and
says which of each job's flags name inputs (with the columns they must have), its output and its
model checkpoints (student, teacher, evaluated models). The checks themselves are library code: pass-through Beam options in
``pipeline/beam/option_names.py``; local inputs, columns, output and checkpoint in
``pipeline/preflight.py``. Never imports Beam, torch or transformers (tests/jobs/test_preflight.py
checks it).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from jobs.text_tables import side_columns
from pipeline.beam.option_names import check_beam_flags
from pipeline.choices import DISTILLATION_COLUMNS, SCORES_COLUMNS
from pipeline.preflight import (PreflightError, check_columns, check_keep_cols, check_model_dir, check_output,
                                check_store_dir,
                                check_student_dir, check_teacher_dir, local_files)

__all__ = ["PreflightError", "check"]

BASELINE = "baseline"   # encoders.evaluation.BASELINE: evaluate's --model for the zero-training cosine
# The columns a job writes itself, which a --keep-cols column may not be named like.
OUTPUT_COLUMNS = {"score_pairs": SCORES_COLUMNS, "label_pairs": DISTILLATION_COLUMNS}


def _pair_inputs(flags: Mapping[str, Any], *extra: str | None) -> list[str | None]:
    return [flags.get("left_col"), flags.get("right_col"), *extra]


def _id_columns(flags: Mapping[str, Any]) -> list[str | None] | None:
    """[left id column, right id column], [] without ids, None when only one is given (the job
    explains that before it looks at any file)."""
    left, right = flags.get("left_id_col"), flags.get("right_id_col")
    if (left is None) != (right is None):
        return None
    return [left, right] if left is not None else []


def _text_tables(flags: Mapping[str, Any], named_by: dict[str, dict[str, str]]):
    """The left and right text tables with the columns each must have (jobs/text_tables.py)."""
    reads = []
    for side in ("left", "right"):
        flag = f"--{side}-texts"
        chosen = side_columns(flags, side)
        named_by[flag] = {column: named for column, named in chosen.values() if column}
        reads.append((flag, flags[f"{side}_texts"], [chosen["id"][0], chosen["text"][0]]))
    return reads


def check(job: str, flags: Mapping[str, Any], beam_args: Sequence[str] = (), own_flags: Iterable[str] = ()) -> None:
    """Run the pre-flight checks of ``job`` on its parsed ``flags`` (click's names) and its
    pass-through Beam options. Raises PreflightError (one line) on the first mistake found.

    Columns checked are those the input must have whatever the other flags say, ``--keep-cols``
    included (each once, none named like an output column); half-given id columns are left to the
    job, whose flag checks come first and explain them better (one id column without the other)."""
    if beam_args:
        check_beam_flags(beam_args, own_flags)
    keep = list(flags.get("keep_cols") or ())
    if job in OUTPUT_COLUMNS:
        check_keep_cols(keep, OUTPUT_COLUMNS[job])
    fmt = flags.get("format")
    reads: list[tuple[str, Sequence[str], list[str | None]]] = []
    named_by: dict[str, dict[str, str]] = {}     # flag of the input -> {column: the flag that named it}
    if job == "encode_texts":
        reads.append(("--input", flags["inputs"], [flags["text_col"], flags["id_col"]]))
    elif job == "score_pairs":
        ids = _id_columns(flags)
        both_tables = bool(flags["left_texts"] and flags["right_texts"])
        if (ids == [] and both_tables) or (ids and not (both_tables or flags.get("store"))):
            ids = None     # text tables without ids, or ids without text tables or a store: the job says which
        pair_columns = [] if ids is None else ids or [flags["left_col"], flags["right_col"]]
        reads.append(("--pairs", flags["pairs"], pair_columns + keep))
        if ids:
            reads += _text_tables(flags, named_by)
    elif job == "label_pairs":
        reads.append(("--pairs", flags["pairs"], _pair_inputs(flags, *(_id_columns(flags) or ()), *keep)))
    elif job == "build_candidates":
        reads += _text_tables(flags, named_by)
    elif job in ("train_teacher", "evaluate"):
        main = "train" if job == "train_teacher" else "pairs"
        reads.append(("--" + main, flags[main], _pair_inputs(flags, flags.get("label_col"), flags.get("group_col"))))
        reads.append(("--dev", flags.get("dev") or (), _pair_inputs(flags, flags.get("label_col"))))
    elif job == "train_student":
        reads.append(("--distill", flags["distill"], []))       # its columns depend on its manifest
        reads.append(("--dev", flags["dev"], _pair_inputs(flags, flags.get("label_col"), flags.get("dev_group_col"))))
    for flag, patterns, required in reads:
        files = local_files(flag, patterns, fmt)
        check_columns(files, required, fmt, named_by.get(flag))
    if job in ("encode_texts", "score_pairs"):
        check_student_dir(flags.get("model_dir"))
    if job == "score_pairs":
        check_store_dir(flags.get("store"), flags.get("model_dir"))
    elif job == "label_pairs" or (job == "train_student" and flags.get("teacher")):
        check_teacher_dir(flags.get("teacher"))      # train_student's --teacher: VIRT's cross-encoder
    elif job == "evaluate":
        for spec in flags.get("models") or ():
            source = spec.partition("=")[2] if "=" in spec else spec   # jobs.evaluate.parse_model_spec
            if source and source != BASELINE:
                check_model_dir(source)
    if flags.get("output") is not None:
        check_output(flags["output"], bool(flags.get("overwrite")))
