"""Where jobs write, and how a run's output is committed (THE one place for both).

Layout (the CLI contract, "one table per directory")
----------------------------------------------------
Every directory holding Parquet part files holds exactly one table, so ``pandas.read_parquet(DIR)``,
``pyarrow.dataset.dataset(DIR)``, DuckDB ``read_parquet('DIR/*.parquet')`` and Spark read it by
name. Everything else beside a table starts with ``_`` (those readers skip it): ``_SUMMARY.json``,
``_MANIFEST.json`` (stores, distillation sets), ``_SUCCESS``, ``_dead_letter/``, and while a run
is going ``_LOCK`` and ``_temporary-<run id>/``. One-table jobs write their part files directly in
``OUT/``; ``score_pairs`` writes ``OUT/scores/``, ``OUT/store/left/``, ``OUT/store/right/``.

Commit protocol (every job, through ``commit.open_output`` and ``commit.OutputDir.commit``)
-------------------------------------------------------------------------------------
Paths are literal: ``--output`` never acts as a pattern (an output path holding ``*``, ``?`` or
``[`` is refused, since Beam's writers would match it), and every listing, delete and existence
check of a path pairscore was given is literal (the OS calls locally, escaped patterns through
Beam's FileSystems elsewhere, pipeline/paths.py).

1. Before anything is touched, ``--output`` is checked: not a file, not inside nor containing an
   input, ``--store``, ``--previous``, ``--model`` or ``--teacher`` path (after resolving
   symlinks: each match of a glob, and every link inside a directory), not locked by a live run,
   and empty — or, with ``--overwrite``, holding only an earlier pairscore output (the files its
   ``_SUMMARY.json`` lists) and the leftovers of interrupted pairscore runs (staging directories
   holding pairscore's ``_PAIRSCORE_STAGING.json``, lock copies of dead holders). A ``_SUCCESS``,
   a manifest or a dead lock proves nothing; anything else is named and left alone (exit 2).
2. ``OUT/_LOCK`` is created atomically (``O_CREAT|O_EXCL``) holding pid, host, start time and job.
   A second run on the same output fails naming the holder; the lock of a dead process on this
   host is named and taken over. Object stores (``gs://``, ``s3://``) have no exclusive create
   through Beam's FileSystems: there the lock is best effort (check, write, read back).
3. Leftovers of interrupted runs are cleaned up under the lock: a commit that was cut short is
   rolled back from its plan (the earlier output comes back as it was), other staging removed.
   The earlier output itself is not touched: it stays complete and readable until the commit.
4. The run writes everything under ``OUT/_temporary-<run id>/`` (the final layout, mirrored),
   whose first file is the staging marker.
5. Driver side, after ``wait_until_finish()`` and after the counts reconcile, the job writes its
   manifests (into the staging directory) and calls :meth:`OutputDir.commit`: the summary and an
   empty ``_SUCCESS`` are written into staging, then the plan of every move (``_COMMIT.json``),
   then the earlier output's files are moved aside (``_SUCCESS`` first) and the new data files,
   manifests, ``_SUMMARY.json`` and ``_SUCCESS`` moved into place, each by ``FileSystems.rename``
   (an atomic rename locally; copy + delete on object stores). The run has committed when its
   ``_SUCCESS`` is in place; then the staging directory (with the earlier output) and the lock
   go. Jobs therefore always wait for their pipeline: a runner launched without waiting would
   never reach the commit and leave no ``_SUCCESS``.
6. A run that fails or is interrupted (an exception, Ctrl-C, SIGTERM) rolls back whatever part
   of its commit happened, judging each move from the files themselves, so ``OUT`` is the earlier
   output again (``guard.abort_output_on_failure``); a commit whose ``_SUCCESS`` is in place is kept
   whole. A killed run leaves only its marked staging directory and a stale ``_LOCK``, which the
   next ``--overwrite`` run takes over, rolling back the commit if it had begun.

Checkpoints are saved the same way (``encoders.remote.atomic_directory``): written to a temporary
directory beside the target and renamed into place, so a crash never leaves a half-written model.

The modules, each importing only those above it in this list
-------------------------------------------------------------
- ``layout``: the names pairscore writes in ``OUT`` and :class:`OutputError` (standard library
  only: the pre-flight spells its checks with them).
- ``paths``: literal paths (steps 1 and the listings, deletes and moves of the others) and the
  overlap guard.
- ``lock``: ``OUT/_LOCK`` (step 2): who holds it, taking it, giving it back. Beam only inside the
  functions that touch storage: the pre-flight reads locks too.
- ``guard``: the run guard (step 6): the :class:`RunGuard` a job's runner holds (the run's open
  outputs, the signal that is ending it, how each output ended), Ctrl-C / SIGTERM, Beam's worker
  processes, and the one line for an interrupt or a full disk. Standard library only.
- ``recovery``: what ``OUT`` holds (step 1's survey) and the clean-up after interrupted runs (3).
- ``commit``: :class:`OutputDir`, ``open_output`` and the commit itself (steps 4 and 5).

This file imports nothing: ``from pipeline.output.commit import open_output`` and the like.
"""
