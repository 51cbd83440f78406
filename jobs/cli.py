"""The ``pairscore`` console script: one group, a subcommand per job.

Each job module (``jobs/<name>.py``) defines its own command line, ``main``, and is light at
import (click and ``jobs.common``; its library imports run inside its functions), so
``pairscore --help``, a bad argument and a bad choice answer at once. This module only gathers
the commands; no job imports it.
"""
from __future__ import annotations

import click

from jobs import build_candidates, encode_texts, evaluate, label_pairs, score_pairs, train_student, train_teacher
from jobs.common import (DEFAULT_ENCODER, DTYPES, FORMATS, STUDENT_HEADS, STUDENT_LOSSES, TASKS, TEACHER_LOSSES,
                         count_from_process_start, quiet_idle_threads, shield_beam_workers)

JOINS = score_pairs.JOINS
# The choices the flags offer (defined once, in jobs/common.py and jobs/score_pairs.py), here too.
__all__ = ["pairscore", "console_main", "COMMANDS", "JOB_MODULES", "DEFAULT_ENCODER", "DTYPES", "FORMATS",
           "JOINS", "STUDENT_HEADS", "STUDENT_LOSSES", "TASKS", "TEACHER_LOSSES"]


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from pipeline.provenance import version
        click.echo(f"pairscore {version()}")
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print pairscore's version and exit.")
def pairscore() -> None:
    """pairscore: score very large sets of text pairs with DiPair-style distilled students.

    Each command is also `python -m jobs.<name>` (e.g. `python -m jobs.score_pairs`); `pairscore
    <command> --help` explains its flags.
    """


def console_main() -> None:
    """The ``pairscore`` console script (setup.py entry point)."""
    quiet_idle_threads()
    shield_beam_workers()
    count_from_process_start()
    pairscore(prog_name="pairscore")


# The jobs, in the order of a project: stage one, stage two, labeling, mining, training, evaluation.
JOB_MODULES = (encode_texts, score_pairs, label_pairs, build_candidates, train_teacher, train_student, evaluate)
for _module in JOB_MODULES:
    pairscore.add_command(_module.main)
# python -m jobs.<name> -> its command.
COMMANDS = {module.__name__.rsplit(".", 1)[1]: module.main for module in JOB_MODULES}


if __name__ == "__main__":  # python -m jobs.cli <command> ...: the console script without installing
    console_main()
