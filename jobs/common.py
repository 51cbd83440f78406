"""What every job's command line shares: click settings, the options and choices every job has,
and ``python -m jobs.<name>``. Running a job (its steps, the output, the errors) is
jobs/runner.py's.

Light on purpose (click and the standard library only): each job module imports it, and only it,
before its flags have parsed; the job's library imports come after, inside its functions.
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Any, Callable

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
# The runner's names that the job modules import from here too (jobs/runner.py defines them).
from jobs.runner import (abort_output_on_failure, count_from_process_start, preflight, run_job,  # noqa: F401
                         run_started)


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
