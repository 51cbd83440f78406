"""What every job shares: click settings, error reporting, the summary at the end."""
from __future__ import annotations

import sys
from typing import Callable

import click

from pipeline.readers import InputError

# Options a job does not declare are collected and handed to Beam as pipeline options.
JOB_CONTEXT = {"ignore_unknown_options": True, "allow_extra_args": True,
               "help_option_names": ["-h", "--help"], "max_content_width": 100}

BEAM_EPILOG = ("Any other option is passed to Beam as a pipeline option, e.g. --runner, "
               "--direct_num_workers=2 --direct_running_mode=multi_processing, or Dataflow flags. "
               "Default runner: Beam's in-process runner (DirectRunner without the Prism download).")


def run_job(job: Callable[[], object]) -> None:
    """Run ``job``; a bad argument or input becomes one clear line and exit status 2."""
    try:
        job()
    except (InputError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
