"""Beam options for every job: checked before the start, then turned into a pipeline.

Every option a job does not declare itself is handed to Beam. :func:`validate_beam_args` checks
them with Beam's own option classes, so any flag that any runner defines passes (Dataflow's
``--worker_machine_type``, ``--experiment``, ``--no_use_public_ips``, ``--resource_hint``, Flink's
``--flink_master``, Spark's ``--spark_master_url``, the portable ``--environment_option`` ...), and
a flag that no runner defines, a bad value, or a mode the jobs cannot run in fails before the
pipeline starts, naming the flag. :func:`make_pipeline` then builds the pipeline so that the
runners usable without a cluster (in-process, multi-process DirectRunner, PortableRunner with the
embedded job service) never reach for the network.

Every job waits for its pipeline (``wait_until_finish()``) and then writes its manifests and
``_SUMMARY.json`` from the launching process, so modes in which ``run()`` returns before the
pipeline has run, or in which it never finishes, are refused (see :data:`NOT_WAITED_FOR`).
"""
from __future__ import annotations

import importlib
from typing import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import (DebugOptions, DirectOptions, PipelineOptions, PortableOptions,
                                                  StandardOptions)
from apache_beam.options.pipeline_options import _BeamArgumentParser  # the parser Beam's options classes fill

from encoders.threads import ThreadPlan
from pipeline.errors import FlagError

LOCAL_RUNNER_NAMES = {"directrunner", "direct", "switchingdirectrunner", "fnapirunner"}

# Option (argparse dest) -> why a job cannot run with it: each makes ``pipeline.run()`` return
# without the pipeline having run to its end, while every job writes its manifests and summary
# after waiting for it.
NOT_WAITED_FOR = {
    "template_location": "Dataflow would save a template instead of running the job; launch the job itself "
                         "(the summary and manifests are written after it finishes)",
    "dry_run": "the runner would not submit the job",
    "output_executable_path": "Flink/Spark would write an executable jar instead of running the job",
    "wait_until_finish_duration": "the job would stop waiting before the pipeline finishes",
    "streaming": "these are batch jobs: a streaming pipeline does not finish",
    "update": "it replaces a running streaming job; these are batch jobs",
}

# Runners whose options live in a module Beam does not import by itself (and which needs extras).
_OPTIONAL_OPTION_MODULES = ("apache_beam.runners.dask.dask_runner",)


class _RefusingParser(_BeamArgumentParser):
    """Beam's argument parser, raising ValueError where argparse would exit the process."""

    def error(self, message):
        raise FlagError(f"Beam option: {message}")


def beam_option_parser() -> _BeamArgumentParser:
    """A parser that knows every flag of every Beam options class that is importable here.

    This is what Beam does in ``PipelineOptions.get_all_options``: each options class adds its
    own arguments (with their aliases, ``--no_...`` negations and types) to one parser."""
    for module in _OPTIONAL_OPTION_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # e.g. the DaskRunner without dask installed: its flags stay unknown
            pass
    parser = _RefusingParser(allow_abbrev=False, add_help=False, conflict_handler="resolve")
    classes = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # the hook Beam's own option parsing calls
    return parser


def validate_beam_args(beam_args: Sequence[str]) -> None:
    """Fail before anything runs when a pass-through option is not a Beam option, has a bad
    value, names a runner that cannot be created, or asks for a mode the job cannot wait for.

    Raises:
        ValueError: one line naming the flag(s) and what is allowed.
    """
    namespace, unknown = beam_option_parser().parse_known_args(list(beam_args))
    flags = [arg for arg in unknown if arg.startswith("-")]
    if flags:
        hint = ""
        if any(flag.lstrip("-").startswith("dask_") for flag in flags):
            hint = " (DaskRunner options need dask and distributed installed)"
        raise FlagError(f"unknown option(s) {', '.join(flags)}: not a flag of this job (see --help) nor a "
                        f"pipeline option of any Beam runner{hint}")
    if unknown:
        raise FlagError(f"unexpected argument(s) {' '.join(unknown)}: give options as --name=value")
    for dest, why in NOT_WAITED_FOR.items():
        if getattr(namespace, dest, None):
            raise FlagError(f"--{dest} is not allowed: {why}")
    runner = namespace.runner
    if runner is not None and runner.lower() in ("portablerunner", "portable") and not namespace.job_endpoint:
        raise FlagError("--runner=PortableRunner needs --job_endpoint: embed (a job service in this process) or "
                        "HOST:PORT of a running job service")
    if (namespace.environment_type or "").upper() == "EXTERNAL" and not namespace.environment_config:
        raise FlagError("--environment_type=EXTERNAL needs --environment_config=HOST:PORT of a worker pool "
                        "(python -m apache_beam.runners.worker.worker_pool_main --service_port=PORT)")
    if runner is not None and runner.lower() not in LOCAL_RUNNER_NAMES:
        from apache_beam.runners.runner import create_runner
        try:
            create_runner(runner)
        except (ImportError, ValueError) as err:
            raise FlagError(f"--runner {runner} cannot be used here: {err}") from err


def is_local_runner(beam_args: Sequence[str]) -> bool:
    """True when ``beam_args`` run on this machine's own runner (no ``--runner``, the DirectRunner,
    in-process or multi-process): no shuffle service, every grouping held in this machine's memory."""
    runner = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner
    return runner is None or runner.lower() in LOCAL_RUNNER_NAMES


def worker_processes(beam_args: Sequence[str]) -> int | None:
    """Scoring processes per machine, to share its cores between their torch threads: the
    multi-process DirectRunner's ``--direct_num_workers``; 1 in process; None for other runners,
    which size their own workers."""
    if not is_local_runner(beam_args):
        return None
    direct = PipelineOptions(list(beam_args)).view_as(DirectOptions)
    return max(1, direct.direct_num_workers or 1) if direct.direct_running_mode == "multi_processing" else 1


def thread_plan(beam_args: Sequence[str], explicit: int | None = None) -> ThreadPlan:
    """How a Beam worker process of ``beam_args`` sizes its torch threads (``encoders/threads.py``):
    ``explicit`` (``--torch-threads``) first; a Dataflow Python worker runs one SDK process per
    vCPU (unless ``--experiments=no_use_multiple_sdk_containers``), so each is a 1-CPU slot; a
    local runner's processes share this machine's CPUs; any other runner's process takes its
    affinity. Applied on the worker, so a remote worker counts its own CPUs."""
    options = PipelineOptions(list(beam_args))
    runner = (options.view_as(StandardOptions).runner or "").lower()
    if runner in ("dataflowrunner", "dataflow"):
        experiments = options.view_as(DebugOptions).experiments or []
        return ThreadPlan(explicit, slot_cpus=None if "no_use_multiple_sdk_containers" in experiments else 1)
    return ThreadPlan(explicit, processes=worker_processes(beam_args) or 1)


_WORKERS_IGNORE_SIGINT = "trap '' INT; "


def leave_ctrl_c_to_this_process() -> None:
    """Start the worker processes Beam runs from this process (the multi-process DirectRunner,
    ``--environment_type=SUBPROCESS_SDK``) with SIGINT ignored.

    A Ctrl-C at a terminal goes to every process of the foreground process group, Beam's workers
    included: each died of it with its own KeyboardInterrupt traceback, often before this
    process had even seen the signal. Ignored, it reaches only this process, which ends the
    workers itself (``pipeline.output.guard``: SIGTERM to every process below it) and prints its one
    line. The workers stay in this process group, so a signal a scheduler sends to the whole
    group (SIGTERM, SIGKILL) still reaches them. Beam starts each worker as ``sh -c COMMAND``
    (``local_job_service.SubprocessSdkWorker``); the shell's ``trap '' INT`` ignores SIGINT for
    itself and the programs it runs, and Python keeps an ignored SIGINT ignored. POSIX shells only;
    idempotent."""
    import os

    from apache_beam.runners.portability import local_job_service

    # Beam's private names: should a Beam release rename them, workers start as before (a Ctrl-C
    # shows their tracebacks again) rather than every pipeline failing.
    worker = getattr(local_job_service, "SubprocessSdkWorker", None)
    if worker is None or os.name != "posix" or getattr(worker, "_pairscore_ignores_sigint", False):
        return
    original = worker.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        command = getattr(self, "_worker_command_line", None)
        if isinstance(command, str) and not command.startswith(_WORKERS_IGNORE_SIGINT):
            self._worker_command_line = _WORKERS_IGNORE_SIGINT + command
    worker.__init__ = __init__
    worker._pairscore_ignores_sigint = True


def run_to_end(pipeline: beam.Pipeline, stall_seconds: float | None = None):
    """Run ``pipeline`` and wait until it has finished; returns its result (counters).

    The wait is guarded by the stall watchdog (pipeline/beam/watchdog.py), also when a job is
    called as a library function rather than from its command line (whose ``run_job`` already
    watches with the user's ``--stall-timeout``): a worker pool whose workers die at start-up
    ends the run with :class:`~pipeline.beam.watchdog.Stalled` instead of a wait without end.
    ``stall_seconds``: the limit (None: the command line's default; 0: wait forever)."""
    from pipeline import progress
    from pipeline.beam import watchdog

    seconds = watchdog.DEFAULT_STALL_SECONDS if stall_seconds is None else stall_seconds
    stop_watching = watchdog.watch(seconds, progress.counted)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    finally:
        stop_watching()
    return result


# Tests only: the path of a file to wait for before the pipeline is built (see pause_for_tests).
PAUSE_ENV = "PAIRSCORE_TEST_PAUSE_FILE"


def pause_for_tests() -> None:
    """When ``$PAIRSCORE_TEST_PAUSE_FILE`` names a file: create ``<file>.paused``, then wait until
    ``<file>`` exists. Every job builds its pipeline (:func:`make_pipeline`) after its checks and
    pins and before any worker reads an input, a store or a model, so a test can change what the
    run reads exactly between the two (tests/jobs/test_pinned_inputs.py). Unset: nothing happens."""
    import os
    import time

    release = os.environ.get(PAUSE_ENV)
    if not release:
        return
    with open(release + ".paused", "w", encoding="utf-8"):
        pass
    while not os.path.exists(release):
        time.sleep(0.05)


def make_pipeline(beam_args: Sequence[str]) -> beam.Pipeline:
    """A pipeline for ``beam_args`` (``--runner``, ``--direct_num_workers``, Dataflow flags ...).

    With no runner, or the DirectRunner, this runs Beam's in-process portable runner
    (FnApiRunner) directly: the DirectRunner would first try to download a Prism binary,
    which fails without network before it falls back to the very same runner.
    ``--direct_num_workers`` and ``--direct_running_mode`` (in_memory | multi_threading |
    multi_processing) work as documented by Beam.

    ``--runner=PortableRunner --job_endpoint=embed`` runs the job service in this process; without
    an ``--environment_type`` it uses LOOPBACK workers (Beam's default there, DOCKER, would pull an
    SDK image). ``--environment_type=EXTERNAL --environment_config=HOST:PORT`` hands the work to a
    worker pool (``python -m apache_beam.runners.worker.worker_pool_main --service_port=PORT``).
    """
    from pipeline.beam.watchdog import instrument_beam_workers
    pause_for_tests()
    instrument_beam_workers()   # the stall watchdog counts the workers this process asks for
    leave_ctrl_c_to_this_process()
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
    portable = options.view_as(PortableOptions)
    if portable.job_endpoint == "embed" and portable.environment_type is None:
        portable.environment_type = "LOOPBACK"
    return beam.Pipeline(options=options)

