"""The usage-error family: a mistake the user can fix (a flag, an input, an output, a model, a
store), which a job reports in one line with exit status 2 (the CLI contract, "Exit codes and bad
nights"; the table of every exit status is ``pipeline/errors.py``).

Every class of the family derives from :class:`UsageError`; ``jobs.common.run_job`` catches that
one class. Anything else, a plain ``ValueError`` included, is a bug: its traceback is kept and the
run exits 1.

==========================================  ====================================================
class                                       what the user gets wrong
==========================================  ====================================================
:class:`UsageError`                         the base; also raised for a mistake of no kind below
:class:`FlagError`                          a flag's value, or a combination of flags (the
                                            message names the flag, the value and what is allowed)
:class:`ModelError`                         a model the job was given: a checkpoint, teacher or
                                            encoder that is missing, incomplete or configured in
                                            a way that cannot work (head options included)
``encoders.file_fingerprint.ModelChanged``  a model file that differs from what was recorded
``pipeline.preflight.PreflightError``       anything the pre-flight finds before the imports
``pipeline.readers.InputError``             an input file or its rows
``pipeline.store.StoreError``               a ``--store`` (``PartChanged``: a part changed mid-run)
``pipeline.files.FileSystemUnavailable``    a path whose scheme has no client here
``pipeline.output.OutputError``             an ``--output`` that cannot be written or replaced
==========================================  ====================================================

Why here, in ``encoders/``: the layers run ``jobs -> pipeline/beam | pipeline/spark -> pipeline ->
encoders -> heads`` and a module imports only its own layer and those below it, so the family's
base must sit in the lowest layer that raises it. ``encoders/`` is the lowest that can hold it:
importing anything in ``heads/`` runs the head registry (``heads/__init__.py``), which imports
torch, and the pre-flight and ``--help`` must stay free of torch. The heads, a plain-PyTorch
library, raise ``ValueError`` for a bad argument as torch does; ``encoders.checkpoint.build_head``,
the one place that builds a head from a user's configuration, turns that into a
:class:`ModelError`. ``pipeline/errors.py`` re-exports these classes: the layers above import them
from there, next to the exit statuses.

Standard library only (nothing at all, in fact): the command line, the pre-flight and the
engines' workers import it.
"""
from __future__ import annotations


class UsageError(ValueError):
    """Something the user can fix: a flag, an input, an output, a model or a store. One line, exit 2.

    A ValueError, so that a program calling pairscore's functions and catching ValueError for a
    bad argument keeps working."""


class FlagError(UsageError):
    """A flag's value, or a combination of flags, that is not allowed: the message names the flag,
    the value and what is allowed."""


class ModelError(UsageError):
    """A model given to a job (a student checkpoint, a teacher, an encoder) that is missing,
    incomplete, or configured in a way that cannot work; the message names it."""
