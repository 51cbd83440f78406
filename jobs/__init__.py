"""The jobs: one module per job, ``python -m jobs.<name>`` and ``pairscore <job>`` (jobs/cli.py).

Each module is a recipe that reads top to bottom: its flags (``main``, a click command), the job
record they build, and ``run``: flags -> configs -> library calls (``pipeline/beam``,
``pipeline``, ``encoders``) -> summary. A job module imports only click, the standard library
and ``jobs.common`` at import, so ``--help`` and a bad flag answer at once; its library imports
run inside its functions. No job imports another job.

Light on purpose (standard library only): every entry point imports this package first.
"""
import os
import sys
import time


# When this Python process started running pairscore: the start of every command-line run's
# "done in" and _SUMMARY.json's started_at (imports count: they are part of the wait). Taken when
# this package is imported, which every entry point does first, so the interpreter's own start-up
# (tens of milliseconds) is all that precedes it. Not the process's start in /proc: under a
# scheduler's `bash -c 'sleep 8 && pairscore ...'` bash execs Python in its own process, whose
# start was 8 s before Python's.
PROCESS_STARTED = time.time()

# The directory holding pairscore's packages (jobs/, pipeline/, encoders/, heads/).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_shielded = False


def shield_from_current_directory() -> None:
    """``python -m`` puts the current directory first on ``sys.path``, so a user's ``pipeline.py``
    (or ``heads.py`` ...) there would shadow pairscore's package of that name; the current
    directory moves to the end (once) unless it is where pairscore lives."""
    global _shielded
    if not _shielded and sys.path and os.path.abspath(sys.path[0] or os.curdir) != PACKAGE_ROOT:
        sys.path.append(sys.path.pop(0))
    _shielded = True


# `python -m jobs.<name>` imports this package while it locates the job (sys.argv[0] is "-m" until
# then): the current directory moves now, before the job module imports its declared settings from
# encoders/ and pipeline/. Any other import leaves sys.path alone.
if sys.argv[:1] == ["-m"]:
    shield_from_current_directory()
