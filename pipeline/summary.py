"""The run summary: the counts schedulers read and people see (a Beam job's come from its
counters, ``pipeline.beam.counters.read_counters``).

A job builds a :class:`RunSummary` once its counts reconcile and hands it to
``OutputDir.commit`` (pipeline/outputs.py), which fills in ``files`` and writes
``_SUMMARY.json`` as part of the commit; nothing else writes it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any



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


