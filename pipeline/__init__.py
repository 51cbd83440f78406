"""Formats, rows and rules of pairscore, below Beam: readers, the text and pair rules, training
data sets, the embedding store and its codec, the scoring core, the output commit protocol and
its writers, provenance, summaries and progress. Beam itself only as FileSystems; every Beam
transform and DoFn lives in ``pipeline/beam/``.

Imports flow one way: ``jobs -> pipeline/beam -> pipeline -> encoders -> heads``
(``tests/test_layers.py`` enforces it).
"""
