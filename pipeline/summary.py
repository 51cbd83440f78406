"""The run summary: Beam counters turned into the counts schedulers read and people see.

A job builds a :class:`RunSummary` once its counts reconcile and hands it to
``OutputDir.commit`` (pipeline/outputs.py), which fills in ``files`` and writes
``_SUMMARY.json`` as part of the commit; nothing else writes it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


from apache_beam.metrics.metric import MetricsFilter

from pipeline.beam.encode import COUNTER_NAMESPACE

DEAD_LETTER_PREFIX = "dead_letter."


def read_counters(result) -> dict[str, int]:
    """All ``pairscore`` counters of a finished pipeline, summed over steps."""
    counts: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    for metric in query["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        counts[metric.key.metric.name] = counts.get(metric.key.metric.name, 0) + int(value or 0)
    return counts


def split_dead_letters(counters: dict[str, int], prefix: str = "") -> tuple[dict[str, int], dict[str, int]]:
    """(counts under ``prefix`` without it, dead letters under ``prefix`` by reason)."""
    mine = {k[len(prefix):]: v for k, v in counters.items() if k.startswith(prefix)}
    plain = {k: v for k, v in mine.items() if not k.startswith(DEAD_LETTER_PREFIX)}
    by_reason = {k[len(DEAD_LETTER_PREFIX):]: v for k, v in mine.items() if k.startswith(DEAD_LETTER_PREFIX)}
    return plain, dict(sorted(by_reason.items()))


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


