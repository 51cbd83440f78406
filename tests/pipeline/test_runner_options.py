"""Beam options: every runner's flags pass through every job, unknown flags and modes the jobs
cannot wait for are refused before the start, naming the flag."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from jobs import encode_texts, label_pairs, score_pairs
from pipeline.beam import runner
from pipeline.beam.runner import NOT_WAITED_FOR, make_pipeline, validate_beam_args

# What a Dataflow user types (issue 10), GPU workers and a custom container included.
DATAFLOW = [
    "--runner=DataflowRunner", "--project", "my-project", "--region", "europe-west4",
    "--temp_location", "gs://my-bucket/tmp", "--worker_machine_type", "n1-standard-8",
    "--experiment", "use_runner_v2",
    "--dataflow_service_options", "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver",
    "--no_use_public_ips", "--sdk_container_image", "europe-docker.pkg.dev/my-project/pairscore/worker:cuda",
    "--resource_hint", "min_ram=16GB", "--max_num_workers=50", "--disk_size_gb=100",
    "--number_of_worker_harness_threads=1", "--labels", "team=search", "--save_main_session",
]
# Flags other runners' option classes define (Flink, Spark, portable, direct, S3, HDFS).
OTHER_RUNNERS = [
    ["--runner=FlinkRunner", "--flink_master=flink-host:8081", "--environment_type=DOCKER",
     "--environment_option", "docker_container_image=pairscore-worker:cpu", "--parallelism=64"],
    ["--runner=SparkRunner", "--spark_master_url=spark://spark-host:7077", "--environment_type=PROCESS",
     "--environment_config", '{"command": "/opt/apache/beam/boot"}', "--spark_submit_uber_jar"],
    ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
     "--environment_config=localhost:50000", "--sdk_worker_parallelism=2"],
    ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    ["--s3_region_name=eu-west-1", "--hdfs_host=namenode", "--hdfs_port=9870", "--hdfs_user=me"],
    ["--setup_file=./setup.py", "--requirements_file=requirements.txt", "--experiments=a", "--experiments=b"],
]


@pytest.mark.parametrize("args", [DATAFLOW, *OTHER_RUNNERS], ids=lambda a: a[0].split("=")[-1])
def test_every_runners_flags_are_accepted(args):
    validate_beam_args(args)


@pytest.mark.parametrize("args, named", [
    (["--bogus_flag"], "--bogus_flag"),
    (["--bogus_flag", "value", "--project=p"], "--bogus_flag"),
    (["--worker_machine_typ=n1"], "--worker_machine_typ=n1"),  # abbreviations are not guessed at
    (["--dask_client_address=x:8786"], "DaskRunner options need dask"),  # dask is not installed here
    (["--direct_num_workers=two"], "--direct_num_workers: invalid int value: 'two'"),
    (["--direct_running_mode=threads"], "invalid choice: 'threads'"),
    (["--runner=NoSuchRunner"], "--runner NoSuchRunner cannot be used here"),
    (["stray"], "unexpected argument(s) stray"),
    (["--runner=PortableRunner"], "--runner=PortableRunner needs --job_endpoint"),
    (["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL"],
     "--environment_type=EXTERNAL needs --environment_config=HOST:PORT"),
])
def test_unknown_flags_and_bad_values_are_refused_naming_the_flag(args, named):
    with pytest.raises(ValueError) as err:
        validate_beam_args(args)
    assert named in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("flag", ["--template_location=gs://my-bucket/templates/score", "--dry_run=True",
                                  "--output_executable_path=/tmp/job.jar", "--streaming",
                                  "--wait_until_finish_duration=1000", "--update"])
def test_modes_the_job_would_not_wait_for_are_refused(flag):
    """Every job writes its manifests and summary after the pipeline finished; a mode where
    run() returns first (or never finishes) would leave an output without them."""
    name = flag.split("=")[0]
    assert name[2:] in NOT_WAITED_FOR
    with pytest.raises(ValueError, match=f"^{name} is not allowed: "):
        validate_beam_args([*DATAFLOW, flag])


class _WouldLaunch(BaseException):
    """Raised instead of building the pipeline: everything before the launch was accepted. A
    BaseException, as a test's stop: run_job reports an Exception as a bug (exit 1)."""


@pytest.fixture
def no_launch(monkeypatch):
    """Stops each job where it would build its pipeline, recording the Beam args it got."""
    seen = []

    def stop(beam_args):
        seen.append(list(beam_args))
        raise _WouldLaunch()
    # The jobs import their library inside run(), so patching the runner module reaches all three.
    monkeypatch.setattr(runner, "make_pipeline", stop)
    return seen


def test_a_dataflow_command_line_passes_every_jobs_option_handling(tmp_path, no_launch, tiny_checkpoint,
                                                                   tiny_teacher_dir):
    source = tmp_path / "pairs.jsonl"
    source.write_text(json.dumps({"left": "a red fox", "right": "a fox", "text": "a red fox"}) + "\n")
    commands = [
        (encode_texts.main, ["--input", str(source), "--model", tiny_checkpoint]),
        (score_pairs.main, ["--pairs", str(source), "--model", tiny_checkpoint]),
        (label_pairs.main, ["--pairs", str(source), "--teacher", tiny_teacher_dir]),
    ]
    for number, (main, flags) in enumerate(commands):
        with pytest.raises(_WouldLaunch):    # a BaseException passes through click's test runner
            CliRunner().invoke(main, [*flags, "--output", str(tmp_path / f"out{number}"), *DATAFLOW])
    assert no_launch == [DATAFLOW] * 3


def test_unknown_flag_fails_every_job_before_the_start(tmp_path, no_launch, tiny_checkpoint, tiny_teacher_dir):
    source = tmp_path / "pairs.jsonl"
    source.write_text(json.dumps({"left": "a", "right": "b", "text": "a"}) + "\n")
    for number, (main, flags) in enumerate([
            (encode_texts.main, ["--input", str(source), "--model", tiny_checkpoint]),
            (score_pairs.main, ["--pairs", str(source), "--model", tiny_checkpoint]),
            (label_pairs.main, ["--pairs", str(source), "--teacher", tiny_teacher_dir])]):
        output = tmp_path / f"out{number}"
        result = CliRunner().invoke(main, [*flags, "--output", str(output), *DATAFLOW, "--bogus_flag"])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            "error: unknown option(s) --bogus_flag: not a flag of this job (see --help) nor a pipeline option "
            "of any Beam runner"]
        assert not output.exists()
    assert no_launch == []


def test_embedded_job_service_defaults_to_loopback_workers_not_docker():
    """Beam's default environment (DOCKER) would pull an SDK image; the embedded job service runs
    here, so its workers do too unless an environment is named."""
    from apache_beam.options.pipeline_options import PortableOptions

    pipeline = make_pipeline(["--runner=PortableRunner", "--job_endpoint=embed"])
    assert pipeline.options.view_as(PortableOptions).environment_type == "LOOPBACK"
    pipeline = make_pipeline(["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                              "--environment_config=localhost:1"])
    assert pipeline.options.view_as(PortableOptions).environment_type == "EXTERNAL"


def test_workers_start_with_sigint_ignored_and_a_renamed_beam_class_changes_nothing(monkeypatch):
    """Beam's worker command gets ``trap '' INT;`` once (a terminal's Ctrl-C is the launcher's
    alone); if a Beam release drops the private class, pipelines still build."""
    from apache_beam.runners.portability import local_job_service

    class FakeWorker:                                    # Beam's SubprocessSdkWorker keeps its command here
        def __init__(self, command):
            self._worker_command_line = command

    monkeypatch.setattr(local_job_service, "SubprocessSdkWorker", FakeWorker)
    runner.leave_ctrl_c_to_this_process()
    runner.leave_ctrl_c_to_this_process()                # idempotent: wrapped once
    assert FakeWorker("python -m worker")._worker_command_line == "trap '' INT; python -m worker"
    monkeypatch.delattr(local_job_service, "SubprocessSdkWorker")
    runner.leave_ctrl_c_to_this_process()                # nothing to wrap: no error
    runner.make_pipeline(["--runner=DirectRunner"])


@pytest.mark.parametrize("args, plan", [
    ([], runner.ThreadPlan(processes=1)),
    (["--direct_num_workers=2", "--direct_running_mode=multi_processing"], runner.ThreadPlan(processes=2)),
    (["--direct_num_workers=4", "--direct_running_mode=multi_threading"], runner.ThreadPlan(processes=1)),
    (DATAFLOW, runner.ThreadPlan(slot_cpus=1)),                      # one SDK process per vCPU
    (DATAFLOW + ["--experiments=no_use_multiple_sdk_containers"], runner.ThreadPlan()),
    (OTHER_RUNNERS[0], runner.ThreadPlan(processes=1)),               # Flink: the worker's own affinity
], ids=["in-process", "multi-process", "multi-thread", "dataflow", "dataflow-one-sdk", "flink"])
def test_each_runner_sizes_its_workers_threads(args, plan):
    assert runner.thread_plan(args) == plan
    assert runner.thread_plan(args, explicit=3).threads(cpus=range(64)) == 3   # the flag wins everywhere
