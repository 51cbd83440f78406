"""Stage two's plan, the same for Beam and Spark (pipeline/score_plan.py)."""
from __future__ import annotations

from pipeline.score_plan import choose_join, score_counts, shuffle_buckets


def test_auto_broadcasts_stores_that_fit_the_limit_and_shuffles_larger_ones():
    assert choose_join("auto", 1, 2 ** 20)[0] == "broadcast"
    join, why = choose_join("auto", 1, 2 ** 20 + 1)
    assert join == "shuffle" and "--broadcast-limit-mb 1" in why
    assert choose_join("broadcast", 1, 2 ** 40) == ("broadcast", "--join broadcast")   # the user's choice stands


def test_buckets_grow_with_the_stores_and_the_pairs_and_never_drop_below_the_minimum():
    assert shuffle_buckets(0, 0) == 64
    assert shuffle_buckets(100 * (256 << 20), 0) == 100           # about 256 MiB of store rows a bucket
    assert shuffle_buckets(0, 300 * (2 << 20)) == 300             # about 2M pairs a bucket
    assert shuffle_buckets(0, 0, minimum=8) == 8                  # Spark: twice its task slots


def test_both_engines_counts_become_the_same_summary_counts():
    """Text tables' dead letters are named by side; texts counted per side; id-mode rows only in id mode."""
    sides = {"left": ({"read": 5, "kept": 3, "duplicate": 1}, {"empty_text": 1}, {"texts_encoded": 3}),
             "right": ({}, {}, {"texts_reused": 2})}
    counts, dead = score_counts(True, {"read": 10, "scored": 9}, {"bad_id": 1}, 9, sides)
    assert counts["pairs_dead_lettered"] == 1 and counts["rows_written"] == 9
    assert counts["left_text_rows_dead_lettered"] == 1 and counts["left_text_rows_unused"] == 0
    assert counts["left_texts_encoded"] == 3 and counts["right_texts_reused"] == 2
    assert dead == {"bad_id": 1, "left_texts:empty_text": 1}
    counts, _ = score_counts(False, {"read": 10, "scored": 10}, {}, 10, sides)
    assert not any("text_rows" in name for name in counts)
