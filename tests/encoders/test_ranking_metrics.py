"""Ranking metrics and paired bootstrap intervals (encoders/ranking_metrics.py), against values
worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from encoders.ranking_metrics import pair_difference, query_difference, rank_queries
from encoders.metrics import roc_auc


def _ranking(rows):
    """rows: (query, score, label) -> the QueryRanking of them."""
    groups, scores, labels = zip(*rows)
    return rank_queries(np.array(scores), np.array(labels), np.array(groups))


def test_hand_computed_values_of_one_query():
    # Ranked: irrelevant, relevant (rank 2), irrelevant, relevant (rank 4).
    ranking = _ranking([("a", 0.9, 0), ("a", 0.8, 1), ("a", 0.7, 0), ("a", 0.1, 1)])
    assert ranking.values["mrr@10"].tolist() == [0.5]
    assert ranking.values["map"].tolist() == pytest.approx([(1 / 2 + 2 / 4) / 2])
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3)
    assert ranking.values["ndcg@10"].tolist() == pytest.approx([dcg / ideal])


def test_the_input_order_does_not_matter():
    rows = [("a", 0.9, 0), ("a", 0.8, 1), ("a", 0.7, 0), ("a", 0.1, 1), ("b", 0.3, 1), ("b", 0.2, 0)]
    forward, backward = _ranking(rows), _ranking(rows[::-1])
    for name in forward.values:
        assert forward.values[name].tolist() == pytest.approx(backward.values[name].tolist())


def test_queries_without_a_positive_or_without_a_negative_are_left_out():
    ranking = _ranking([("a", 0.9, 0), ("a", 0.8, 1),       # rankable: MRR 1/2
                        ("none", 0.9, 0), ("none", 0.1, 0),  # no relevant candidate
                        ("all", 0.9, 1), ("all", 0.1, 1),    # nothing irrelevant
                        ("c", 0.9, 1), ("c", 0.1, 0)])       # rankable: MRR 1
    assert ranking.total_queries == 4
    assert sorted(ranking.queries.tolist()) == ["a", "c"]
    assert ranking.means()["mrr@10"] == pytest.approx(0.75)


def test_ties_are_broken_against_the_relevant_candidates():
    # A constant score must not look like a perfect ranking, whatever the input order.
    for rows in ([("q", 0.5, 1), ("q", 0.5, 0), ("q", 0.5, 0)], [("q", 0.5, 0), ("q", 0.5, 0), ("q", 0.5, 1)]):
        ranking = _ranking(rows)
        assert ranking.values["mrr@10"].tolist() == pytest.approx([1 / 3])
        assert ranking.values["map"].tolist() == pytest.approx([1 / 3])
        assert ranking.values["ndcg@10"].tolist() == pytest.approx([1 / math.log2(4)])


def test_mrr_and_ndcg_stop_at_rank_10_but_map_does_not():
    rows = [("q", 1.0 - i / 100, 0) for i in range(11)] + [("q", 0.0, 1)]   # the relevant one at rank 12
    ranking = _ranking(rows)
    assert ranking.values["mrr@10"].tolist() == [0.0]
    assert ranking.values["ndcg@10"].tolist() == [0.0]
    assert ranking.values["map"].tolist() == pytest.approx([1 / 12])


def test_graded_gains_in_ndcg():
    # Gains 2, 0, 1 in ranked order; ideal 2, 1, 0.
    ranking = _ranking([("q", 0.9, 2), ("q", 0.5, 0), ("q", 0.1, 1)])
    assert ranking.values["ndcg@10"].tolist() == pytest.approx([(2 + 1 / 2) / (2 + 1 / math.log2(3))])


def test_average_precision_matches_scikit_learn_without_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(40), 9)
    labels = (rng.random(len(groups)) < 0.3).astype(int)
    scores = rng.random(len(groups))
    ranking = rank_queries(scores, labels, groups)
    expected = [metrics.average_precision_score(labels[groups == q], scores[groups == q]) for q in ranking.queries]
    assert ranking.values["map"].tolist() == pytest.approx(expected)


def test_nan_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        rank_queries(np.array([0.1, np.nan]), np.array([1, 0]), np.array([1, 1]))


def test_query_bootstrap_of_equal_and_of_clearly_different_models():
    same = query_difference(np.array([0.5, 1.0, 0.0]), np.array([0.5, 1.0, 0.0]))
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert same.verdict() == "within noise" and same.unit == "queries" and same.count == 3
    better = query_difference(np.full(50, 1.0), np.full(50, 0.5))
    assert (better.difference, better.low, better.high) == pytest.approx((0.5, 0.5, 0.5))
    assert better.verdict() == "a better"


def test_query_bootstrap_interval_contains_the_difference_and_narrows_with_more_queries():
    rng = np.random.default_rng(0)
    widths = []
    for count in (50, 800):
        a, b = rng.random(count), rng.random(count)
        result = query_difference(a, b)
        assert result.low <= result.difference <= result.high
        widths.append(result.high - result.low)
    assert widths[1] < widths[0] / 2


def test_pair_bootstrap_of_auc():
    rng = np.random.default_rng(1)
    labels = (rng.random(400) < 0.4).astype(float)
    good = labels + rng.normal(0, 0.5, 400)
    noise = rng.random(400)
    result = pair_difference(roc_auc, good, noise, labels, resamples=300)
    assert result.difference == pytest.approx(roc_auc(good, labels) - roc_auc(noise, labels))
    assert result.low > 0 and result.unit == "pairs" and result.count == 400
