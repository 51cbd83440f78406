"""Quality metrics for the training loops and evaluation, in plain numpy.

Kept here rather than taken from scikit-learn, which is only a test dependency; the tests check
these against it. Shapes: P pairs, C outputs.
"""
from __future__ import annotations

import math

import numpy as np

from encoders.choices import MAIN_METRIC
from encoders.teacher import TeacherTask, soft_labels

# The dev metric that picks the best epoch per task (higher is better) is encoders.choices.MAIN_METRIC;
# the one that breaks its ties (lower is better): AUC and accuracy saturate on easy dev sets while the loss still improves.
TIE_BREAK_METRIC = {"binary": "log_loss", "graded": "mse", "classes": "log_loss"}


def selection_score(task: TeacherTask, metrics: dict[str, float], main_metric: str | None = None
                    ) -> tuple[float, float]:
    """Dev metrics -> a key that is larger for the better epoch; NaN (e.g. the AUC of a dev set
    with one class) counts as worst. ``main_metric`` (higher is better, e.g. ``mrr@10``) replaces
    the task's main metric."""
    main, tie = metrics[main_metric or MAIN_METRIC[task.task]], metrics[TIE_BREAK_METRIC[task.task]]
    return (main if math.isfinite(main) else -math.inf, -tie if math.isfinite(tie) else -math.inf)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (P,), ties sharing the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Each run of equal values gets the mean of the ranks it spans.
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (P,) for 0/1 ``labels`` (P,), ties counted half
    (Mann-Whitney U). NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def auc_difference_interval(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, weight_b: float = 1.0,
                            resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """AUC(a) - weight_b * AUC(b) on the same pairs, with a paired bootstrap interval.

    scores_a, scores_b, labels: (P,). Pairs are resampled with replacement and both models are
    scored on each resample, so what the two share (the same hard pairs) cancels. Returns
    (difference, low, high), the interval at ``level`` from the percentiles of ``resamples``
    resamples. ``weight_b`` = 0.98 asks "does a keep 98% of b's AUC?".
    """
    scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    labels = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    for r in range(resamples):
        index = rng.integers(0, len(labels), len(labels))
        differences[r] = roc_auc(scores_a[index], labels[index]) - weight_b * roc_auc(scores_b[index], labels[index])
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(differences, [tail, 100 - tail])
    return roc_auc(scores_a, labels) - weight_b * roc_auc(scores_b, labels), float(low), float(high)


def best_threshold_accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, threshold) of the best rule ``score >= threshold`` -> 1, thresholds taken at the
    observed scores (how the zero-training cosine baseline is scored in FINDINGS.md)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    ordered, hits = scores[order], labels[order]
    # Predicting the first i (highest) as positive: correct = positives among them + negatives after.
    true_positives = np.r_[0, np.cumsum(hits)]
    true_negatives = (~labels).sum() - np.r_[0, np.cumsum(~hits)]
    correct = true_positives + true_negatives
    # Only cut between distinct scores, so equal scores get the same prediction.
    valid = np.r_[True, ordered[1:] != ordered[:-1], True]
    best = int(np.argmax(np.where(valid, correct, -1)))
    threshold = float(ordered[best - 1]) if best > 0 else math.inf
    return float(correct[best] / len(labels)), threshold


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates, thresholds) of the rules ``score >= t`` for every
    distinct score t, highest first, starting from (0, 0) at t = +inf: the points of the ROC curve
    (scikit-learn's ``roc_curve`` with ``drop_intermediate=False``). Needs both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    ordered, hits = scores[order], labels[order]
    # A cut after the last of each run of equal scores: equal scores get the same prediction.
    last = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
    true_positives = np.cumsum(hits)[last]
    false_positives = (last + 1) - true_positives
    positives, negatives = hits.sum(), (~hits).sum()
    if not positives or not negatives:
        raise ValueError(f"an ROC curve needs both classes; got {positives} positives and {negatives} negatives")
    return (np.r_[0.0, false_positives / negatives], np.r_[0.0, true_positives / positives],
            np.r_[np.inf, ordered[last]])


def f1_at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """F1 of the rule ``score >= threshold`` -> positive: 2 TP / (2 TP + FP + FN); 0 when nothing
    is predicted or labeled positive."""
    predicted = np.asarray(scores, dtype=np.float64) >= threshold
    labels = np.asarray(labels).astype(bool)
    true_positives = int((predicted & labels).sum())
    wrong = int((predicted != labels).sum())
    return 2 * true_positives / (2 * true_positives + wrong) if true_positives else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def task_metrics(task: TeacherTask, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Dev metrics for logits (P, C) against targets (P,) as from ``TeacherTask.target``.

    binary:  auc, accuracy (at probability 0.5), log_loss, positive_rate (predicted), label_rate
    graded:  spearman, pearson (of the probability against the [0, 1] target), mse
    classes: accuracy, log_loss
    """
    targets = np.asarray(targets, dtype=np.float64)
    probs = soft_labels(logits).astype(np.float64)
    eps = 1e-7
    if task.task == "binary":
        predicted = probs >= 0.5
        p = np.clip(probs, eps, 1 - eps)
        return {"auc": roc_auc(probs, targets), "accuracy": float((predicted == (targets == 1)).mean()),
                "log_loss": float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean()),
                "positive_rate": float(predicted.mean()), "label_rate": float(targets.mean())}
    if task.task == "graded":
        return {"spearman": spearman(probs, targets), "pearson": pearson(probs, targets),
                "mse": float(((probs - targets) ** 2).mean())}
    classes = targets.astype(np.int64)
    chosen = np.clip(probs[np.arange(len(classes)), classes], eps, 1.0)
    return {"accuracy": float((probs.argmax(axis=1) == classes).mean()),
            "log_loss": float(-np.log(chosen).mean())}
