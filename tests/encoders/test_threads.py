"""The torch threads of a worker process (encoders/threads.py): flag, then slot, then the
process's share of its affinity; never the whole machine per process."""
from __future__ import annotations


import pytest
import torch

from encoders import threads
from encoders.threads import ThreadPlan, spark_plan


@pytest.fixture
def affinity(monkeypatch):
    """Set the CPUs this process may run on, as ``os.sched_getaffinity`` reports them."""
    def pin(cpus):
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(cpus), raising=False)
        monkeypatch.setattr(threads.os, "cpu_count", lambda: 64)   # the machine is bigger than the slot
    return pin


def test_the_process_share_of_its_affinity_not_the_machine(affinity):
    affinity(range(4))                                  # taskset -c 0-3 on a 64-core machine
    assert ThreadPlan().threads() == 4
    assert ThreadPlan(processes=2).threads() == 2
    assert ThreadPlan(processes=3).threads() == 1
    affinity([7])                                       # taskset -c 7
    assert ThreadPlan().threads() == 1
    assert ThreadPlan(processes=4).threads() == 1       # never 0


def test_the_slot_comes_before_the_affinity_and_the_flag_before_both(affinity):
    affinity(range(16))
    assert ThreadPlan(slot_cpus=2, processes=8).threads() == 2
    assert ThreadPlan(explicit=3, slot_cpus=2, processes=8).threads() == 3
    assert ThreadPlan(explicit=5).threads(cpus={0}) == 5


def test_without_an_affinity_call_every_cpu_counts(monkeypatch):
    monkeypatch.delattr(threads.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 6)
    assert ThreadPlan(processes=2).threads() == 3


class _TaskContext:
    """pyspark.TaskContext as a Spark 3.3+ task sees it."""
    def __init__(self, cpus):
        self._cpus = cpus

    def cpus(self):
        return self._cpus


class _OldTaskContext:
    """A TaskContext before ``cpus()``: the slot's CPUs only as a local property."""
    def __init__(self, value):
        self._value = value

    def getLocalProperty(self, key):
        return self._value if key == "spark.task.cpus" else None


def test_a_spark_task_gets_its_slot_cpus(affinity):
    affinity(range(32))                                 # an executor's cores, shared by its task slots
    assert spark_plan(_TaskContext(4)).threads() == 4
    assert spark_plan(_OldTaskContext("2")).threads() == 2
    assert spark_plan(_OldTaskContext(None)).threads() == 32
    assert spark_plan(_TaskContext(4), explicit=1).threads() == 1


def test_apply_sets_torch_and_says_what_it_set(affinity):
    before = torch.get_num_threads()
    try:
        affinity([0])
        assert ThreadPlan().apply() == 1 == torch.get_num_threads()
        assert ThreadPlan(explicit=2).apply() == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
