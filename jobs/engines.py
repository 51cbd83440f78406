"""Which engine runs a job: ``--engine beam`` (default) or ``--engine spark`` with
``--spark-master`` and repeatable ``--spark-conf KEY=VALUE`` (the CLI contract, "Engines").

Light (click and the standard library only), like ``jobs/common.py``: the flags are checked before
Beam, Spark or torch is imported, so a wrong combination answers in one line at once (exit 2).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import click

ENGINES = ("beam", "spark")


def engine_options(command: Callable) -> Callable:
    """--engine, --spark-master, --spark-conf."""
    command = click.option(
        "--spark-conf", multiple=True, metavar="KEY=VALUE",
        help="Spark configuration for a session started here (--engine spark without spark-submit); "
             "repeat for more, e.g. --spark-conf spark.driver.memory=4g.")(command)
    command = click.option(
        "--spark-master", default=None, metavar="URL",
        help="Spark master for a session started here, e.g. local[2] (default local[*]). Under spark-submit "
             "or in a notebook the session given is used.")(command)
    return click.option(
        "--engine", type=click.Choice(ENGINES), default="beam", show_default=True,
        help="beam: Beam (any runner, through the pass-through flags); spark: PySpark (pip install "
             "pairscore[spark], Java 17). Both write the same output and reuse each other's stores.")(command)


def parse_spark_conf(values: Sequence[str]) -> dict[str, str]:
    """``("k=v", ...)`` -> {k: v}; UsageError naming a value without ``=``."""
    # Imported here: `python -m jobs.<name>` puts pairscore before the current directory first (jobs/common.py).
    from pipeline.errors import UsageError

    conf = {}
    for value in values:
        key, sep, setting = value.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--spark-conf {value!r} is not allowed: give KEY=VALUE, e.g. spark.driver.memory=4g")
        conf[key.strip()] = setting
    return conf


def check_engine(flags: Mapping[str, Any], beam_args: Sequence[str],
                 beam_only: Mapping[str, Any] = ()) -> None:
    """Refuse, in one line, flags that the chosen engine does not take: Beam's pass-through flags
    and ``beam_only`` flags (name -> value when given) with ``--engine spark``; ``--spark-*`` with
    ``--engine beam``."""
    from pipeline.errors import UsageError

    if flags.get("engine", "beam") == "beam":
        if flags.get("spark_master") or flags.get("spark_conf"):
            raise UsageError("--spark-master/--spark-conf are for --engine spark: add --engine spark or drop them")
        return
    if beam_args:
        raise UsageError(f"{beam_args[0]} is not allowed with --engine spark: Beam pipeline options go with "
                         f"--engine beam; Spark takes --spark-master and --spark-conf KEY=VALUE")
    for flag, value in dict(beam_only).items():
        if value:
            raise UsageError(f"{flag} is not allowed with --engine spark: it is supported with --engine beam only")
    parse_spark_conf(flags.get("spark_conf") or ())
