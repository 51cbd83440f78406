"""Ranking metrics over queries, and paired bootstrap intervals of the difference of two models.

Plain numpy (no Beam, no torch), so the training loop and ``jobs.evaluate`` use the same math.

A *query* is every candidate pair sharing a group value (e.g. WikiQA's ``qid``: one question and
its candidate answer sentences). A query is *rankable* when it has at least one relevant candidate
(label > 0) and at least one irrelevant one (label <= 0): the others say nothing about ranking, and
every metric here is the mean over the rankable queries only (the usual WikiQA / TrecQA protocol).

Ties are broken *against* the relevant candidates: among candidates with equal scores the
irrelevant ones are ranked first. A model that cannot tell candidates apart (a constant score)
therefore gets no credit for it, and the result does not depend on the input order.

* MRR@k: 1 / rank of the first relevant candidate, 0 when it is below rank k.
* AP (MAP over queries): the mean, over the relevant candidates of the whole ranking, of the
  precision at each one's rank.
* nDCG@k: sum over ranks r <= k of gain_r / log2(r + 1), divided by the same sum for the ideal
  order; the gain is the label itself (linear gains: 0/1 labels give the usual binary nDCG).

Shapes: P pairs (candidates), Q rankable queries, R bootstrap resamples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from encoders.choices import RANKING_METRICS  # noqa: F401  (re-exported)

CUTOFF = 10


@dataclass(frozen=True)
class QueryRanking:
    """Per-query values of the ranking metrics over the rankable queries (Q each), and how many
    queries there were in all."""
    queries: np.ndarray            # (Q,) the group value of each rankable query
    values: dict[str, np.ndarray]  # metric name -> (Q,) float64
    total_queries: int

    def means(self) -> dict[str, float]:
        """metric -> mean over the rankable queries (NaN when there are none)."""
        return {name: float(v.mean()) if len(v) else float("nan") for name, v in self.values.items()}


def query_index(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P,) group values (any hashable numpy-able type) -> (unique values (G,), (P,) int index into them)."""
    unique, inverse = np.unique(np.asarray(groups), return_inverse=True)
    return unique, inverse.reshape(-1)


def rank_queries(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, cutoff: int = CUTOFF) -> QueryRanking:
    """MRR@cutoff, AP and nDCG@cutoff of every rankable query.

    scores (P,) higher = more relevant; labels (P,) relevance (0/1, or graded >= 0); groups (P,)
    the query of each pair. Metric names are ``mrr@{cutoff}``, ``map``, ``ndcg@{cutoff}``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if not (len(scores) == len(labels) == len(groups)):
        raise ValueError(f"scores, labels and groups differ in length: {len(scores)}, {len(labels)}, {len(groups)}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN: a ranking needs a number for every candidate")
    unique, query = query_index(groups)
    # One sort for every query: by query, then score descending, then label ascending (ties
    # against the relevant candidates).
    order = np.lexsort((labels, -scores, query))
    query, relevance = query[order], labels[order]
    starts = np.r_[0, np.flatnonzero(np.diff(query)) + 1]
    ends = np.r_[starts[1:], len(query)]
    names = (f"mrr@{cutoff}", "map", f"ndcg@{cutoff}")
    values: dict[str, list[float]] = {name: [] for name in names}
    kept = []
    discounts = 1.0 / np.log2(np.arange(2, cutoff + 2))       # (cutoff,) 1 / log2(r + 1), r = 1..cutoff
    for start, end in zip(starts, ends):
        gains = relevance[start:end]                          # this query's labels in ranked order
        relevant = gains > 0
        if relevant.all() or not relevant.any():
            continue
        kept.append(unique[query[start]])
        ranks = np.flatnonzero(relevant) + 1                  # 1-based ranks of the relevant candidates
        values[names[0]].append(1.0 / ranks[0] if ranks[0] <= cutoff else 0.0)
        values[names[1]].append(float((np.arange(1, len(ranks) + 1) / ranks).mean()))
        top = gains[:cutoff]
        ideal = np.sort(gains)[::-1][:cutoff]
        values[names[2]].append(float((top * discounts[:len(top)]).sum() / (ideal * discounts[:len(ideal)]).sum()))
    return QueryRanking(np.asarray(kept), {name: np.asarray(v, dtype=np.float64) for name, v in values.items()},
                        len(unique))


@dataclass(frozen=True)
class Difference:
    """metric(a) - metric(b) on the same data, and the paired bootstrap interval of it."""
    difference: float
    low: float
    high: float
    level: float
    resamples: int
    unit: str          # what was resampled: "queries" or "pairs"
    count: int         # how many of them

    def verdict(self) -> str:
        """``a better``, ``b better`` (the interval excludes 0) or ``within noise``."""
        return "a better" if self.low > 0 else ("b better" if self.high < 0 else "within noise")

    def to_dict(self) -> dict:
        return {"difference": self.difference, "low": self.low, "high": self.high, "level": self.level,
                "resamples": self.resamples, "unit": self.unit, "count": self.count, "verdict": self.verdict()}


def _interval(differences: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(differences, [tail, 100 - tail])
    return float(low), float(high)


def query_difference(values_a: np.ndarray, values_b: np.ndarray, resamples: int = 2000, level: float = 0.95,
                     seed: int = 0) -> Difference:
    """Mean(a) - mean(b) of per-query values (Q,) of two models on the same queries, with a paired
    bootstrap over queries: each resample draws Q queries with replacement and takes the difference
    of the two means on them (what the models share, such as the hard queries, cancels)."""
    values_a, values_b = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    if values_a.shape != values_b.shape:
        raise ValueError(f"per-query values differ in shape: {values_a.shape} vs {values_b.shape} "
                         "(the two models must be ranked on the same queries)")
    if not len(values_a):
        nan = float("nan")
        return Difference(nan, nan, nan, level, resamples, "queries", 0)
    delta = values_a - values_b
    rng = np.random.default_rng(seed)
    # Resample in blocks so that memory stays small for large Q.
    means = np.concatenate([delta[rng.integers(0, len(delta), (min(256, resamples - s), len(delta)))].mean(axis=1)
                            for s in range(0, resamples, 256)])
    low, high = _interval(means, level)
    return Difference(float(delta.mean()), low, high, level, resamples, "queries", len(delta))


def pair_difference(metric: Callable[[np.ndarray, np.ndarray], float], scores_a: np.ndarray, scores_b: np.ndarray,
                    targets: np.ndarray, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Difference:
    """metric(a, targets) - metric(b, targets) for a pair-level metric (AUC, Pearson, Spearman), with
    a paired bootstrap over pairs (both models scored on the same resampled pairs).
    scores_a, scores_b, targets: (P,)."""
    scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    targets = np.asarray(targets, np.float64)
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    for r in range(resamples):
        index = rng.integers(0, len(targets), len(targets))
        differences[r] = metric(scores_a[index], targets[index]) - metric(scores_b[index], targets[index])
    low, high = _interval(differences, level)
    return Difference(float(metric(scores_a, targets) - metric(scores_b, targets)), low, high, level, resamples,
                      "pairs", len(targets))
