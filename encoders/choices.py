"""What the encoders' settings allow, standard library only: the command line offers these
before torch and transformers are imported, and the library checks against the same tuples.

Each is defined here once; the modules that use them (``encoders.device``, ``encoders.teacher``,
``encoders.metrics``, ``encoders.ranking_metrics``, ``encoders.distill``) import them.
"""
from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")
TASKS = ("binary", "graded", "classes")
# A teacher's losses per task; the first of each is its default. DiPair's equation (1), BCE on
# sigmoid(logit), serves binary and graded targets alike; MSE on the probability is the usual
# alternative for graded scores.
TEACHER_LOSSES_BY_TASK = {"binary": ("bce",), "graded": ("bce", "mse"), "classes": ("ce",)}
TEACHER_LOSSES = tuple(sorted({loss for losses in TEACHER_LOSSES_BY_TASK.values() for loss in losses}))
# A student's losses: cross-entropy on the soft labels (DiPair eq. 1) or squared error on the logits.
STUDENT_LOSSES = ("ce", "mse")
# The dev metric that picks the best epoch, per task (higher is better).
MAIN_METRIC = {"binary": "auc", "graded": "spearman", "classes": "accuracy"}
# Metrics over each query's ranked candidates (encoders/ranking_metrics.py).
RANKING_METRICS = ("mrr@10", "map", "ndcg@10")
# The heads a student can be trained with: every head of the registry (heads/__init__.py, which
# imports torch, so the names are spelled here for the command line) but pooled-cos, which has no
# parameters (the zero-training baseline, ``--model baseline`` in jobs.evaluate). A test checks
# the two lists against each other.
TRAINABLE_HEADS = ("dipair", "dipair-ffnn", "li", "de-ffnn", "de-cos")
# What may pick a student's best epoch (--select-metric).
SELECT_METRICS = ("auc", "spearman", "accuracy", *RANKING_METRICS)
