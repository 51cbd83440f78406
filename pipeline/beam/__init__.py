"""Every Beam transform and DoFn of pairscore, its counters, and the student's model handler.

The layer above ``pipeline/`` (formats, rows, the store, the scoring core, the output commit,
none of which uses Beam beyond its FileSystems) and below ``jobs/``. This file imports nothing.
"""
