"""A real 2-worker run (the multi-process DirectRunner) whose worker processes each take their
share of this machine's CPUs as torch threads, in stage one, stage two and the teacher.

Each worker reports the threads torch runs with once its model is loaded (a Beam gauge,
``pipeline.beam.counters.report_threads``); the test reads them back from the finished pipeline.
"""
from __future__ import annotations

import json
import os

import pytest

from jobs.label_pairs import LabelPairsJob, run as run_label
from jobs.score_pairs import ScorePairsJob, run as run_score
from pipeline.beam import counters

TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
# Each of two workers gets half of this process's CPUs (1 on a 2-core machine; torch alone took 2).
SHARE = max(1, len(os.sched_getaffinity(0)) // 2)


@pytest.fixture
def reported(monkeypatch):
    """The workers' reported torch threads, ``STAGE.HOST:PID`` -> threads, of the next run."""
    found: dict[str, int] = {}
    read_counters = counters.read_counters

    def reading(result):
        found.update(counters.worker_threads(result))
        return read_counters(result)
    monkeypatch.setattr(counters, "read_counters", reading)
    return found


def write_pairs(path, count: int):
    path.write_text("".join(json.dumps({"left": f"question number {i}", "right": f"an answer {i % 7}"}) + "\n"
                            for i in range(count)))
    return path


def by_stage(found: dict[str, int]) -> dict[str, set[int]]:
    stages: dict[str, set[int]] = {}
    for key, threads in found.items():
        stages.setdefault(key.split(".", 1)[0], set()).add(threads)
    return stages


def test_two_scoring_workers_take_their_share_in_both_stages(tmp_path, tiny_checkpoint, reported):
    """score_pairs without a store: the workers encode the texts (stage one) and score (stage two)."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", 40)
    run_score(ScorePairsJob(pairs=(str(pairs),), output=str(tmp_path / "out"), model_dir=tiny_checkpoint,
                            batch_size=8), TWO_WORKERS, argv=[])
    stages = by_stage(reported)
    assert stages.get("encode") == {SHARE} and stages.get("head") == {SHARE}, reported


def test_two_labeling_workers_take_their_share(tmp_path, tiny_teacher_dir, reported):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 24)
    run_label(LabelPairsJob(pairs=(str(pairs),), teacher=tiny_teacher_dir, output=str(tmp_path / "out"),
                            batch_size=8), TWO_WORKERS, argv=[])
    assert by_stage(reported) == {"teacher": {SHARE}}, reported


def test_the_flag_overrides_the_share(tmp_path, tiny_teacher_dir, reported):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 8)
    run_label(LabelPairsJob(pairs=(str(pairs),), teacher=tiny_teacher_dir, output=str(tmp_path / "out"),
                            torch_threads=3), [], argv=[])
    assert by_stage(reported) == {"teacher": {3}}, reported
