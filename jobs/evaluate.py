"""Quality and speed of teachers, students and the zero-training baseline, side by side.

    python -m jobs.evaluate --pairs dev.jsonl --model teacher/ --model student/ --model baseline \
        [--dev select.jsonl] --output report/

For every model: its scores on the labeled pairs and the metrics of the labels (binary: ROC-AUC,
and accuracy and F1 at the threshold that is best on ``--dev``, or on the evaluated pairs when
no ``--dev`` is given; graded: Pearson and Spearman), its agreement with the first teacher among
the models, and its pairs/s on this machine. With ``--group-col qid`` the pairs are also ranked
per query: MRR@10, MAP and nDCG@10 over the queries with at least one positive and one negative
(``encoders/ranking_metrics.py``). ``--compare A,B`` adds the difference of every metric between
models A and B with a 95% paired-bootstrap interval (over queries for the ranking metrics, over
pairs otherwise). Writes ``DIR/report.md`` with PNG plots
(``report.py``), ``DIR/metrics.json``, ``DIR/scores.parquet`` (every model's score per pair),
``DIR/_dead_letter/``, ``DIR/_SUMMARY.json`` and ``DIR/_SUCCESS``, committed at the end (pipeline/outputs.py).

Speed, and its regime: a teacher reads every pair whole, so its cost is per pair. A student
encodes each unique text once and runs its head per pair, so its pairs/s depends on how many
pairs share a text. Two figures are given per student: end to end on these pairs (their own
regime: P pairs over U unique texts) and the head alone (the limit when pairs far outnumber
texts, DiPair's setting). Both are plain PyTorch in this process (no Beam, no store).
"""
from __future__ import annotations

if __name__ == "__main__":
    # `python -m jobs.evaluate`: the command line (jobs/cli.py, light) parses the flags before the
    # imports below run, and imports this module by name only to run the job.
    from jobs.cli import main_module
    main_module("evaluate")

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from encoders.checkpoint import CONFIG_FILE, Student, build_student, load_student
from encoders.config import CONFIG_FORMAT, baseline_config
from encoders.ranking_metrics import pair_difference, query_difference, rank_queries
from encoders.teacher import CrossEncoder, TeacherTask, load_teacher, soft_labels
from jobs import cli
from jobs.common import run_started
from jobs.metrics import best_threshold_accuracy, f1_at_threshold, pearson, roc_auc, spearman
from jobs.report import write_report
from jobs.student_inference import Pairs, encode_pairs, head_logits, synchronize
from jobs.train_teacher import LabeledPairs, read_labeled_pairs
from pipeline.dead_letters import DeadLetter
from pipeline.encode import pick_device
from pipeline.outputs import abort_output_on_failure, local_path_or_none, open_output, write_dead_letter_file
from pipeline.pairs import TextPairColumns
from pipeline.readers import check_columns, expand_inputs
from pipeline.store import COMPRESSION
from pipeline.summary import RunSummary

JOB_NAME = "evaluate"
BASELINE = "baseline"
KINDS = ("teacher", "student", "baseline")
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.parquet"
# The head alone runs in well under a second on a dev set; it is repeated until it has run this
# long so that its pairs/s is not a timer's rounding.
MIN_HEAD_SECONDS = 1.0


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

    def comparisons(self) -> list[tuple[str, str]]:
        """``--compare A,B`` values -> (A, B) pairs (ValueError naming a malformed one)."""
        pairs = []
        for spec in self.compare:
            parts = [part.strip() for part in spec.split(",")]
            if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
                raise ValueError(f"--compare {spec!r} is not allowed: give two different model names, A,B")
            pairs.append((parts[0], parts[1]))
        return pairs

    def check(self) -> None:
        self.comparisons()
        if not self.models:
            raise ValueError("no --model given: name teacher or student checkpoint directories, or `baseline`")
        for flag, value in (("--batch-size", self.batch_size), ("--encode-batch-size", self.encode_batch_size),
                            ("--head-batch-size", self.head_batch_size), ("--limit", self.limit)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{flag} {value!r} is not allowed: give a positive integer")
        if self.task not in ("binary", "graded"):
            raise ValueError(f"--task {self.task!r} is not allowed: binary (labels 0/1) or graded (numbers in "
                             "--label-range)")
        if self.task == "graded" and self.label_range is None:
            raise ValueError("--task graded needs --label-range LOW,HIGH (e.g. 0,5 for STS-B)")

    def label_task(self) -> TeacherTask:
        return TeacherTask(self.task, label_range=self.label_range)


# --------------------------------------------------------------------------- models

@dataclass
class Model:
    """One model to evaluate: a teacher cross-encoder, a student checkpoint or the baseline."""
    name: str
    kind: str                           # one of KINDS
    source: str                         # the --model value
    model: CrossEncoder | Student
    fingerprint: str
    description: str


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``baseline``, ``DIR`` or ``NAME=DIR`` -> (name, source). The name defaults to the
    directory's base name."""
    name, sep, source = spec.partition("=")
    if not sep:
        name, source = (BASELINE if spec == BASELINE else os.path.basename(os.path.normpath(spec))), spec
    if not name or not source:
        raise ValueError(f"--model {spec!r} is not allowed: give a checkpoint directory, NAME=DIR, or `baseline`")
    return name, source


def model_kind(source: str) -> str:
    """``baseline``, ``student`` (a pairscore student checkpoint: its config.json says so) or
    ``teacher`` (any other model directory: a train_teacher output or a Hugging Face
    sequence-classification cross-encoder)."""
    if source == BASELINE:
        return "baseline"
    config = os.path.join(source, CONFIG_FILE)
    if not os.path.isfile(config):
        raise ValueError(f"--model {source!r} is not a model directory (no {CONFIG_FILE}); give a teacher or "
                         f"student checkpoint directory, or `{BASELINE}`")
    try:
        data = json.loads(open(config, encoding="utf-8").read())
    except json.JSONDecodeError as err:
        raise ValueError(f"--model {source!r}: {CONFIG_FILE} is not JSON ({err})") from None
    return "student" if data.get("format") == CONFIG_FORMAT else "teacher"


def load_model(name: str, source: str, device: str) -> Model:
    """Load one model onto ``device`` in eval mode; ValueError naming what is wrong."""
    kind = model_kind(source)
    if kind == "teacher":
        teacher = load_teacher(source).to(device).eval()
        return Model(name, kind, source, teacher, teacher.fingerprint,
                     f"cross-encoder, {teacher.model.config.num_hidden_layers} layers, max length "
                     f"{teacher.task.max_length}")
    student = (build_student(baseline_config()) if kind == "baseline" else load_student(source)).to(device).eval()
    config = student.config
    layers = student.encoder.left.transformer.config.num_hidden_layers
    if kind == "baseline":
        description = f"cosine of mean-pooled sentence embeddings, {config.encoder}, {layers} layers, no training"
    else:
        description = (f"head {config.head}, K={layers}, N={config.left_tokens}, M={config.right_tokens}, "
                       f"D={config.dim or student.encoder.left.output_dim}"
                       + ("" if config.shared_encoder else ", separate encoders")
                       + (", cosine skip" if config.cosine_skip else ""))
    return Model(name, kind, source, student, student.fingerprint, description)


# --------------------------------------------------------------------------- scoring

@dataclass
class Scored:
    """One model on P pairs: logits (P, C), scores (P,) (a probability, or the baseline's cosine)
    and the seconds it took."""
    logits: np.ndarray
    scores: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)


def score_teacher(teacher: CrossEncoder, lefts: Sequence[str], rights: Sequence[str], batch_size: int,
                  device: str) -> Scored:
    """Tokenize and run the cross-encoder over every pair (sorted by length, as label_pairs does)."""
    started = time.perf_counter()
    logits = teacher.predict(teacher.tokenize(lefts, rights), batch_size)
    synchronize(device)
    seconds = time.perf_counter() - started
    probs = soft_labels(logits)                       # (P,) for one output, (P, C) for k classes
    scores = probs if probs.ndim == 1 else probs[:, -1]
    return Scored(logits, scores.astype(np.float64), {"total_seconds": seconds})


def score_student(student: Student, pairs: Pairs, job: EvaluateJob, device: str, time_head: bool) -> Scored:
    """Stage one (each unique text encoded once) and stage two (the head over the pairs), timed
    apart; with ``time_head`` the head pass is repeated until it has run ``MIN_HEAD_SECONDS``."""
    started = time.perf_counter()
    encoded = encode_pairs(student, pairs, device, job.encode_batch_size)
    synchronize(device)
    encoded_at = time.perf_counter()
    logits = head_logits(student, encoded, pairs, device, job.head_batch_size)
    synchronize(device)
    head_seconds, passes = time.perf_counter() - encoded_at, 1
    if time_head:
        while head_seconds < MIN_HEAD_SECONDS:
            tic = time.perf_counter()
            head_logits(student, encoded, pairs, device, job.head_batch_size)
            synchronize(device)
            head_seconds += time.perf_counter() - tic
            passes += 1
    scores, _ = student.scores_from_logits(logits)
    return Scored(logits.numpy(), scores.numpy().astype(np.float64),
                  {"encode_seconds": encoded_at - started, "head_seconds": head_seconds / passes,
                   "head_passes": passes})


def score_model(model: Model, labeled: LabeledPairs, job: EvaluateJob, device: str, time_it: bool) -> Scored:
    """Scores of one model on one split (a short warm-up first when it is timed, so one-time costs
    such as lazy initialisation are not counted)."""
    if model.kind == "teacher":
        if time_it:
            score_teacher(model.model, labeled.lefts[:8], labeled.rights[:8], job.batch_size, device)
        return score_teacher(model.model, labeled.lefts, labeled.rights, job.batch_size, device)
    pairs = Pairs.of(labeled.lefts, labeled.rights)
    if time_it:
        score_student(model.model, Pairs.of(labeled.lefts[:8], labeled.rights[:8]), job, device, False)
    return score_student(model.model, pairs, job, device, time_it)


# --------------------------------------------------------------------------- metrics

def quality(task: str, scores: np.ndarray, targets: np.ndarray, dev: tuple[np.ndarray, np.ndarray] | None
            ) -> dict[str, float]:
    """binary: auc, and accuracy and f1 at ``threshold`` (the best-accuracy threshold on ``dev``
    (scores, labels) when given, else on these pairs); graded: pearson, spearman."""
    if task == "graded":
        return {"pearson": pearson(scores, targets), "spearman": spearman(scores, targets)}
    threshold = best_threshold_accuracy(*(dev if dev is not None else (scores, targets)))[1]
    labels = targets.astype(bool)
    return {"auc": roc_auc(scores, labels), "accuracy": float(((scores >= threshold) == labels).mean()),
            "f1": f1_at_threshold(scores, labels, threshold), "threshold": threshold}


def agreement(scored: Scored, teacher: Scored) -> dict[str, float]:
    """How closely a model follows the teacher: Pearson of its first logit with the teacher's (the
    baseline's "logit" is its cosine), and the AUC of its scores against the teacher's hard labels
    (teacher probability >= 0.5). One-output teachers only."""
    hard = teacher.scores >= 0.5
    return {"teacher_logit_pearson": pearson(scored.logits[:, 0], teacher.logits[:, 0]),
            "teacher_label_auc": roc_auc(scored.scores, hard)}


def speed(model: Model, scored: Scored, pairs: Pairs) -> dict[str, float]:
    """pairs/s on these pairs; for students also the head alone and the encoder's texts/s."""
    count = len(pairs)
    if model.kind == "teacher":
        return {"pairs_per_second": count / scored.seconds["total_seconds"], **scored.seconds}
    encode, head = scored.seconds["encode_seconds"], scored.seconds["head_seconds"]
    return {"pairs_per_second": count / (encode + head), "head_pairs_per_second": count / head,
            "encode_texts_per_second": pairs.unique_texts / encode, **scored.seconds}


MAIN_METRICS = {"binary": "auc", "graded": "spearman"}


# --------------------------------------------------------------------------- the job

@abort_output_on_failure
def run(job: EvaluateJob, argv: list[str] | None = None) -> RunSummary:
    """Check, load every model, score, measure, write the report."""
    job.check()
    device = pick_device(job.device)
    specs = [parse_model_spec(spec) for spec in job.models]
    names = [name for name, _ in specs]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(f"--model names {', '.join(clashes)} more than once: name them apart with NAME=DIR")
    for _, source in specs:
        model_kind(source)   # a wrong directory fails now, not after the first model has run
    columns = TextPairColumns(left=job.left_col, right=job.right_col)
    task = job.label_task()
    split_files = {"pairs": expand_inputs(job.pairs, job.format)}
    if job.dev:
        split_files["dev"] = expand_inputs(job.dev, job.format)
    for files in split_files.values():
        check_columns(files, [*columns.required(), job.label_col])
    if job.group_col:
        check_columns(split_files["pairs"], [job.group_col])
    unknown = sorted({name for pair in job.comparisons() for name in pair} - set(names))
    if unknown:
        raise ValueError(f"--compare names {', '.join(unknown)}, not among the models ({', '.join(names)})")
    models = [load_model(name, source, device) for name, source in specs]
    out = open_output(job.output, job=JOB_NAME, overwrite=job.overwrite,
                      reads={"--pairs": job.pairs, "--dev": job.dev,
                             "--model": [local_path_or_none(source) for _, source in specs]})

    started = run_started()
    splits = {name: read_labeled_pairs(files, columns, job.label_col, task, job.limit,
                                       job.group_col if name == "pairs" else None)
              for name, files in split_files.items()}
    for name, labeled in splits.items():
        if not labeled.targets:
            raise ValueError(f"--{name} has no usable labeled pairs: {labeled.rows_read} rows read, all skipped")
        if task.task == "binary" and len(set(labeled.targets)) < 2:
            raise ValueError(f"--{name} has only one class ({labeled.targets[0]:g}): AUC and thresholds need both")
    evaluated = splits["pairs"]
    pairs = Pairs.of(evaluated.lefts, evaluated.rights)
    targets = np.array(evaluated.targets)
    dev_targets = np.array(splits["dev"].targets) if "dev" in splits else None
    groups = np.array(evaluated.groups) if job.group_col else None

    scored: dict[str, Scored] = {}
    results: dict[str, dict[str, Any]] = {}
    for model in models:
        click.echo(f"scoring {len(pairs):,} pairs with {model.name} ({model.kind})", err=True)
        scored[model.name] = score_model(model, evaluated, job, device, time_it=True)
        dev_scores = (score_model(model, splits["dev"], job, device, time_it=False).scores
                      if dev_targets is not None else None)
        results[model.name] = {
            "kind": model.kind, "source": model.source, "fingerprint": model.fingerprint,
            "description": model.description,
            "quality": quality(task.task, scored[model.name].scores, targets,
                               (dev_scores, dev_targets) if dev_scores is not None else None),
            "speed": speed(model, scored[model.name], pairs)}
        if groups is not None:
            ranking = rank_queries(scored[model.name].scores, targets, groups)
            results[model.name]["ranking"] = {**ranking.means(), "queries": len(ranking.queries),
                                              "queries_total": ranking.total_queries}
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

    comparisons = [compare_models(a, b, task.task, scored, targets, groups) for a, b in job.comparisons()]
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
        "comparisons": comparisons,
    }
    write_scores(out.staged(SCORES_FILE), evaluated, pairs, scored, job.group_col)
    with open(out.staged(METRICS_FILE), "w", encoding="utf-8") as handle:
        json.dump(_strict_json(metrics), handle, indent=2, allow_nan=False)
        handle.write("\n")
    write_report(out.staged(), metrics, {name: s.scores for name, s in scored.items()}, targets)
    dead = [letter for labeled in splits.values() for letter in labeled.skipped]
    write_dead_letter_file(out.staged(), dead)

    counts = {"pairs_rows_read": evaluated.rows_read, "pairs_used": len(targets),
              "pairs_rows_skipped": len(evaluated.skipped), "models": len(models)}
    if dev_targets is not None:
        counts.update({"dev_rows_read": splits["dev"].rows_read, "dev_pairs_used": len(dev_targets),
                       "dev_rows_skipped": len(splits["dev"].skipped)})
    reconciliation = "; ".join(f"{name} rows read {s.rows_read:,} = used {len(s.targets):,} + skipped "
                               f"{len(s.skipped):,}" for name, s in splits.items())
    notes = [f"report: {os.path.join(job.output, 'report.md')}"]
    if metrics["threshold_source"]:
        notes.append(f"accuracy and F1 at the best-accuracy threshold chosen on the {metrics['threshold_source']}")
    summary = RunSummary(
        job=JOB_NAME, arguments=list(argv if argv is not None else sys.argv[1:]), output=job.output,
        model_fingerprints={m.name: m.fingerprint for m in models}, wall_seconds=round(time.monotonic() - started, 3),
        counts=counts, dead_letters=_by_reason(dead), reconciliation=reconciliation, notes=notes,
        metrics={name: {"quality": r["quality"], **({"ranking": r["ranking"]} if "ranking" in r else {}),
                        "pairs_per_second": r["speed"]["pairs_per_second"]}
                 for name, r in results.items()})
    out.commit(summary)
    return summary


def compare_models(a: str, b: str, task: str, scored: dict[str, Scored], targets: np.ndarray,
                   groups: np.ndarray | None) -> dict[str, Any]:
    """metric(a) - metric(b) for every metric of the task (AUC, or Pearson and Spearman, over
    pairs) and, with groups, every ranking metric (over queries), each with its 95% paired
    bootstrap interval: {"a", "b", "differences": {metric: Difference.to_dict()}}."""
    pair_metrics = {"auc": lambda s, t: roc_auc(s, t >= 0.5)} if task == "binary" else {
        "pearson": pearson, "spearman": spearman}
    differences = {name: pair_difference(metric, scored[a].scores, scored[b].scores, targets).to_dict()
                   for name, metric in pair_metrics.items()}
    if groups is not None:
        ranked = {name: rank_queries(scored[name].scores, targets, groups) for name in (a, b)}
        for metric in ranked[a].values:
            differences[metric] = query_difference(ranked[a].values[metric], ranked[b].values[metric]).to_dict()
    return {"a": a, "b": b, "differences": differences}


def write_scores(path: str, labeled: LabeledPairs, pairs: Pairs, scored: dict[str, Scored],
                 group_col: str | None = None) -> None:
    """Every model's score per evaluated pair, next to the texts, the target and (with
    ``--group-col``) the query: one Parquet file anyone can load to dig into disagreements."""
    columns = {"left": labeled.lefts, "right": labeled.rights, "target": labeled.targets}
    if group_col is not None:
        columns["group"] = labeled.groups
    columns.update({f"score:{name}": s.scores.astype(np.float32) for name, s in scored.items()})
    pq.write_table(pa.table(columns), path, compression=COMPRESSION)


def _by_reason(letters: Sequence[DeadLetter]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for letter in letters:
        counts[letter.reason] = counts.get(letter.reason, 0) + 1
    return dict(sorted(counts.items()))


def _strict_json(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers, NaN (an undefined correlation or AUC) as null
    and infinities (a threshold above every score: nothing predicted positive) as the strings
    "inf" / "-inf", so metrics.json is JSON every parser reads."""
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


# The command line is declared in jobs/cli.py (light, so that --help and bad arguments answer
# before the imports above); ``main`` is kept for callers of ``jobs.evaluate.main``.
main = cli.evaluate
