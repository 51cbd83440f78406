"""Evaluating models side by side, in plain PyTorch: loading a teacher, a student or the
zero-training baseline, scoring labeled pairs with each the way the product runs it (teacher:
length-sorted batches; student: every unique text encoded once, then the head), timing it, and
the quality and agreement metrics ``jobs.evaluate`` reports, and (with a query column) the
ranking metrics per query and paired-bootstrap comparisons of two models
(``encoders/ranking_metrics.py``).

Shapes: P pairs, C outputs.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np

from encoders.checkpoint import CONFIG_FILE, Student, build_student, load_student
from encoders.config import CONFIG_FORMAT, baseline_config
from encoders.device import synchronize
from encoders.inference import Pairs, encode_pairs, head_logits
from encoders.metrics import best_threshold_accuracy, f1_at_threshold, pearson, roc_auc, spearman
from encoders.ranking_metrics import pair_difference, query_difference, rank_queries
from encoders.teacher import CrossEncoder, load_teacher, soft_labels
from encoders.errors import FlagError, ModelError

BASELINE = "baseline"
KINDS = ("teacher", "student", "baseline")
# The head alone runs in well under a second on a dev set; it is repeated until it has run this
# long so that its pairs/s is not a timer's rounding.
MIN_HEAD_SECONDS = 1.0
MAIN_METRICS = {"binary": "auc", "graded": "spearman"}


class BatchSizes(NamedTuple):
    """Pairs per teacher batch, texts per student encoder batch, pairs per student head batch."""
    teacher: int = 64
    encode: int = 128
    head: int = 8192


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


def model_kind(source: str) -> str:
    """``baseline``, ``student`` (a pairscore student checkpoint: its config.json says so) or
    ``teacher`` (any other model directory: a train_teacher output or a Hugging Face
    sequence-classification cross-encoder)."""
    if source == BASELINE:
        return "baseline"
    config = os.path.join(source, CONFIG_FILE)
    if not os.path.isfile(config):
        raise ModelError(f"--model {source!r} is not a model directory (no {CONFIG_FILE}); give a teacher or "
                         f"student checkpoint directory, or `{BASELINE}`")
    try:
        data = json.loads(open(config, encoding="utf-8").read())
    except json.JSONDecodeError as err:
        raise ModelError(f"--model {source!r}: {CONFIG_FILE} is not JSON ({err})") from None
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


def score_student(student: Student, pairs: Pairs, batches: BatchSizes, device: str, time_head: bool) -> Scored:
    """Stage one (each unique text encoded once) and stage two (the head over the pairs), timed
    apart; with ``time_head`` the head pass is repeated until it has run ``MIN_HEAD_SECONDS``."""
    started = time.perf_counter()
    encoded = encode_pairs(student, pairs, device, batches.encode)
    synchronize(device)
    encoded_at = time.perf_counter()
    logits = head_logits(student, encoded, pairs, device, batches.head)
    synchronize(device)
    head_seconds, passes = time.perf_counter() - encoded_at, 1
    if time_head:
        while head_seconds < MIN_HEAD_SECONDS:
            tic = time.perf_counter()
            head_logits(student, encoded, pairs, device, batches.head)
            synchronize(device)
            head_seconds += time.perf_counter() - tic
            passes += 1
    scores, _ = student.scores_from_logits(logits)
    return Scored(logits.numpy(), scores.numpy().astype(np.float64),
                  {"encode_seconds": encoded_at - started, "head_seconds": head_seconds / passes,
                   "head_passes": passes})


def score_model(model: Model, lefts: Sequence[str], rights: Sequence[str], batches: BatchSizes, device: str,
                time_it: bool) -> Scored:
    """Scores of one model on one split (a short warm-up first when it is timed, so one-time costs
    such as lazy initialisation are not counted)."""
    if model.kind == "teacher":
        if time_it:
            score_teacher(model.model, lefts[:8], rights[:8], batches.teacher, device)
        return score_teacher(model.model, lefts, rights, batches.teacher, device)
    pairs = Pairs.of(lefts, rights)
    if time_it:
        score_student(model.model, Pairs.of(lefts[:8], rights[:8]), batches, device, False)
    return score_student(model.model, pairs, batches, device, time_it)


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


# --------------------------------------------------------------------------- ranking and comparisons

def parse_comparisons(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``--compare A,B`` values -> (A, B) pairs (ValueError naming a malformed one)."""
    pairs = []
    for spec in specs:
        parts = [part.strip() for part in spec.split(",")]
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise FlagError(f"--compare {spec!r} is not allowed: give two different model names, A,B")
        pairs.append((parts[0], parts[1]))
    return pairs


def ranking(scores: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """scores, targets, groups (P,) -> MRR@10, MAP and nDCG@10 over the rankable queries, with
    ``queries`` (how many were ranked) and ``queries_total``."""
    ranked = rank_queries(scores, targets, groups)
    return {**ranked.means(), "queries": len(ranked.queries), "queries_total": ranked.total_queries}


def compare_models(a: str, b: str, task: str, scored: dict[str, Scored], targets: np.ndarray,
                   groups: np.ndarray | None) -> dict[str, Any]:
    """metric(a) - metric(b) for every metric of the task (AUC, or Pearson and Spearman, over
    pairs) and, with groups (P,), every ranking metric (over queries), each with its 95% paired
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


def evaluate_models(models: Sequence[Model], task: str, lefts: Sequence[str], rights: Sequence[str],
                    targets: np.ndarray, dev: tuple[Sequence[str], Sequence[str], np.ndarray] | None,
                    groups: np.ndarray | None, batches: BatchSizes, device: str, say=print
                    ) -> tuple[dict[str, Scored], dict[str, dict[str, Any]], str | None]:
    """Score every model on the evaluated pairs (P) and on dev ((lefts, rights, targets), whose
    scores choose the binary threshold); its quality, speed, ranking (``groups``: (P,) queries),
    and against the first single-output teacher among them (the reference) its agreement,
    relative quality and speed-up. Returns (scored per model, results per model, the reference)."""
    pairs = Pairs.of(lefts, rights)
    scored: dict[str, Scored] = {}
    results: dict[str, dict[str, Any]] = {}
    for model in models:
        say(f"scoring {len(pairs):,} pairs with {model.name} ({model.kind})")
        scored[model.name] = score_model(model, lefts, rights, batches, device, time_it=True)
        dev_scores = score_model(model, dev[0], dev[1], batches, device, time_it=False).scores if dev else None
        results[model.name] = {
            "kind": model.kind, "source": model.source, "fingerprint": model.fingerprint,
            "description": model.description,
            "quality": quality(task, scored[model.name].scores, targets, (dev_scores, dev[2]) if dev else None),
            "speed": speed(model, scored[model.name], pairs)}
        if groups is not None:
            results[model.name]["ranking"] = ranking(scored[model.name].scores, targets, groups)
    teachers = [m for m in models if m.kind == "teacher" and scored[m.name].logits.shape[1] == 1]
    reference = teachers[0].name if teachers else None
    if reference is not None:
        teacher_speed = results[reference]["speed"]["pairs_per_second"]
        main = MAIN_METRICS[task]
        for model in models:
            result = results[model.name]
            if model.name != reference:
                result["agreement"] = agreement(scored[model.name], scored[reference])
            result["relative_quality"] = result["quality"][main] / results[reference]["quality"][main]
            result["speedup"] = result["speed"]["pairs_per_second"] / teacher_speed
            if "head_pairs_per_second" in result["speed"]:
                result["speedup_head"] = result["speed"]["head_pairs_per_second"] / teacher_speed
    return scored, results, reference
