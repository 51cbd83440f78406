"""Quality and speed of teachers, students and the zero-training baseline, side by side.

    python -m jobs.evaluate --pairs dev.jsonl --model teacher/ --model student/ --model baseline \
        [--dev select.jsonl] --output report/

For every model: its scores on the labeled pairs and the metrics of the labels (binary: ROC-AUC,
and accuracy and F1 at the threshold that is best on ``--dev``, or on the evaluated pairs when
no ``--dev`` is given; graded: Pearson and Spearman), its agreement with the first teacher among
the models, and its pairs/s on this machine. ``--group-col qid`` also ranks each query's pairs
(MRR@10, MAP, nDCG@10 over queries with a positive and a negative); ``--compare A,B`` adds
metric(A) - metric(B) with a 95% paired-bootstrap interval (``encoders/evaluation.py``).
Writes ``DIR/report.md`` with PNG plots (``report.py``), ``DIR/metrics.json``,
``DIR/scores.parquet`` (every model's score per pair, and its query with ``--group-col``),
``DIR/_dead_letter/``, ``DIR/_SUMMARY.json`` and ``DIR/_SUCCESS``, committed at the end (pipeline/output/).

Speed, and its regime: a teacher reads every pair whole, so its cost is per pair. A student
encodes each unique text once and runs its head per pair, so its pairs/s depends on how many
pairs share a text. Two figures are given per student: end to end on these pairs (their own
regime: P pairs over U unique texts) and the head alone (the limit when pairs far outnumber
texts, DiPair's setting). Both are plain PyTorch in this process (no Beam, no store).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from encoders.choices import DEVICES
from encoders.settings import POSITIVE_INT, check_settings, setting
from jobs.common import abort_output_on_failure, job_command, main_module, run_started
from pipeline.settings import LITERAL_OUTPUT, Output, PairData, Run, parse_label_range

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    from encoders.teacher import TeacherTask
    from pipeline.summary import RunSummary


JOB_NAME = "evaluate"
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.parquet"


@dataclass(frozen=True, kw_only=True)
class EvaluationData:
    """What is evaluated on (labeled pairs, dev for the thresholds), which models, and in what batches."""
    pairs: tuple[str, ...] = setting((), "Labeled pairs to evaluate on: a path, glob or Beam filesystem path; repeat "
                                         "for more.", multiple=True, required=True, metavar="PATH")
    models: tuple[str, ...] = setting(
        (), "A model to evaluate; repeat for more: a teacher checkpoint (train_teacher output or any Hugging Face "
            "sequence-classification cross-encoder), a student checkpoint (train_student output), or `baseline` for "
            "the zero-training cosine of the packaged MiniLM. NAME=DIR names it in the report (default: the "
            "directory's name).", name="--model", multiple=True, required=True, metavar="[NAME=]DIR|baseline")
    dev: tuple[str, ...] = setting(
        (), "Labeled pairs on which the accuracy/F1 threshold of each model is chosen. Without it the threshold is "
            "chosen on --pairs themselves (optimistic); the report says which.", multiple=True, metavar="PATH")
    task: str = setting("binary", "binary: labels 0/1 (AUC, accuracy, F1). graded: numbers in --label-range "
                                  "(Pearson, Spearman).", choices=("binary", "graded"))
    label_range: tuple[float, float] | None = setting(None, "graded only: the range of the labels.",
                                                      parse=parse_label_range, metavar="LOW,HIGH")
    group_col: str | None = setting(
        None, "Column naming each pair's query (e.g. qid): also rank each query's candidates and report MRR@10, MAP "
              "and nDCG@10 over the queries with at least one positive and one negative.", metavar="COL")
    compare: tuple[str, ...] = setting(
        (), "Report metric(A) - metric(B) for two --model names with a 95%% paired-bootstrap interval (over queries "
            "for ranking metrics, over pairs otherwise); repeat for more.", multiple=True, metavar="A,B")
    batch_size: int = setting(64, "Pairs per teacher batch.", range=POSITIVE_INT)
    encode_batch_size: int = setting(128, "Texts per student encoder batch.", range=POSITIVE_INT)
    head_batch_size: int = setting(8192, "Pairs per student head batch.", range=POSITIVE_INT)
    limit: int | None = setting(None, "Read at most N rows from each of --pairs and --dev (quick runs).",
                                range=POSITIVE_INT, metavar="N")


@dataclass(frozen=True, kw_only=True)
class EvaluateJob(Run, Output, PairData, EvaluationData):
    """Everything one evaluation needs, every field a flag (--help lists the last base's first)."""
    output: str = setting(help="Directory to create: report.md, *.png, metrics.json, scores.parquet, _dead_letter/, "
                               "_SUMMARY.json, _SUCCESS." + LITERAL_OUTPUT, metavar="DIR", required=True)
    device: str = setting("auto", "Where models run; auto = CUDA when present (mixed precision). Speeds are of this "
                                  "device.", choices=DEVICES)

    def check(self) -> None:
        from pipeline.errors import FlagError
        from encoders.evaluation import parse_comparisons

        parse_comparisons(self.compare)
        if not self.models:
            raise FlagError("no --model given: name teacher or student checkpoint directories, or `baseline`")
        if self.task not in ("binary", "graded"):
            raise FlagError(f"--task {self.task!r} is not allowed: binary (labels 0/1) or graded (numbers in "
                             "--label-range)")
        check_settings(self)
        if self.task == "graded" and self.label_range is None:
            raise FlagError("--task graded needs --label-range LOW,HIGH (e.g. 0,5 for STS-B)")

    def label_task(self) -> TeacherTask:
        from encoders.teacher import TeacherTask

        return TeacherTask(self.task, label_range=self.label_range)


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``baseline``, ``DIR`` or ``NAME=DIR`` -> (name, source). The name defaults to the
    directory's base name."""
    from pipeline.errors import FlagError
    from encoders.evaluation import BASELINE

    name, sep, source = spec.partition("=")
    if not sep:
        name, source = (BASELINE if spec == BASELINE else os.path.basename(os.path.normpath(spec))), spec
    if not name or not source:
        raise FlagError(f"--model {spec!r} is not allowed: give a checkpoint directory, NAME=DIR, or `baseline`")
    return name, source


# --------------------------------------------------------------------------- the command line

def report(job: EvaluateJob, argv: list[str]) -> str:
    """Evaluate; the summary with the results tables."""
    from pipeline.report import ranking_table, results_table

    summary = run(job, argv)
    with open(os.path.join(job.output, METRICS_FILE), encoding="utf-8") as handle:
        metrics = json.load(handle)
    return summary.table() + "\n" + results_table(metrics) + "\n" + ranking_table(metrics)


main = job_command("evaluate", EvaluateJob, report,
                   "Evaluate teachers, students and the baseline on labeled pairs: quality, agreement, speed, plots.")


# --------------------------------------------------------------------------- the job

@abort_output_on_failure
def run(job: EvaluateJob, argv: list[str] | None = None) -> RunSummary:
    """Check, load every model, score, measure, write the report."""
    from pipeline.errors import FlagError
    from pipeline.provenance import table_metadata
    import numpy as np
    import torch
    from encoders.device import pick_device
    from encoders.evaluation import (MAIN_METRICS, BatchSizes, compare_models, evaluate_models, load_model,
                                     model_kind, parse_comparisons)
    from encoders.inference import Pairs
    from pipeline.datasets import read_labeled_pairs
    from pipeline.dead_letters import check_dead_letter_limit, count_reasons
    from pipeline.output.commit import open_output, write_dead_letter_file
    from pipeline.output.paths import local_path_or_none
    from pipeline.pairs import PairColumns
    from pipeline.readers import InputError, check_columns, expand_inputs
    from pipeline.report import EVALUATED_SCORES, write_metrics, write_report, write_scores
    from pipeline.summary import RunSummary

    job.check()
    device = pick_device(job.device)
    specs = [parse_model_spec(spec) for spec in job.models]
    names = [name for name, _ in specs]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise FlagError(f"--model names {', '.join(clashes)} more than once: name them apart with NAME=DIR")
    for _, source in specs:
        model_kind(source)   # a wrong directory fails now, not after the first model has run
    columns = PairColumns(left=job.left_col, right=job.right_col)
    task = job.label_task()
    split_files = {"pairs": expand_inputs(job.pairs, job.format)}
    if job.dev:
        split_files["dev"] = expand_inputs(job.dev, job.format)
    for files in split_files.values():
        check_columns(files, [*columns.required(), job.label_col])
    if job.group_col:
        check_columns(split_files["pairs"], [job.group_col])
    unknown = sorted({name for pair in parse_comparisons(job.compare) for name in pair} - set(names))
    if unknown:
        raise FlagError(f"--compare names {', '.join(unknown)}, not among the models ({', '.join(names)})")
    models = [load_model(name, source, device) for name, source in specs]
    out = open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                      reads={"--pairs": job.pairs, "--dev": job.dev,
                             "--model": [local_path_or_none(source) for _, source in specs]})

    started = run_started()
    splits = {name: read_labeled_pairs(files, columns, job.label_col, task, job.limit,
                                       job.group_col if name == "pairs" else None)
              for name, files in split_files.items()}
    reconciliation = "; ".join(f"{name} rows read {s.rows_read:,} = used {len(s.targets):,} + skipped "
                               f"{len(s.skipped):,}" for name, s in splits.items())
    dead = [letter for labeled in splits.values() for letter in labeled.skipped]
    # Before the models run, the long part: a bad input is known once it has been read.
    check_dead_letter_limit(sum(s.rows_read for s in splits.values()), len(dead), count_reasons(dead),
                            job.max_dead_letter_fraction, reconciliation)
    for name, labeled in splits.items():
        if not labeled.targets:
            raise InputError(f"--{name} has no usable labeled pairs: {labeled.rows_read} rows read, all skipped")
        if task.task == "binary" and len(set(labeled.targets)) < 2:
            raise InputError(f"--{name} has only one class ({labeled.targets[0]:g}): AUC and thresholds need both")
    evaluated = splits["pairs"]
    pairs = Pairs.of(evaluated.lefts, evaluated.rights)
    targets = np.array(evaluated.targets)
    dev_targets = np.array(splits["dev"].targets) if "dev" in splits else None
    groups = np.array(evaluated.groups) if job.group_col else None

    batches = BatchSizes(job.batch_size, job.encode_batch_size, job.head_batch_size)
    dev = splits.get("dev")
    scored, results, reference = evaluate_models(
        models, task.task, evaluated.lefts, evaluated.rights, targets,
        (dev.lefts, dev.rights, dev_targets) if dev is not None else None, groups, batches, device,
        say=lambda line: click.echo(line, err=True))

    metrics = {
        "task": task.task,
        "main_metric": MAIN_METRICS[task.task],
        "pairs": {"paths": list(job.pairs), "count": len(pairs), "unique_left_texts": len(pairs.pools["left"]),
                  "unique_right_texts": len(pairs.pools["right"]),
                  "pairs_per_unique_text": len(pairs) / pairs.unique_texts,
                  "label_rate": float(targets.mean()) if task.task == "binary" else None},
        "dev": ({"paths": list(job.dev), "count": len(dev_targets)} if dev_targets is not None else None),
        "threshold_source": ("dev" if dev_targets is not None else "evaluated pairs") if task.task == "binary" else None,
        "reference_teacher": reference,
        "machine": {"device": device, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "platform": platform.platform(), "python": platform.python_version()},
        "models": results,
        "group_col": job.group_col,
        "comparisons": [compare_models(a, b, task.task, scored, targets, groups)
                        for a, b in parse_comparisons(job.compare)],
    }
    provenance = table_metadata(JOB_NAME, {m.name: (m.fingerprint, m.source) for m in models}, score=EVALUATED_SCORES)
    write_scores(out.staged(SCORES_FILE), evaluated, {name: s.scores for name, s in scored.items()}, provenance,
                 job.group_col)
    write_metrics(out.staged(METRICS_FILE), metrics)
    write_report(out.staged(), metrics, {name: s.scores for name, s in scored.items()}, targets)
    write_dead_letter_file(out.staged(), dead, provenance)

    counts = {"pairs_rows_read": evaluated.rows_read, "pairs_used": len(targets),
              "pairs_rows_skipped": len(evaluated.skipped), "models": len(models)}
    if dev_targets is not None:
        counts.update({"dev_rows_read": splits["dev"].rows_read, "dev_pairs_used": len(dev_targets),
                       "dev_rows_skipped": len(splits["dev"].skipped)})
    notes = [f"report: {os.path.join(job.output, 'report.md')}"]
    if metrics["threshold_source"]:
        notes.append(f"accuracy and F1 at the best-accuracy threshold chosen on the {metrics['threshold_source']}")
    summary = RunSummary(
        job=JOB_NAME, arguments=list(argv if argv is not None else sys.argv[1:]), output=job.output,
        model_fingerprints={m.name: m.fingerprint for m in models}, wall_seconds=round(time.monotonic() - started, 3),
        counts=counts, dead_letters=count_reasons(dead), reconciliation=reconciliation, notes=notes,
        metrics={name: {"quality": r["quality"], **({"ranking": r["ranking"]} if "ranking" in r else {}),
                        "pairs_per_second": r["speed"]["pairs_per_second"]} for name, r in results.items()})
    out.commit(summary)
    return summary


if __name__ == "__main__":  # python -m jobs.evaluate
    main_module("evaluate")
