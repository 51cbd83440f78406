"""What every job's command line shares: click settings, the options and choices every job has,
``python -m jobs.<name>``, and running a job with its progress and logging set up and its errors
reported.

Light on purpose (click and the standard library only): each job module imports it, and only it,
before its flags have parsed; the job's library imports come after, inside its functions.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import time
import traceback
from typing import Any, Callable, Sequence

import click

# The choices the flags offer: defined once, in the library's standard-library-only modules.
from encoders.choices import DEVICES, STUDENT_LOSSES, TASKS, TEACHER_LOSSES  # noqa: F401
from encoders.choices import TRAINABLE_HEADS as STUDENT_HEADS  # noqa: F401
from encoders import settings as ranges
from encoders.config import DEFAULT_ENCODER  # noqa: F401
from jobs import PACKAGE_ROOT, PROCESS_STARTED, shield_from_current_directory  # noqa: F401
from jobs.options import (ARGV_KEY, BEAM_JOB_CONTEXT, PLAIN_JOB_CONTEXT, FlagValueError, JobCommand,  # noqa: F401
                          Number, option_of, options)
from pipeline.choices import DTYPES, FORMATS  # noqa: F401
from pipeline.settings import LITERAL_OUTPUT, Engine, Output, Run


# How paths are read (the CLI contract, "paths are literal"), said in every job's --help.
PATHS_NOTE = ("Paths: an input path that exists is read as it is, even with *, ? or [ in its name; otherwise "
              "*, ? and [...] are glob patterns (** crosses directories). --output is always a literal path.")
BEAM_EPILOG = ("Any other option is passed to Beam as a pipeline option, e.g. --runner, "
               "--direct_num_workers=2 --direct_running_mode=multi_processing, or Dataflow flags. "
               "Default runner: Beam's in-process runner (DirectRunner without the Prism download). " + PATHS_NOTE)



# --------------------------------------------------------------------------- shared options
# The options the engine jobs share, generated from their declarations (pipeline/settings.py).

def output_option(help: str, metavar: str = "DIR"):
    return option_of(Output, "output", help=help + LITERAL_OUTPUT, metavar=metavar)


def device_option(help: str | None = None):
    return option_of(Run, "device", **({"help": help} if help else {}))


overwrite_option = option_of(Output, "overwrite")
# --max-dead-letter-fraction: the share of rows a run may dead-letter and still commit (pipeline.dead_letters).
dead_letter_option = option_of(Output, "max_dead_letter_fraction")
# --torch-threads: torch threads per worker process, over the automatic sizing (encoders/threads.py).
torch_threads_option = option_of(Engine, "torch_threads")
# --stall-timeout: how long a Beam job waits for workers that never start (pipeline/beam/watchdog.py).
stall_option = option_of(Engine, "stall_timeout")
# The numbers several jobs take, each refused outside its range while the flags parse.
POSITIVE_INT = Number(ranges.POSITIVE_INT)
HEAD_QUANTIZE = ("int8",)


def head_speed_options(command: Callable) -> Callable:
    """--compile and --head-quantize: opt-in speed-ups of the scoring head (pipeline/scoring_core.HeadScorer)."""
    command = click.option("--head-quantize", type=click.Choice(HEAD_QUANTIZE), default=None,
                           help="Run the head's linear layers in int8 (dynamic quantization; CPU only). "
                                "Scores change by rounding: docs/benchmarks.md gives speed and differences.")(command)
    return click.option("--compile", is_flag=True,
                        help="Run the head through torch.compile (compiled once per worker process; "
                             "pays off on long runs).")(command)


def run_options(command: Callable) -> Callable:
    """--quiet and --verbose: how much a run says while it runs."""
    return option_of(Run, "quiet")(option_of(Run, "verbose")(command))


def split_list(ctx, param, value: str | None) -> tuple[str, ...]:
    """``a, b,c`` -> ("a", "b", "c")."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


# --------------------------------------------------------------------------- entry points

def main_module(name: str) -> None:
    """``python -m jobs.<name>``: run the job's command, then exit.

    The current directory moves behind pairscore's packages (:func:`shield_from_current_directory`,
    already done when this module was imported under ``python -m``). The job module (light: its own
    imports run inside its functions) is then imported by its name, so that what Beam pickles
    refers to ``jobs.<name>``, not ``__main__``.
    """
    shield_from_current_directory()
    quiet_idle_threads()
    shield_beam_workers()
    count_from_process_start()
    importlib.import_module(f"jobs.{name}").main.main(prog_name=f"python -m jobs.{name}")


def quiet_idle_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning: ``OMP_WAIT_POLICY=PASSIVE`` unless the user
    set a policy. OpenMP reads it once, when torch loads it, so this runs at the command-line entry
    before anything imports torch; Beam's worker processes inherit it. With the default (active)
    policy each thread spins for a while after every parallel region, which costs little on an
    idle machine and a great deal where processes share cores (a teacher run crawled at 4 pairs/s
    until this was set: docs/teacher.md)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def shield_beam_workers() -> None:
    """Beam's multi-process workers start as ``python -m ...`` in the current directory, which
    would put a user's ``pipeline.py`` there ahead of pairscore's when they load the pipeline's
    functions. PYTHONSAFEPATH (Python 3.11+) keeps the current directory off their path; a
    checkout that is not installed goes on their PYTHONPATH instead (an installed one is found
    in site-packages as usual)."""
    import site

    os.environ["PYTHONSAFEPATH"] = "1"
    installed = {os.path.abspath(p) for p in site.getsitepackages() + [site.getusersitepackages()]}
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if PACKAGE_ROOT not in installed and PACKAGE_ROOT not in (os.path.abspath(p) for p in paths):
        os.environ["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + paths)


def preflight(ctx: click.Context, job: str, flags: dict) -> None:
    """The job's pre-flight checks (jobs/preflight.py: inputs, columns, output, model, Beam flags;
    the checks themselves are pipeline/preflight.py and pipeline/beam/option_names.py), before its
    library and so Beam, torch and transformers are imported."""
    from jobs import preflight as checks
    own = [o for p in ctx.command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    checks.check(job, flags, ctx.args, own)


def abort_output_on_failure(run: Callable) -> Callable:
    """``pipeline.output.guard.abort_output_on_failure`` around a job's ``run``, imported only when the
    job runs (a job module stays light at import): an output the run opened is aborted if it
    raises, Ctrl-C and SIGTERM included."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        from pipeline.output.guard import abort_output_on_failure as guarded
        return guarded(run)(*args, **kwargs)
    return wrapper


def refuse_non_finite(model) -> None:
    """A trained model with a NaN or infinite weight (a learning rate too high, a loss that
    overflowed) is not committed: RefusedToCommit (exit 3), the previous output stays."""
    from encoders.finite import describe_non_finite, non_finite_weights
    from pipeline.errors import RefusedToCommit

    bad = non_finite_weights(model)
    if bad:
        raise RefusedToCommit(f"training produced weights that are not finite numbers (NaN or infinity) in "
                              f"{describe_non_finite(bad)}; nothing was committed (try a lower --lr or "
                              "--max-grad-norm)")


# --------------------------------------------------------------------------- running a job

# Set by the entry points (main_module, jobs/cli.py) when this process is one command-line run, so that its
# wall time counts from the start of Python (jobs.PROCESS_STARTED); tests and library calls count from the job's start.
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


def beam_args_for_run(beam_args: Sequence[str], verbose: bool) -> list[str]:
    """The pass-through Beam options, plus quiet workers for a local runner unless --verbose or
    the user set the workers' log level: multi-process workers log at INFO to the terminal.
    Called once the job's modules are imported (Beam among them)."""
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


# --------------------------------------------------------------------------- a job's command

def job_command(name: str, settings: type, report: Callable[[Any, list[str]], str], help: str,
                extra: Callable | None = None) -> click.Command:
    """A job's command: ``pairscore <name>`` with an option per declared field of ``settings``
    (``extra``: a decorator adding undeclared ones). Running it builds ``settings`` from the flags
    and, under the runner (``jobs.common.run_job``: progress, logging, one-line errors and exit
    statuses), runs the pre-flight, then ``report(job, argv)``, and prints the summary it returns."""
    def main(ctx: click.Context, **flags: Any) -> None:
        job = settings(**flags)
        run_job(functools.partial(_checked, ctx, job, report), name=ctx.command.name.replace("-", "_"),
                quiet=job.quiet, verbose=job.verbose)

    main.__doc__ = help
    command = options(settings)((extra or (lambda f: f))(click.pass_context(main)))
    return click.command(name, cls=JobCommand, context_settings=PLAIN_JOB_CONTEXT, help=help)(command)


def _checked(ctx: click.Context, job: Any, report: Callable[[Any, list[str]], str]) -> str:
    """The pre-flight (before the job's heavy imports), then the job's report."""
    preflight(ctx, ctx.command.name.replace("-", "_"), vars(job))
    return report(job, ctx.meta[ARGV_KEY])
