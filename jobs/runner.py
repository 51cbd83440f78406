"""The one runner every job goes through, and the shape a job has.

A job is a frozen dataclass of its flags (``ScorePairsJob``: built once from the command line, or
by a library caller) with four steps, which :func:`run` calls in order:

1. ``check()``: flag combinations that cannot work, named before anything is read.
2. ``plan(engine_args)``: inputs expanded and their columns checked, models pinned and loaded,
   every decision taken (the join, the schema); nothing is written. Returns the job's own plan
   object, whose ``job`` is the job as the run sees it (paths as workers read them, models pinned).
3. ``execute(plan, out)``: the engine's work (Beam, or Spark with ``--engine spark``), written
   into the staged output ``out``; returns the run's counts (:class:`Counted`, or what the job's
   ``summarise`` reads). Engine code lives here only.
4. ``summarise(plan, counted)``: a :class:`Report`: counts, dead letters, the balances the counts
   must satisfy, notes, metrics. ``finalise(plan, out, counted)`` (optional) then writes what may
   exist only once the counts reconcile (a store's manifest: a store with one is complete).

The runner owns everything between and around the steps: opening ``--output`` (checked, locked,
staged: pipeline/output/), the run guard (an output the run opened is aborted if anything
fails, Ctrl-C and SIGTERM included), the reconciliation (pipeline/accounting.py), the dead-letter
limit, the summary and the commit. :func:`run_job` is its command-line side: progress, logging,
and each failure reported as one line with its exit status (pipeline/errors.py), a bug with its
traceback.

Light on purpose (click and the standard library only at import): every job module imports it
before its flags have parsed.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import click

from jobs import PROCESS_STARTED
from jobs.options import ARGV_KEY  # ctx.meta: the arguments a job's command was given (JobCommand)

if TYPE_CHECKING:  # annotations only: the imports run inside the functions
    from pipeline.accounting import Balance
    from pipeline.output.commit import OutputDir
    from pipeline.summary import RunSummary



@dataclass
class Counted:
    """What a job's ``execute`` step returns: the engine's counts and dead letters by reason, as
    the summary names them, and notes on how it ran (the join, the engine)."""
    counts: dict[str, int]
    dead_letters: dict[str, int]
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What a job's ``summarise`` step hands the runner: the summary's counts and dead letters
    by reason, the :class:`~pipeline.accounting.Balance` equations the counts must satisfy (or
    lines already reconciled), the model fingerprints, notes and metrics. ``rows_read``: the rows
    ``--max-dead-letter-fraction`` counts against (None: the job checked its limit itself)."""
    counts: dict[str, int]
    dead_letters: dict[str, int]
    balances: Sequence[Balance | str]
    models: dict[str, str]
    rows_read: int | None = None
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What a job's ``plan`` step decided, before anything is written; each job's plan adds its own
    fields (the model, the files, the schema ...)."""
    job: Any                         # the job as the run sees it: paths as workers read them, models pinned
    provenance: dict[bytes, bytes]   # every table's metadata (pipeline/provenance.py)
    engine_args: list[str]           # Beam's pass-through options


class Job:
    """The steps of a job (see the module docstring); a job's dataclass of flags derives from it.
    ``name``: its summary's and progress line's name; ``beam_options``: whether it takes Beam's
    pass-through options (a job without Beam: False)."""
    name: ClassVar[str]
    beam_options: ClassVar[bool] = True
    output: str
    overwrite: bool
    max_dead_letter_fraction: float

    def check(self) -> None:
        """Flag combinations that cannot work (nothing read yet)."""

    def plan(self, engine_args: list[str]) -> Plan:
        raise NotImplementedError

    def reads(self) -> Mapping[str, Sequence[str | None]]:
        """Flag -> the paths this run reads, which ``--output`` may neither contain nor be inside."""
        raise NotImplementedError

    def execute(self, plan: Plan, out: OutputDir) -> Any:
        raise NotImplementedError

    def summarise(self, plan: Plan, counted: Any) -> Report:
        raise NotImplementedError

    def finalise(self, plan: Plan, out: OutputDir, counted: Any) -> None:
        """Files written once the counts reconcile and the dead-letter limit holds."""


def abort_output_on_failure(run: Callable) -> Callable:
    """``pipeline.output.guard.abort_output_on_failure`` around ``run``, imported only when it runs
    (a job module stays light at import): an output the run opened is aborted if it raises,
    Ctrl-C and SIGTERM included."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        from pipeline.output.guard import abort_output_on_failure as guarded
        return guarded(run)(*args, **kwargs)
    return wrapper


@abort_output_on_failure
def run(job: Job, engine_args: Sequence[str] = (), argv: Sequence[str] | None = None) -> RunSummary:
    """Run ``job``'s steps: check, plan, open the output, execute, summarise; then reconcile,
    refuse a run over its dead-letter limit (exit 3), finalise, and commit the summary.
    ``engine_args``: Beam's pass-through options; ``argv``: the arguments the summary records
    (default: this process's)."""
    from pipeline.accounting import reconcile
    from pipeline.dead_letters import check_dead_letter_limit
    from pipeline.output.commit import open_output
    from pipeline.summary import RunSummary

    job.check()
    if job.beam_options:
        from pipeline.beam.runner import validate_beam_args
        validate_beam_args(engine_args)    # Beam's pass-through options, before anything is read
    plan = job.plan(list(engine_args))
    job = plan.job
    out = open_output(job.output, job=job.name, overwrite=job.overwrite, reads=job.reads())
    started = run_started()
    counted = job.execute(plan, out)
    report = job.summarise(plan, counted)
    summary = RunSummary(
        job=job.name, arguments=list(argv if argv is not None else sys.argv[1:]), output=job.output,
        model_fingerprints=report.models, wall_seconds=round(time.monotonic() - started, 3), counts=report.counts,
        dead_letters=report.dead_letters, reconciliation=reconcile(report.balances), notes=report.notes,
        metrics=report.metrics)
    if report.rows_read is not None:
        check_dead_letter_limit(report.rows_read, sum(report.dead_letters.values()), report.dead_letters,
                                job.max_dead_letter_fraction, summary.reconciliation)
    job.finalise(plan, out, counted)
    out.commit(summary)
    return summary


def run_command(ctx: click.Context, job_type: type[Job], flags: dict[str, Any],
                before: Callable[[], None] = lambda: None) -> None:
    """A job's ``main``: its flags (click's names; ``quiet``, ``verbose`` and ``stall_timeout``
    are the runner's) -> ``before`` (checks before the pre-flight), the pre-flight
    (jobs/preflight.py), the job built from the rest, :func:`run`, and its summary printed, each
    failure one line with its exit status (:func:`run_job`)."""
    quiet, verbose = flags.pop("quiet"), flags.pop("verbose")
    stall_seconds = flags.pop("stall_timeout", 0.0)

    def go() -> str:
        before()
        preflight(ctx, job_type.name, flags)
        engine_args = beam_args_for_run(ctx.args, verbose) if job_type.beam_options else []
        return run(job_type(**flags), engine_args, ctx.meta[ARGV_KEY]).table()
    run_job(go, name=job_type.name, quiet=quiet, verbose=verbose, beam_args=ctx.args, stall_seconds=stall_seconds)


def preflight(ctx: click.Context, job: str, flags: dict) -> None:
    """The job's pre-flight checks (jobs/preflight.py: inputs, columns, output, model, Beam flags;
    the checks themselves are pipeline/preflight.py and pipeline/beam/option_names.py), before its
    library and so Beam, torch and transformers are imported."""
    from jobs import preflight as checks
    own = [o for p in ctx.command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    checks.check(job, flags, ctx.args, own)


# --------------------------------------------------------------------------- the run's clock

# Set by the entry points (jobs.common.main_module, jobs/cli.py) when this process is one command-line run, so that
# its wall time counts from the start of Python (jobs.PROCESS_STARTED); tests and library calls count from the
# job's start.
_from_process_start = False
_run_started: float | None = None


def count_from_process_start() -> None:
    global _from_process_start
    _from_process_start = True


def run_started() -> float:
    """``time.monotonic()`` at the start of this run: when a command line runs the job, when
    Python started running pairscore (``jobs.PROCESS_STARTED``: imports included, so a summary's
    "done in" is the time the user waited on pairscore); otherwise when ``run_job`` began, or
    now outside ``run_job``."""
    wall = _run_started if _run_started is not None else time.time()
    return time.monotonic() - (time.time() - wall)


# --------------------------------------------------------------------------- the command-line side

def beam_args_for_run(beam_args: Sequence[str], verbose: bool) -> list[str]:
    """The pass-through Beam options, plus quiet workers for a local runner unless --verbose or
    the user set the workers' log level: multi-process workers log at INFO to the terminal.
    Called once the job's flags have been checked (it imports Beam)."""
    from pipeline.beam.runner import LOCAL_RUNNER_NAMES

    args = list(beam_args)
    runner = None
    for i, arg in enumerate(args):
        if arg == "--runner" and i + 1 < len(args):
            runner = args[i + 1]
        elif arg.startswith("--runner="):
            runner = arg.split("=", 1)[1]
    local = runner is None or runner.lower() in LOCAL_RUNNER_NAMES
    if local and not verbose and not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=ERROR")
    return args


def _multi_process(beam_args: Sequence[str]) -> bool:
    joined = " ".join(beam_args).replace("=", " ")
    return "--direct_running_mode multi_processing" in joined


def run_job(job: Callable[[], str], *, name: str, quiet: bool = False, verbose: bool = False,
            beam_args: Sequence[str] = (), stall_seconds: float = 0.0) -> None:
    """Run ``job`` with progress reporting (unless ``quiet``) and logging set for this run, then
    print what it returns (the summary) below the progress; a mistake the user can fix (the
    UsageError family: a flag, input, output, model or store) becomes one clear line and exit
    status 2, any other exception (a plain ValueError too) keeps its traceback and exits 1.
    ``beam_args``: the pass-through Beam options; with multi-process workers their start-up log
    lines are filtered out. ``stall_seconds``: the stall watchdog's
    limit (pipeline/beam/watchdog.py; 0: none). Exit statuses: pipeline/errors.py (a stalled run,
    or one that refuses to commit, prints one line and exits 3)."""
    # Imported here, not above: `python -m jobs.<name>` first moves the current directory (which
    # may hold a user's own pipeline.py) behind pairscore's packages (main_module).
    from pipeline import progress, stderr
    from pipeline.beam import watchdog
    from pipeline.errors import EXIT_BUG, EXIT_REFUSED, EXIT_USAGE, refusal_in, usage_in
    from pipeline.output.guard import RunGuard

    global _run_started
    _run_started = PROCESS_STARTED if _from_process_start else time.time()
    stderr.configure_logging(verbose)
    stderr.quiet_one_line_error_logs(verbose)
    # This run's outputs and interrupts: the job's guarded ``run`` records them in it.
    guard = RunGuard()
    with contextlib.ExitStack() as stack:
        stack.enter_context(guard.current())
        # Multi-process workers write to this process's stderr: their progress records and
        # start-up logs go through a filter (the logs stay with --verbose).
        collect = _multi_process(beam_args)
        stream, drain = (stack.enter_context(stderr.through_worker_filter(drop_logs=not verbose,
                                                                          interrupted=guard.interrupted))
                         if collect else (None, lambda: None))
        progress.start(name, quiet=quiet, started=_run_started, stream=stream, collect_workers=collect)
        stop_watching = watchdog.watch(stall_seconds, progress.counted)
        try:
            report = job()
        except watchdog.Stalled as err:   # the output is already cleaned up (abort_output_on_failure)
            stop_watching()
            drain()            # this line must not wait in the worker filter: the exit below is abrupt
            progress.stop()
            click.echo(f"error: {err}", err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            # Beam's threads still wait for the missing worker and would keep the interpreter
            # from exiting: leave at once.
            os._exit(EXIT_REFUSED)
        except BaseException as err:
            progress.stop()
            # A flag, input, output, model or store the user can fix (the UsageError family,
            # encoders/errors.py), also when a worker raised it and Beam wrapped it: one line, exit 2.
            usage = usage_in(err)
            if usage is not None:
                click.echo(f"error: {usage}", err=True)
                sys.exit(EXIT_USAGE)
            # A run that refused to commit (nothing was committed; the previous output stays), also
            # when a worker refused and Beam wrapped its exception: one line, exit 3.
            refused = refusal_in(err)
            if refused is not None:
                click.echo(f"refused to commit: {refused}", file=stream if stream is not None else sys.stderr)
                sys.exit(EXIT_REFUSED)
            # Ctrl-C, SIGTERM and a full disk: one line (and 130 / 143 for the signals), no
            # traceback; anything else is a bug: its traceback, then a line saying so, exit 1.
            failure = guard.one_line_failure(err)
            if failure is None:
                if not isinstance(err, Exception):
                    raise                     # SystemExit and the like: not ours to report
                traceback.print_exception(err)
                click.echo(f"error: {name} failed unexpectedly (exit 1): a bug in pairscore or a library it uses, "
                           "not in your flags or inputs; please report it with the traceback above. Nothing was "
                           "committed.", err=True)
                sys.exit(EXIT_BUG)
            # Past the worker-log filter (which drops everything once a run is interrupted).
            click.echo(failure[0], file=stream if stream is not None else sys.stderr)
            sys.exit(failure[1])
        finally:
            stop_watching()
            drain()            # the workers' last records are counted before the final line
            progress.stop()
            _run_started = None
    click.echo(report)
