"""The jobs with workers in separate processes, as on Dataflow, Flink and Spark.

* ``external``: the PortableRunner with the embedded job service hands every bundle over the Fn
  API to an EXTERNAL worker pool (``python -m apache_beam.runners.worker.worker_pool_main``) that
  this module starts in another working directory, so its workers share nothing with the test
  but the files; the jobs are given relative paths, which the workers could not open as typed.
* ``multi-process``: the DirectRunner's multi-process mode (``--direct_num_workers=2
  --direct_running_mode=multi_processing``).

Each job's outputs (tables, dead letters, counts) equal the in-process run's. The inputs
dead-letter rows on purpose, so every job here runs with ``max_dead_letter_fraction=1.0``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.encode_texts import EncodeTextsJob
from jobs.encode_texts import run as encode
from jobs.label_pairs import LabelPairsJob
from jobs.label_pairs import run as label
from jobs.score_pairs import ScorePairsJob
from jobs.score_pairs import run as score

REPO = Path(__file__).resolve().parents[2]
MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]

# Where each kind of table lies under a job's output: the one place that knows the layout.
OUTPUT_FILES = {
    "scores": "scores/*.parquet",
    "store": "part-*.parquet",
    "left_store": "store/left/part-*.parquet",
    "right_store": "store/right/part-*.parquet",
    "distillation": "part-*.parquet",
    "dead_letter": "_dead_letter/*.parquet",
}


def output_table(output: Path, kind: str) -> pa.Table:
    """All rows of one kind of table under ``output`` (see OUTPUT_FILES), in a fixed order."""
    files = sorted(output.glob(OUTPUT_FILES[kind]))
    assert files, f"no {kind} files under {output}"
    table = pa.concat_tables([pq.read_table(f) for f in files])
    keys = [c for c in ("id", "left_id", "right_id", "pid", "source", "reason") if c in table.column_names]
    return table.sort_by([(key, "ascending") for key in keys])


def assert_same_table(got: pa.Table, expected: pa.Table) -> None:
    """Equal row for row; floats (and float16 embedding bytes) equal up to rounding, since the
    bundles, and so the encoder batches, are cut differently when workers are separate processes."""
    assert got.schema == expected.schema and got.num_rows == expected.num_rows
    for name in expected.column_names:
        kind, a, b = expected.schema.field(name).type, got.column(name), expected.column(name)
        if pa.types.is_fixed_size_binary(kind):
            decode = lambda column: np.frombuffer(b"".join(column.to_pylist()), "<f2").astype(np.float32)  # noqa: E731
            np.testing.assert_allclose(decode(a), decode(b), atol=2e-3, err_msg=name)
        elif pa.types.is_floating(kind) or (pa.types.is_list(kind) and pa.types.is_floating(kind.value_type)):
            np.testing.assert_allclose(np.array(a.to_pylist(), np.float64), np.array(b.to_pylist(), np.float64),
                                       atol=1e-5, err_msg=name)
        else:
            assert a.to_pylist() == b.to_pylist(), name


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def worker_pool(tmp_path_factory, worker_pool_env) -> tuple[list[str], Path]:
    """(Beam args for the EXTERNAL pool, the pool's working directory)."""
    port = _free_port()
    cwd = tmp_path_factory.mktemp("worker-pool-cwd")
    log = open(tmp_path_factory.mktemp("worker-pool-log") / "pool.log", "w+")
    env = worker_pool_env
    pool = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                             f"--service_port={port}"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300   # Beam imports on a loaded machine
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("localhost", port)) == 0:
                    break
            if pool.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"worker pool did not start on port {port}:\n{log.read()}")
            time.sleep(0.2)
        yield (["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{port}"], cwd)
    finally:
        os.killpg(pool.pid, signal.SIGTERM)  # the pool and any worker it still runs: its own session
        pool.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The working directory of every job run here (not the worker pool's), with the inputs."""
    directory = tmp_path_factory.mktemp("jobs-cwd")
    for name, rows in (("texts.jsonl", TEXTS), ("pairs.jsonl", PAIRS)):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


@pytest.fixture(scope="module")
def in_process(workdir, tiny_checkpoint, tiny_teacher_dir) -> dict:
    """Each job run once in-process on the inputs, given relative paths: job -> its counts."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        return {
            "encode": encode(EncodeTextsJob(max_dead_letter_fraction=1.0, inputs=("texts.jsonl",), output="in-process-encode",
                                            model_dir=tiny_checkpoint), [], []).counts,
            "score": score(ScorePairsJob(max_dead_letter_fraction=1.0, pairs=("pairs.jsonl",), output="in-process-score", model_dir=tiny_checkpoint,
                                         keep_cols=("pid",)), [], []).counts,
            "label": label(LabelPairsJob(max_dead_letter_fraction=1.0, pairs=("pairs.jsonl",), teacher=tiny_teacher_dir, output="in-process-label",
                                         keep_cols=("pid",)), [], []).counts,
        }


@pytest.fixture(params=["external", "multi-process"])
def runner(request, workdir, monkeypatch) -> tuple[str, list[str]]:
    """(name, Beam args) of one separate-process runner; the test runs in ``workdir``."""
    monkeypatch.chdir(workdir)
    if request.param == "external":
        args, pool_cwd = request.getfixturevalue("worker_pool")
        assert pool_cwd != workdir
        return request.param, args
    return request.param, MULTI_PROCESS


TEXTS = [{"text": "how do i learn python"}, {"text": "best way to learn python"}, {"text": "what is a fox"},
         {"text": "how do i learn python"}, {"text": "   "}, {"text": "a quick brown fox jumps over the lazy dog"}]
PAIRS = [{"left": "how do i learn python", "right": "best way to learn python", "pid": 1},
         {"left": "what is a fox", "right": "a red fox", "pid": 2},
         {"left": "how do i learn python", "right": "a red fox", "pid": 3},
         {"left": "", "right": "a red fox", "pid": 4},
         {"left": "a quick brown fox jumps over the lazy dog", "right": "lazy dogs", "pid": 5}]


def assert_same_outputs(got: str, expected: str, kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        assert_same_table(output_table(Path(got), kind), output_table(Path(expected), kind))


# Relative input and output paths throughout: the jobs make them absolute for their workers.

def test_encode_texts(runner, in_process, tiny_checkpoint):
    name, args = runner
    got = encode(EncodeTextsJob(max_dead_letter_fraction=1.0, inputs=("texts.jsonl",), output=f"{name}-encode", model_dir=tiny_checkpoint,
                                batch_size=2), args, [])
    assert got.counts == in_process["encode"] and got.counts["store_rows"] == 4
    assert_same_outputs(f"{name}-encode", "in-process-encode", ("store", "dead_letter"))


def test_score_pairs(runner, in_process, tiny_checkpoint):
    name, args = runner
    flags = dict(pairs=("pairs.jsonl",), model_dir=tiny_checkpoint, keep_cols=("pid",), batch_size=2)
    got = score(ScorePairsJob(max_dead_letter_fraction=1.0, output=f"{name}-score", join="shuffle", **flags), args, [])
    assert got.counts == in_process["score"] and got.counts["pairs_scored"] == 4
    assert_same_outputs(f"{name}-score", "in-process-score", ("scores", "left_store", "right_store", "dead_letter"))
    if name == "external":
        # A store given by a relative path is read by the pool's workers: nothing is encoded again.
        again = score(ScorePairsJob(max_dead_letter_fraction=1.0, output=f"{name}-again", store=f"{name}-score/store", **flags), args, [])
        assert again.counts["left_texts_encoded"] == again.counts["right_texts_encoded"] == 0
        assert_same_outputs(f"{name}-again", "in-process-score", ("scores",))


def test_label_pairs(runner, in_process, tiny_teacher_dir):
    name, args = runner
    got = label(LabelPairsJob(max_dead_letter_fraction=1.0, pairs=("pairs.jsonl",), teacher=tiny_teacher_dir, output=f"{name}-label",
                              keep_cols=("pid",), batch_size=2), args, [])
    assert got.counts == in_process["label"] and got.counts["pairs_labeled"] == 4
    assert_same_outputs(f"{name}-label", "in-process-label", ("distillation", "dead_letter"))
