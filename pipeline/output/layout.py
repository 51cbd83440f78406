"""What an output directory holds, by name, and the error for a bad ``--output``.

Standard library only: the pre-flight (pipeline/preflight.py) checks an output with these names
before Beam is imported. Every name beside a table starts with ``_``, so the table readers skip it.
"""
from __future__ import annotations

from pipeline.errors import UsageError

DEAD_LETTER_DIR = "_dead_letter"
SUMMARY_FILE = "_SUMMARY.json"
SUCCESS_FILE = "_SUCCESS"
LOCK_FILE = "_LOCK"
STAGING_PREFIX = "_temporary-"
# Inside the staging directory: a checkpoint (train_student, train_teacher) that is committed to OUT/ itself.
STAGED_CHECKPOINT = "_checkpoint"
# The first file of every staging directory: proof that pairscore made it (a ``_temporary-*``
# directory without it is not pairscore's, and is left alone).
STAGING_MARKER = "_PAIRSCORE_STAGING.json"
# Inside the staging directory: the commit's moves, written before the first one, so that a run
# killed half-way through its commit can be rolled back by the next one.
COMMIT_PLAN = "_COMMIT.json"
# Inside the staging directory: where the commit moves the earlier output's files.
REPLACED_DIR = "_REPLACED"


class OutputError(UsageError):
    """A bad or busy ``--output``: one line, exit status 2 (jobs.common.run_job)."""


def is_remote(path: str) -> bool:
    """Whether ``path`` is on an object store (``gs://``, ``s3://``, ...): Beam's FileSystems then,
    the operating system's literal calls otherwise."""
    return "://" in path
