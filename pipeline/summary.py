"""The run summary: the counts schedulers read and people see (a Beam job's come from its
counters, ``pipeline.beam.counters.read_counters``).

A job builds a :class:`RunSummary` once its counts reconcile and hands it to
``OutputDir.commit`` (pipeline/output/commit.py), which fills in ``files`` and writes
``_SUMMARY.json`` as part of the commit; nothing else writes it."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any


from pipeline.provenance import utc_timestamp, version

# Flags whose values are paths (``_SUMMARY.json`` records them absolute); the second set may also
# name something that is not a local path (a hub id, ``baseline``), kept as given then.
PATH_FLAGS = ("--input", "--pairs", "--left-texts", "--right-texts", "--store", "--previous", "--train", "--dev",
              "--distill", "--cache-dir", "--output", "--model", "--teacher", "--encoder", "--base")
MAYBE_NOT_PATHS = ("--model", "--teacher", "--encoder", "--base")


def absolute_paths(arguments: list[str], output: str) -> dict[str, list[str]]:
    """Flag -> its path values made absolute (``--output`` always): what a run read and wrote,
    wherever it was started. Remote paths stay as they are; ``NAME=DIR`` (evaluate's ``--model``)
    keeps its name."""
    def absolute(flag: str, value: str) -> str:
        name, _, path = value.rpartition("=") if flag == "--model" and not os.path.exists(value) else ("", "", value)
        if "://" in path or (flag in MAYBE_NOT_PATHS and not os.path.exists(path)):
            return value
        return (f"{name}=" if name else "") + os.path.abspath(path)

    paths: dict[str, list[str]] = {}
    for index, argument in enumerate(arguments):
        flag, equals, value = argument.partition("=")
        if flag not in PATH_FLAGS or flag == "--output":
            continue
        if not equals:
            if index + 1 >= len(arguments):
                continue
            value = arguments[index + 1]
        paths.setdefault(flag, []).append(absolute(flag, value))
    paths["--output"] = [output if "://" in output else os.path.abspath(output)]
    return paths


@dataclass
class RunSummary:
    """What ``DIR/_SUMMARY.json`` holds (CLI contract): job, arguments, fingerprints, wall time,
    counts (rows read, written, deduplicated, dead-lettered by reason), and the files written."""
    job: str
    arguments: list[str]
    output: str
    model_fingerprints: dict[str, str]
    wall_seconds: float
    counts: dict[str, int]
    dead_letters: dict[str, int]
    reconciliation: str
    notes: list[str] = field(default_factory=list)
    # Quality figures of jobs that train or evaluate (e.g. dev metrics per epoch); JSON values.
    metrics: dict[str, Any] = field(default_factory=dict)
    # Every file the run committed besides _SUMMARY.json and _SUCCESS, relative to ``output``
    # (filled in by OutputDir.commit).
    files: list[str] = field(default_factory=list)
    # Provenance (CLI contract): pairscore's version, the run's UTC start and end (the start is
    # ``wall_seconds`` before the end: when Python started pairscore under the command line), and every path
    # argument made absolute. Filled in when the job builds its summary, at the end of the run.
    version: str = ""
    started_at: str = ""
    ended_at: str = ""
    paths: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        now = time.time()
        self.version = self.version or version()
        self.ended_at = self.ended_at or utc_timestamp(now)
        self.started_at = self.started_at or utc_timestamp(now - self.wall_seconds)
        self.paths = self.paths or absolute_paths(list(self.arguments), self.output)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def written(self) -> list[str]:
        """The files as people read them: each directory once with its file count (``./``: the output itself)."""
        groups: dict[str, int] = {}
        for path in self.files:
            head = path.rsplit("/", 1)[0] + "/" if "/" in path else "./"
            groups[head] = groups.get(head, 0) + 1
        return [f"{name} ({count} file{'s' if count != 1 else ''})" for name, count in sorted(groups.items())]

    def table(self) -> str:
        """A short table for people, the same numbers as the JSON."""
        width = max([len(k) for k in self.counts] + [len(k) + 2 for k in self.dead_letters] + [20])
        lines = [f"{self.job}: done in {self.wall_seconds:.1f} s -> {self.output}"]
        lines += [f"  {name:<{width}} {value:>12,}" for name, value in self.counts.items()]
        lines += [f"    {reason:<{width - 2}} {value:>12,}" for reason, value in self.dead_letters.items()]
        lines.append(f"  {self.reconciliation}")
        for name, fingerprint in self.model_fingerprints.items():
            lines.append(f"  {name}: {fingerprint[:16]}")
        lines += [f"  note: {note}" for note in self.notes]
        if self.files:
            lines.append(f"  wrote: {', '.join(self.written())}")
        return "\n".join(lines)

    def training_table(self) -> str:
        """:meth:`table`, then a line per training epoch (``metrics["epochs"]``: its stage where the
        run has stages, train loss, dev metrics) and the train loss floor where the run measured one."""
        lines = [self.table()]
        for record in self.metrics.get("epochs", ()):
            stage = f"{record['stage']} " if "stage" in record else ""
            shown = ", ".join(f"{k} {v:.4f}" for k, v in record["dev"].items())
            lines.append(f"  {stage}epoch {record['epoch']}: train loss {record['train_loss']:.4f}, dev {shown}")
        if "train_loss_floor" in self.metrics:
            lines.append(f"  train loss floor (entropy of the targets): {self.metrics['train_loss_floor']:.4f}")
        return "\n".join(lines)


