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
``DIR/_dead_letter/``, ``DIR/_SUMMARY.json`` and ``DIR/_SUCCESS``, committed at the end (pipeline/outputs.py).

Speed, and its regime: a teacher reads every pair whole, so its cost is per pair. A student
encodes each unique text once and runs its head per pair, so its pairs/s depends on how many
pairs share a text. Two figures are given per student: end to end on these pairs (their own
regime: P pairs over U unique texts) and the head alone (the limit when pairs far outnumber
texts, DiPair's setting). Both are plain PyTorch in this process (no Beam, no store).
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any


import click

from jobs.common import (ARGV_KEY, FORMATS, PLAIN_JOB_CONTEXT, abort_output_on_failure, device_option, JobCommand,
                         main_module, output_option, overwrite_option, parse_label_range, preflight, run_job,
                         run_options, run_started, dead_letter_option, POSITIVE_INT)

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    from encoders.evaluation import Scored
    from encoders.inference import Pairs
    from encoders.teacher import TeacherTask
    from pipeline.datasets import LabeledPairs
    from pipeline.summary import RunSummary


JOB_NAME = "evaluate"
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.parquet"


@dataclass(frozen=True)
class EvaluateJob:
    """Everything one evaluation needs; built once from the command line."""
    pairs: tuple[str, ...]
    models: tuple[str, ...]
    output: str
    dev: tuple[str, ...] = ()
    label_col: str = "label"
    left_col: str = "left"
    right_col: str = "right"
    task: str = "binary"
    label_range: tuple[float, float] | None = None
    batch_size: int = 64
    encode_batch_size: int = 128
    head_batch_size: int = 8192
    device: str = "auto"
    limit: int | None = None
    format: str | None = None
    overwrite: bool = False
    group_col: str | None = None
    compare: tuple[str, ...] = ()     # "A,B": metric(A) - metric(B) with a paired bootstrap interval
    max_dead_letter_fraction: float = 0.1

    def check(self) -> None:
        from pipeline.errors import FlagError
        from encoders.evaluation import parse_comparisons

        parse_comparisons(self.compare)
        if not self.models:
            raise FlagError("no --model given: name teacher or student checkpoint directories, or `baseline`")
        for flag, value in (("--batch-size", self.batch_size), ("--encode-batch-size", self.encode_batch_size),
                            ("--head-batch-size", self.head_batch_size), ("--limit", self.limit)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise FlagError(f"{flag} {value!r} is not allowed: give a positive integer")
        if self.task not in ("binary", "graded"):
            raise FlagError(f"--task {self.task!r} is not allowed: binary (labels 0/1) or graded (numbers in "
                            "--label-range)")
        if self.task == "graded" and self.label_range is None:
            raise FlagError("--task graded needs --label-range LOW,HIGH (e.g. 0,5 for STS-B)")

    def label_task(self) -> TeacherTask:
        from encoders.teacher import TeacherTask

        return TeacherTask(self.task, label_range=self.label_range)


# --------------------------------------------------------------------------- models

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

@click.command("evaluate", cls=JobCommand, context_settings=PLAIN_JOB_CONTEXT)
@click.option("--pairs", multiple=True, required=True, metavar="PATH",
              help="Labeled pairs to evaluate on: a path, glob or Beam filesystem path; repeat for more.")
@click.option("--model", "models", multiple=True, required=True, metavar="[NAME=]DIR|baseline",
              help="A model to evaluate; repeat for more: a teacher checkpoint (train_teacher output or any Hugging "
                   "Face sequence-classification cross-encoder), a student checkpoint (train_student output), or "
                   "`baseline` for the zero-training cosine of the packaged MiniLM. NAME=DIR names it in the report "
                   "(default: the directory's name).")
@click.option("--dev", multiple=True, metavar="PATH",
              help="Labeled pairs on which the accuracy/F1 threshold of each model is chosen. Without it the threshold "
                   "is chosen on --pairs themselves (optimistic); the report says which.")
@click.option("--format", type=click.Choice(FORMATS), default=None,
              help="Read every input as this format, whatever its extension.")
@click.option("--left-col", default="left", show_default=True, help="Column holding the left text.")
@click.option("--right-col", default="right", show_default=True, help="Column holding the right text.")
@click.option("--label-col", default="label", show_default=True, help="Column holding the label.")
@click.option("--task", type=click.Choice(["binary", "graded"]), default="binary", show_default=True,
              help="binary: labels 0/1 (AUC, accuracy, F1). graded: numbers in --label-range (Pearson, Spearman).")
@click.option("--label-range", default=None, metavar="LOW,HIGH", help="graded only: the range of the labels.")
@click.option("--group-col", default=None, metavar="COL",
              help="Column naming each pair's query (e.g. qid): also rank each query's candidates and report MRR@10, "
                   "MAP and nDCG@10 over the queries with at least one positive and one negative.")
@click.option("--compare", multiple=True, metavar="A,B",
              help="Report metric(A) - metric(B) for two --model names with a 95%% paired-bootstrap interval (over "
                   "queries for ranking metrics, over pairs otherwise); repeat for more.")
@click.option("--batch-size", type=POSITIVE_INT, default=64, show_default=True, help="Pairs per teacher batch.")
@click.option("--encode-batch-size", type=POSITIVE_INT,
              default=128, show_default=True, help="Texts per student encoder batch.")
@click.option("--head-batch-size", type=POSITIVE_INT,
              default=8192, show_default=True, help="Pairs per student head batch.")
@device_option("Where models run; auto = CUDA when present (mixed precision). Speeds are of this device.")
@click.option("--limit", type=POSITIVE_INT, default=None, metavar="N",
              help="Read at most N rows from each of --pairs and --dev (quick runs).")
@output_option("Directory to create: report.md, *.png, metrics.json, scores.parquet, _dead_letter/, _SUMMARY.json, "
               "_SUCCESS.")
@overwrite_option
@dead_letter_option
@run_options
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool, **flags) -> None:
    """Evaluate teachers, students and the baseline on labeled pairs: quality, agreement, speed, plots."""
    def go() -> str:
        import json

        label_range = parse_label_range(flags.pop("label_range"))
        preflight(ctx, "evaluate", flags)
        from pipeline.report import ranking_table, results_table
        job = EvaluateJob(pairs=tuple(flags.pop("pairs")), models=tuple(flags.pop("models")), dev=tuple(flags.pop(
            "dev")), compare=tuple(flags.pop("compare")), label_range=label_range, **flags)
        summary = run(job, ctx.meta[ARGV_KEY])
        with open(os.path.join(job.output, METRICS_FILE), encoding="utf-8") as handle:
            metrics = json.load(handle)
        return summary.table() + "\n" + results_table(metrics) + "\n" + ranking_table(metrics)
    run_job(go, name="evaluate", quiet=quiet, verbose=verbose)


# --------------------------------------------------------------------------- the job

@abort_output_on_failure
def run(job: EvaluateJob, argv: list[str] | None = None) -> RunSummary:
    """Check, load every model, score, measure, write the report."""
    from pipeline.errors import FlagError
    from pipeline.provenance import table_metadata
    import numpy as np
    import torch
    from encoders.device import pick_device
    from encoders.evaluation import (MAIN_METRICS, BatchSizes, agreement, compare_models, load_model,
                                     model_kind, parse_comparisons, quality, ranking, score_model, speed)
    from encoders.inference import Pairs
    from pipeline.datasets import read_labeled_pairs
    from pipeline.dead_letters import check_dead_letter_limit, count_reasons
    from pipeline.output.commit import open_output, write_dead_letter_file
    from pipeline.output.paths import local_path_or_none
    from pipeline.pairs import PairColumns
    from pipeline.readers import InputError, check_columns, expand_inputs
    from pipeline.report import write_report
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
    scored: dict[str, Scored] = {}
    results: dict[str, dict[str, Any]] = {}
    for model in models:
        click.echo(f"scoring {len(pairs):,} pairs with {model.name} ({model.kind})", err=True)
        scored[model.name] = score_model(model, evaluated.lefts, evaluated.rights, batches, device, time_it=True)
        dev = splits.get("dev")
        dev_scores = (score_model(model, dev.lefts, dev.rights, batches, device, time_it=False).scores
                      if dev_targets is not None else None)
        results[model.name] = {
            "kind": model.kind, "source": model.source, "fingerprint": model.fingerprint,
            "description": model.description,
            "quality": quality(task.task, scored[model.name].scores, targets,
                               (dev_scores, dev_targets) if dev_scores is not None else None),
            "speed": speed(model, scored[model.name], pairs)}
        if groups is not None:
            results[model.name]["ranking"] = ranking(scored[model.name].scores, targets, groups)
    teachers = [m for m in models if m.kind == "teacher" and scored[m.name].logits.shape[1] == 1]
    reference = teachers[0].name if teachers else None
    if reference is not None:
        teacher_speed = results[reference]["speed"]["pairs_per_second"]
        main = MAIN_METRICS[task.task]
        for model in models:
            result = results[model.name]
            if model.name != reference:
                result["agreement"] = agreement(scored[model.name], scored[reference])
            result["relative_quality"] = result["quality"][main] / results[reference]["quality"][main]
            result["speedup"] = result["speed"]["pairs_per_second"] / teacher_speed
            if "head_pairs_per_second" in result["speed"]:
                result["speedup_head"] = result["speed"]["head_pairs_per_second"] / teacher_speed

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
    write_scores(out.staged(SCORES_FILE), evaluated, pairs, scored, provenance, job.group_col)
    with open(out.staged(METRICS_FILE), "w", encoding="utf-8") as handle:
        json.dump(_strict_json(metrics), handle, indent=2, allow_nan=False)
        handle.write("\n")
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


# What the score:NAME columns of scores.parquet mean (its pairscore.score metadata).
EVALUATED_SCORES = ("score:NAME, one column per model: a probability in [0, 1] for teachers and students, "
                    "a cosine in [-1, 1] for the baseline")


def write_scores(path: str, labeled: LabeledPairs, pairs: Pairs, scored: dict[str, Scored],
                 provenance: dict[str, str] | None = None, group_col: str | None = None) -> None:
    """Every model's score per evaluated pair, next to the texts, the target and (with
    ``--group-col``) the query: one Parquet file anyone can load to dig into disagreements
    (``provenance``: its key-value metadata)."""
    import numpy as np
    import pyarrow as pa
    from pipeline.writers import write_parquet_file

    columns = {"left": labeled.lefts, "right": labeled.rights, "target": labeled.targets}
    if group_col is not None:
        columns["group"] = labeled.groups
    columns.update({f"score:{name}": s.scores.astype(np.float32) for name, s in scored.items()})
    table = pa.table(columns).replace_schema_metadata(provenance)
    write_parquet_file(path, table.schema, [table])


def _strict_json(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, NaN (an undefined correlation or AUC) as null
    and infinities (a threshold above every score: nothing predicted positive) as the strings
    "inf" / "-inf", so metrics.json is JSON every parser reads."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


if __name__ == "__main__":  # python -m jobs.evaluate
    main_module("evaluate")
