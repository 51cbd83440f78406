"""How many torch threads a worker process uses: one rule for stage one (encoding), stage two
(the head) and the teacher (labeling).

The rule, first answer wins:

1. the explicit flag (``--torch-threads N``);
2. the slot's CPUs, when the engine says how many a task gets (Spark's task CPUs,
   ``TaskContext.cpus()``; a Dataflow SDK process, which is one per vCPU, gets 1);
3. this process's share of the CPUs it may run on (``os.sched_getaffinity``, which a container's
   cpuset or ``taskset`` narrows) among the worker processes sharing them (Beam's multi-process
   DirectRunner's ``--direct_num_workers``).

Never the whole machine per process: torch's own default is every core the machine has, so N
worker processes (or a process under ``taskset -c 0``) ran N times (or 2 times) more threads than
cores, and threads waiting for a core at every parallel region is what made the head's speed
collapse on shared cores. Idle OpenMP threads must also not spin: the command-line entry sets
``OMP_WAIT_POLICY=PASSIVE`` before torch is imported (``jobs/common.py``).

No torch at import: the engine layers build a :class:`ThreadPlan` where the job starts and the
worker applies it (:meth:`ThreadPlan.apply`) where its model loads, on the worker's own CPUs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Collection


def available_cpus() -> Collection[int]:
    """The CPUs this process may run on (its affinity; every CPU where the OS cannot say)."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):   # macOS, Windows: no affinity call
        return range(os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    """What decides a worker process's torch threads (module docstring: the order).

    explicit: the ``--torch-threads`` flag, or None.
    slot_cpus: the CPUs the engine gives this task slot (Spark's task CPUs), or None when it does not say.
    processes: worker processes sharing this process's CPUs (Beam's local multi-process workers); 1 otherwise.
    """
    explicit: int | None = None
    slot_cpus: int | None = None
    processes: int = 1

    def threads(self, cpus: Collection[int] | None = None) -> int:
        """The torch threads for a process whose affinity is ``cpus`` (default: this process's)."""
        if self.explicit:
            return self.explicit
        if self.slot_cpus:
            return self.slot_cpus
        count = len(available_cpus() if cpus is None else cpus)
        return max(1, count // max(1, self.processes))

    def apply(self) -> int:
        """Set this process's torch intra-op threads by the plan; returns what torch now uses."""
        import torch

        wanted = self.threads()
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
        return torch.get_num_threads()


def spark_plan(task_context: Any, explicit: int | None = None) -> ThreadPlan:
    """The plan inside a Spark task: its slot's CPUs from ``pyspark.TaskContext`` (``cpus()``,
    Spark 3.3+; ``spark.task.cpus`` from its local properties before that)."""
    cpus = None
    if task_context is not None:
        if hasattr(task_context, "cpus"):
            cpus = int(task_context.cpus())
        else:
            value = task_context.getLocalProperty("spark.task.cpus")
            cpus = int(value) if value else None
    return ThreadPlan(explicit=explicit, slot_cpus=cpus)
