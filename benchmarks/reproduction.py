"""What the one-command reproductions (``reproduce_qqp.py``, ``reproduce_wikiqa.py``,
``reproduce_stsb.py``) share: the resumable step runner, the jobs' environment, and the pieces of
their ``RESULTS.md`` (the steps table, intervals, which stage a student's checkpoint came from).

A step is one ``python -m jobs.<name> ...`` command. It is printed before it runs and skipped when
its output already holds ``_SUMMARY.json`` (a job writes it only on success), so an interrupted
reproduction resumes where it stopped; ``--fresh`` reruns every step (with ``--overwrite``). Each
step's wall time is kept in ``OUT/step_seconds.json`` across invocations, so a resumed run still
reports what every step took when it did run.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SKIPPED = "(done before: skipped)"
# The ranking reproductions' difference columns: header -> metric key in evaluate's metrics.json.
RANKING_COLUMNS = {"MRR@10": "mrr@10", "MAP": "map", "nDCG@10": "ndcg@10", "AUC": "auc"}


def job_env() -> dict[str, str]:
    """The environment of every job: this checkout first on the path, no network, and OpenMP threads
    that sleep rather than spin between batches (the machine is shared)."""
    return dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def inside_repo(path: Path, data: str) -> bool:
    """True, after one line on stderr, when ``path`` (resolved) is this repository or lies in it.
    A reproduction's output holds copies of ``data`` and models trained on it, which are not ours to
    ship (non-commercial or research-only licences), so it must live outside the checkout."""
    path = path.resolve()
    if path == REPO or REPO in path.parents:
        print(f"{path} is inside the repository; {data} is not ours to ship: use a directory outside it",
              file=sys.stderr)
        return True
    return False


@dataclass
class Steps:
    """Runs a reproduction's jobs resumably, one after another (or one in the background while the
    next runs); ``done`` lists every step met so far as {"step", "seconds", "command", "extra"} in
    the order they ended, ``skipped`` the names of those skipped."""
    out: Path
    fresh: bool = False
    done: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.env = job_env()
        self.timings_file = self.out / "step_seconds.json"
        self.timings = (json.loads(self.timings_file.read_text(encoding="utf-8"))
                        if self.timings_file.exists() else {})

    def run(self, name: str, output: Path, job: list[str], extra: bool = False,
            background: bool = False) -> Callable[[], None]:
        """Run ``python -m JOB...`` unless ``output`` is complete; record its wall time. ``extra``
        steps (optional ablations) are listed but not counted in the reproduction's time.
        ``background``: start the job and return at once; the returned function waits for it and
        records it (call it before reading the output). Otherwise the job has ended on return, and
        the returned function does nothing."""
        shown = shlex.join(["python", "-m", *job])
        print(f"\n=== {name} ({time.strftime('%H:%M:%S')})\n$ {shown}", flush=True)
        if (output / "_SUMMARY.json").exists() and not self.fresh:
            print(SKIPPED, flush=True)
            self.skipped.append(name)
            self._record(name, output, shown, extra)
            return lambda: None
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", *job] + (["--overwrite"] if output.exists() else []),
                                   cwd=REPO, env=self.env)

        def finish() -> None:
            try:
                code = process.wait()
            except BaseException:        # Ctrl-C or an error elsewhere: leave no job running behind us
                process.kill()
                process.wait()
                raise
            if code:
                raise subprocess.CalledProcessError(code, process.args)
            self.timings[name] = round(time.monotonic() - started, 1)
            self.timings_file.write_text(json.dumps(self.timings, indent=2), encoding="utf-8")
            print(f"--- {name}: {self.timings[name] / 60:.1f} min", flush=True)
            self._record(name, output, shown, extra)

        if background:
            return finish
        finish()
        return lambda: None

    def _record(self, name: str, output: Path, shown: str, extra: bool) -> None:
        seconds = self.timings.get(name)
        if seconds is None and (output / "_SUMMARY.json").exists():
            # Run by an earlier invocation that did not record it (stopped while the job ran on, or
            # another script's run of the same step): the job's own wall time.
            seconds = json.loads((output / "_SUMMARY.json").read_text(encoding="utf-8")).get("wall_seconds")
        self.done.append({"step": name, "seconds": seconds, "command": shown, "extra": extra})

    def given(self, name: str, output: Path, job: str) -> None:
        """A step done elsewhere (e.g. ``--teacher DIR``): listed with the command and wall time its
        own ``_SUMMARY.json`` records."""
        summary = json.loads((output / "_SUMMARY.json").read_text(encoding="utf-8"))
        self.done.append({"step": name, "seconds": summary.get("wall_seconds"), "extra": False,
                          "command": shlex.join(["python", "-m", job, *summary.get("arguments", [])])})

    def counted_seconds(self) -> float | None:
        """The sum of the counted steps' times, or None when one of them has no time."""
        timed = [s["seconds"] for s in self.done if not s["extra"]]
        return None if any(t is None for t in timed) else sum(timed)

    def table(self) -> list[str]:
        """RESULTS.md's "## Steps" section: every step's minutes and command."""
        lines = ["## Steps", "", "| step | minutes | command |", "|---|---|---|"]
        for s in self.done:
            minutes = "not timed (output given)" if s["seconds"] is None else f"{s['seconds'] / 60:.1f}"
            lines.append(f"| {s['step']} | {minutes}{' (not counted)' if s['extra'] else ''} | `{s['command']}` |")
        return lines

    def footer(self, script: str, total: float, notes: str = "") -> str:
        """The closing line: the command that made the results, and what this invocation did."""
        command = shlex.join(["python", f"benchmarks/{script}", *sys.argv[1:]])
        resumed = (f" ({len(self.skipped)} steps done by an earlier invocation were skipped)"
                   if self.skipped else "")
        return (f"Made by `{command}`; this invocation took {total / 60:.1f} minutes{resumed}; the step times "
                f"above are each step's own.{notes}")


def interval(difference: dict) -> str:
    """A ``--compare`` difference as ``+d [low, high]``."""
    return f"{difference['difference']:+.4f} [{difference['low']:+.4f}, {difference['high']:+.4f}]"


def differences_table(comparisons: list[dict], columns: dict[str, str], verdict_of: str | None = None
                      ) -> list[str]:
    """``evaluate --compare`` differences (metrics.json's "comparisons") as markdown lines: a row per
    comparison, a column per metric (header -> metric key) as ``+d [low, high]``; with
    ``verdict_of`` (one of the headers) a last column with that metric's verdict."""
    headers = ["a − b", *columns] + ([f"verdict ({verdict_of})"] if verdict_of else [])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for c in comparisons:
        d = c["differences"]
        cells = [f"{c['a']} − {c['b']}", *(interval(d[key]) for key in columns.values())]
        cells += [d[columns[verdict_of]]["verdict"]] if verdict_of else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict(difference: dict) -> str:
    """Whether a 95% interval excludes 0, in words."""
    return "clear" if difference["low"] > 0 else ("clearly not" if difference["high"] < 0 else "within noise")


def checkpoint_origin(student: Path, metric: str, label: str | None = None) -> str:
    """Which stage and epoch a student's kept checkpoint came from, with its selection ``metric``
    (shown as ``label``), e.g. ``stage2 epoch 1 (selection MRR@10 0.7419)``; from the student's
    ``_SUMMARY.json``."""
    summary = json.loads((student / "_SUMMARY.json").read_text(encoding="utf-8"))["metrics"]
    value = summary["best_dev"].get(metric, float("nan"))
    return f"{summary['best_stage']} epoch {summary['best_epoch']} (selection {label or metric} {value:.4f})"


def targets_section(checks: list[tuple[str, bool, str]], preface: str) -> list[str]:
    """RESULTS.md's "## Targets": one PASS/FAIL line per (what, ok, detail)."""
    return (["## Targets", "", preface, ""]
            + [f"- {'PASS' if ok else 'FAIL'}: {what} ({detail})" for what, ok, detail in checks])
