"""Building and running a Beam pipeline from the options a job did not recognise."""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

LOCAL_RUNNER_NAMES = {"directrunner", "direct", "switchingdirectrunner", "fnapirunner"}


def make_pipeline(beam_args: Sequence[str]) -> beam.Pipeline:
    """A pipeline for ``beam_args`` (``--runner``, ``--direct_num_workers``, Dataflow flags ...).

    With no runner, or the DirectRunner, this runs Beam's in-process portable runner
    (FnApiRunner) directly: the DirectRunner would first try to download a Prism binary,
    which fails without network before it falls back to the very same runner.
    ``--direct_num_workers`` and ``--direct_running_mode`` (in_memory | multi_threading |
    multi_processing) work as documented by Beam.
    """
    options = PipelineOptions(list(beam_args))
    runner_name = options.view_as(StandardOptions).runner
    if runner_name is None or runner_name.lower() in LOCAL_RUNNER_NAMES:
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        # Workers of the multi-process mode read the pipeline options from here, as they do
        # when the DirectRunner falls back to this runner.
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        provision = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return beam.Pipeline(runner=fn_runner.FnApiRunner(provision_info=provision), options=options)
    return beam.Pipeline(options=options)


def validate_beam_args(beam_args: Sequence[str]) -> None:
    """Fail before anything runs when a pass-through option is not a Beam option."""
    options = PipelineOptions(list(beam_args))
    unknown = [arg for arg in beam_args if arg.startswith("--")
               and arg[2:].split("=", 1)[0].replace("-", "_") not in options.get_all_options()]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}: not a flag of this job "
                         f"(see --help) nor a Beam pipeline option")
