"""How fast the command line answers: ``--help`` of every job and a bad argument, each a fresh
``python -m jobs.<name>`` process, wall time from launch to exit.

    python benchmarks/startup.py [--repeats 5]

Prints the median (and min / max) over ``--repeats`` runs of:

* ``python -m jobs.<name> --help`` for every job, and ``pairscore --help`` (as
  ``python -c 'from jobs.cli import console_main; console_main()'``, the console script's body);
* ``python -m jobs.score_pairs --pairs p.jsonl --output o --join bogus`` (exit status 2);
* for reference, what a job run pays before it can start: ``python -c 'import jobs.score_pairs'``
  (Beam, torch, transformers), i.e. what ``--help`` took before the command lines went lazy.

Targets: ``score_pairs --help`` and the bad ``--join`` at most 1.5 s. Runs are
interleaved so that a busy moment of a shared machine spreads over every case.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
JOBS = ("encode_texts", "score_pairs", "label_pairs", "build_candidates", "train_teacher", "train_student",
        "evaluate")
TARGET_SECONDS = 1.5


def cases() -> dict[str, list[str]]:
    python = sys.executable
    found = {f"python -m jobs.{job} --help": [python, "-m", f"jobs.{job}", "--help"] for job in JOBS}
    found["pairscore --help"] = [python, "-c", "from jobs.cli import console_main; console_main()", "--help"]
    found["python -m jobs.score_pairs ... --join bogus (exit 2)"] = [
        python, "-m", "jobs.score_pairs", "--pairs", "p.jsonl", "--output", "o", "--join", "bogus"]
    found["reference: python -c 'import jobs.score_pairs'"] = [python, "-c", "import jobs.score_pairs"]
    return found


def time_once(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 2):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()[-400:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    commands = cases()
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            times[name].append(time_once(command, env))
    width = max(len(name) for name in commands)
    print(f"{'command':<{width}}  median s    min s    max s  (n={args.repeats}, {os.cpu_count()} CPUs)")
    for name, values in times.items():
        median = statistics.median(values)
        flag = "" if name.startswith("reference") else ("  ok" if median <= TARGET_SECONDS else "  OVER 1.5 s")
        print(f"{name:<{width}}  {median:8.2f} {min(values):8.2f} {max(values):8.2f}{flag}")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
