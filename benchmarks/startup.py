"""How fast each job starts: to ``--help``, to its pre-flight error, and to its first pair.
Each case is a fresh ``python -m jobs.<name>`` process, timed from launch to exit.

    python benchmarks/startup.py [--repeats 3] [--work DIR] [--no-runs] [--before TREE]

Prints the median (and min / max) over ``--repeats`` interleaved runs (a busy moment of a shared
machine spreads over every case) of:

* **to --help**: ``python -m jobs.<name> --help`` for every job, and ``pairscore --help`` (the
  console script's body); target 1.5 s.
* **to the pre-flight error**: every job given an input that does not exist (exit status 2, one
  line), and score_pairs' bad ``--join``; target 1.5 s.
* **to the first pair**: the examples' 22 pairs (``examples/pairs.jsonl``) scored on the
  in-process runner when every text is already in ``--store`` (a night-one run made first, in
  ``--work``): with a DiPair student (the packaged MiniLM, N=4, M=12, D=128, saved once) and with
  the zero-training baseline. The whole process is timed: its scoring takes milliseconds, so this is
  the time to the first pair. Target 5 s for the student (issue 28); the baseline must load its
  encoder to learn its fingerprint (it has no files of its own to prove it), so it is shown without
  a target. ``encode_texts`` on the examples' texts (40 texts through the encoder) is shown beside it.
* **floor**: ``python -c 'import torch, apache_beam'``, what an in-process scoring run cannot avoid
  importing (the head is a torch module, the runner is Beam's).

``--before TREE`` times the two stored runs also with another checkout's code (e.g. ``git archive
main | tar -x -C TREE``), interleaved with this one's: a before/after in one command. ``--no-runs``
leaves out the runs (then nothing is written). The load average is printed at the
start and the end: on a shared machine every figure moves with it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOBS = ("encode_texts", "score_pairs", "label_pairs", "build_candidates", "train_teacher", "train_student",
        "evaluate")
TARGETS = {"help": 1.5, "pre-flight error": 1.5, "first pair": 5.0}
MISSING = "no-such-input.jsonl"
# Each job's first pre-flight check that fails: an input that does not exist.
PREFLIGHT_ERRORS = {
    "encode_texts": ["--input", MISSING],
    "score_pairs": ["--pairs", MISSING],
    "label_pairs": ["--pairs", MISSING, "--teacher", "no-such-teacher"],
    "build_candidates": ["--left-texts", MISSING, "--right-texts", MISSING, "--top-k", "5"],
    "train_teacher": ["--train", MISSING, "--dev", MISSING],
    "train_student": ["--distill", MISSING, "--dev", MISSING, "--head", "dipair"],
    "evaluate": ["--pairs", MISSING, "--model", "baseline"],
}


class Case:
    def __init__(self, group: str, name: str, command: list[str], target: bool = True, root: Path = REPO):
        self.group, self.name, self.command, self.target, self.root = group, name, command, target, root
        self.seconds: list[float] = []


def job(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"jobs.{name}", *args]


def cases(work: Path | None, before: Path | None = None) -> list[Case]:
    found = [Case("help", f"{name} --help", job(name, "--help")) for name in JOBS]
    found.append(Case("help", "pairscore --help",
                      [sys.executable, "-c", "from jobs.cli import console_main; console_main()", "--help"]))
    out = str((work or Path(tempfile.gettempdir())) / "startup-never-written")
    found += [Case("pre-flight error", f"{name}: missing input", job(name, *args, "--output", out))
              for name, args in PREFLIGHT_ERRORS.items()]
    found.append(Case("pre-flight error", "score_pairs: --join bogus",
                      job("score_pairs", "--pairs", "examples/pairs.jsonl", "--output", out, "--join", "bogus")))
    if work is not None:
        pairs = ["--pairs", "examples/pairs.jsonl", "--keep-cols", "pair_id", "--runner", "DirectRunner",
                 "--overwrite", "--max-dead-letter-fraction", "0.5"]
        pairs[1] = str(REPO / pairs[1])
        for root, label in ((REPO, ""), *(((before, " (--before)"),) if before else ())):
            found.append(Case("first pair", f"score_pairs, all texts in --store, DiPair student{label}", job(
                "score_pairs", *pairs, "--model", str(work / "student"), "--store", str(work / "night-student/store"),
                "--output", str(work / "tonight-student")), target=not label, root=root))
            found.append(Case("first pair", f"score_pairs, all texts in --store, baseline{label}", job(
                "score_pairs", *pairs, "--store", str(work / "night-baseline/store"),
                "--output", str(work / "tonight-baseline")), target=False, root=root))
        found.append(Case("first pair", "encode_texts, 40 example texts (encoder loaded)", job(
            "encode_texts", "--input", "examples/texts.jsonl", "--model", str(work / "student"), "--runner",
            "DirectRunner", "--overwrite", "--output", str(work / "encoded")), target=False))
    found.append(Case("floor", "python -c 'import torch, apache_beam'",
                      [sys.executable, "-c", "import torch, apache_beam"], target=False))
    return found


def prepare(work: Path, env: dict[str, str]) -> None:
    """The student (saved once) and the night-one runs whose stores the timed runs reuse."""
    if not (work / "student" / "config.json").exists():
        subprocess.run([sys.executable, "-c", "import sys\n"
                        "from encoders.checkpoint import build_student, save_student\n"
                        "from encoders.config import StudentConfig\n"
                        "save_student(build_student(StudentConfig(), seed=0), sys.argv[1])", str(work / "student")],
                       cwd=REPO, env=env, check=True)
    for name, model in (("night-student", ["--model", str(work / "student")]), ("night-baseline", [])):
        if not (work / name / "_SUCCESS").exists():
            subprocess.run(job("score_pairs", "--pairs", "examples/pairs.jsonl", "--runner", "DirectRunner",
                               "--output", str(work / name), "--overwrite", *model),
                           cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def time_once(case: Case, env: dict[str, str]) -> float:
    if case.root != REPO:
        env = dict(env, PYTHONPATH=str(case.root))
    started = time.perf_counter()
    done = subprocess.run(case.command, cwd=case.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    expected = 2 if case.group == "pre-flight error" else 0
    if done.returncode != expected:
        raise SystemExit(f"{' '.join(case.command)} exited {done.returncode}, not {expected}: "
                         f"{done.stderr.decode()[-600:]}")
    return seconds


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=None, help="Directory for the student and the runs' outputs "
                        "(default: a temporary one, removed at the end); kept there, it is reused.")
    parser.add_argument("--no-runs", action="store_true", help="Only --help, pre-flight errors and the floor.")
    parser.add_argument("--before", default=None, help="Another checkout whose stored runs are timed too.")
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    print(f"load average at the start: {load()} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="pairscore-startup-") as scratch:
        work = None if args.no_runs else Path(args.work or scratch).resolve()
        if work is not None:
            work.mkdir(parents=True, exist_ok=True)
            prepare(work, env)
        measured = cases(work, Path(args.before).resolve() if args.before else None)
        for _ in range(args.repeats):
            for case in measured:
                case.seconds.append(time_once(case, env))
    width = max(len(case.name) for case in measured)
    print(f"{'case':<{width}}  median s    min s    max s  (n={args.repeats})")
    group = None
    for case in measured:
        if case.group != group:
            group = case.group
            print(f"-- to {group}" + (f" (target {TARGETS[group]} s)" if group in TARGETS else ""))
        median = statistics.median(case.seconds)
        flag = ""
        if case.target and group in TARGETS:
            flag = "  ok" if median <= TARGETS[group] else f"  OVER {TARGETS[group]} s"
        print(f"{case.name:<{width}}  {median:8.2f} {min(case.seconds):8.2f} {max(case.seconds):8.2f}{flag}")
    print(f"load average at the end: {load()}")


if __name__ == "__main__":
    main()
