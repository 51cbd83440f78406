"""How long a person waits for a one-line error: each common mistake as a fresh
``python -m jobs.<name>`` process, wall time from launch to exit (status 2).

    python benchmarks/error_latency.py [--repeats 5] [--repo CHECKOUT] [--timeout 120]

The mistakes: a missing input file, a wrong column (JSON Lines, CSV, Parquet footer), a corrupt
Parquet file, an unknown Beam flag (with its "did you mean"), a misspelt job flag, a Beam flag
with a value its type or choices refuse (read from the installed Beam's source), a non-empty
``--output``, a missing and an incomplete ``--model`` directory, a missing and an incomplete
``--teacher`` (label_pairs), a missing evaluated ``--model`` (evaluate), a ``--store`` that is
a job output or another model's store; and those of issue 24:
a ``--keep-cols`` column that is missing, named twice or named like an output column, numbers out
of range (``--lr nan``, ``--top-k -1``, ``--stall-timeout nan``, ``--weight-decay nan``,
``--max-grad-norm inf``), an output a running job holds, a truncated ``.jsonl.gz``, a
``.parquet.gz``, and one file given twice through a symlink. Each is answered by the flags' types
(jobs/common.py) or the pre-flight checks (jobs/preflight.py) before Beam, torch or transformers
are imported. ``--repo`` times another checkout (the commit before a change, for a before/after
table); a command that does not exit 2 there is shown with its exit status (0: the mistake was
not caught at all), one that runs past ``--timeout`` as such. Prints the
median (and min / max) over ``--repeats`` runs, interleaved so that a busy moment of a shared
machine spreads over every case, the load average before and after, and, for reference, what
importing the job costs (what each error took before the pre-flight step). Target: 1.5 s each,
at load below 2.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 1.5


def make_inputs(folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "pairs.jsonl").write_text(json.dumps({"left": "a red fox", "right": "a fox"}) + "\n")
    (folder / "pairs.csv").write_text("left,right\na red fox,a fox\n")
    pq.write_table(pa.table({"left": ["a red fox"], "right": ["a fox"]}), folder / "pairs.parquet")
    (folder / "corrupt.parquet").write_bytes(b"PAR1 this file was cut short")
    (folder / "busy").mkdir()
    (folder / "busy" / "report.xlsx").write_text("someone's work")
    (folder / "half-model").mkdir()
    (folder / "half-model" / "config.json").write_text(json.dumps({"shared_encoder": True}))
    (folder / "half-teacher").mkdir()            # a teacher whose weights were never copied
    (folder / "half-teacher" / "config.json").write_text(json.dumps({"model_type": "bert",
                                                                    "architectures": ["BertForSequenceClassification"]}))
    (folder / "half-teacher" / "tokenizer.json").write_text("{}")
    (folder / "keyed.jsonl").write_text(json.dumps({"left": "a red fox", "right": "a fox", "pair_id": 1}) + "\n")
    (folder / "held").mkdir()                    # an output a running job holds: this process, alive
    (folder / "held" / "part-00000-of-00001.parquet").write_text("its data")
    (folder / "held" / "_LOCK").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                       "started": "now", "job": "score_pairs", "token": "t"}))
    lines = "".join(json.dumps({"left": f"pair {i}", "right": "a fox"}) + "\n" for i in range(20000))
    (folder / "cut.jsonl.gz").write_bytes(gzip.compress(lines.encode())[:-64])
    (folder / "pairs.parquet.gz").write_bytes(gzip.compress((folder / "pairs.parquet").read_bytes()))
    (folder / "tonight.jsonl").symlink_to(folder / "pairs.jsonl")
    make_store_mistakes(folder)


def make_store_mistakes(folder: Path) -> None:
    """A student checkpoint (its files stand-ins, its fingerprint record real), a job output
    whose store another model wrote: ``--store out`` (the output, not its store/) and
    ``--store out/store`` (another model's) are refused from their manifests and the record."""
    sys.path.insert(0, str(REPO))
    from encoders.file_fingerprint import write_record

    student = folder / "student"
    (student / "encoder").mkdir(parents=True)
    (student / "config.json").write_text(json.dumps({"format": "pairscore-student", "shared_encoder": True}))
    (student / "student.safetensors").write_bytes(b"\0" * 1024)
    (student / "encoder" / "model.safetensors").write_bytes(b"\0" * (1 << 20))
    write_record(student, "a" * 64)
    for side in ("left", "right"):
        (folder / "out" / "store" / side).mkdir(parents=True)
        (folder / "out" / "store" / side / "_MANIFEST.json").write_text(json.dumps(
            {"model_fingerprint": "b" * 64, "side": side, "schema_version": 2, "model_files_fingerprint": "c" * 64}))


def cases() -> dict[str, list[str]]:
    score = [sys.executable, "-m", "jobs.score_pairs"]
    label = [sys.executable, "-m", "jobs.label_pairs", "--pairs", "pairs.jsonl", "--output", "o"]
    evaluate = [sys.executable, "-m", "jobs.evaluate", "--pairs", "pairs.jsonl", "--label-col", "left", "--output", "o"]
    teach = [sys.executable, "-m", "jobs.train_teacher", "--train", "pairs.jsonl", "--dev", "pairs.jsonl",
             "--label-col", "left", "--output", "o"]
    return {
        "missing input file": score + ["--pairs", "missing.jsonl", "--output", "o"],
        "wrong column (JSON Lines)": score + ["--pairs", "pairs.jsonl", "--left-col", "query", "--output", "o"],
        "wrong column (CSV header)": score + ["--pairs", "pairs.csv", "--right-col", "doc", "--output", "o"],
        "wrong column (Parquet footer)": score + ["--pairs", "pairs.parquet", "--left-col", "query", "--output", "o"],
        "corrupt Parquet file": score + ["--pairs", "corrupt.parquet", "--output", "o"],
        "unknown Beam flag": score + ["--pairs", "pairs.jsonl", "--output", "o", "--direct_num_worker=2"],
        "misspelt job flag": score + ["--pairs", "pairs.jsonl", "--output", "o", "--keepcols=pid"],
        "bad Beam value (integer)": score + ["--pairs", "pairs.jsonl", "--output", "o", "--direct_num_workers=two"],
        "bad Beam value (choice)": score + ["--pairs", "pairs.jsonl", "--output", "o", "--direct_running_mode=bogus"],
        "non-empty --output": score + ["--pairs", "pairs.jsonl", "--output", "busy"],
        "missing --model directory": score + ["--pairs", "pairs.jsonl", "--model", "no-model", "--output", "o"],
        "incomplete --model directory": score + ["--pairs", "pairs.jsonl", "--model", "half-model", "--output", "o"],
        "--store: a job output, not its store/": score + ["--pairs", "pairs.jsonl", "--model", "student",
                                                            "--store", "out", "--output", "o"],
        "--store: another model's store": score + ["--pairs", "pairs.jsonl", "--model", "student",
                                                   "--store", "out/store", "--output", "o"],
        "missing --teacher directory": label + ["--teacher", "./runs/teacher"],
        "incomplete --teacher directory": label + ["--teacher", "half-teacher"],
        "missing evaluate --model directory": evaluate + ["--model", "baseline", "--model", "new=runs/student"],
        "--keep-cols column missing": score + ["--pairs", "keyed.jsonl", "--keep-cols", "pid", "--output", "o"],
        "--keep-cols column named twice": score + ["--pairs", "keyed.jsonl", "--keep-cols", "pair_id,pair_id",
                                                   "--output", "o"],
        "--keep-cols column named like an output": score + ["--pairs", "keyed.jsonl", "--keep-cols", "score",
                                                            "--output", "o"],
        "--lr nan (train_student)": [sys.executable, "-m", "jobs.train_student", "--distill", "pairs.parquet",
                                     "--dev", "pairs.jsonl", "--label-col", "left", "--head", "dipair", "--output", "o",
                                     "--lr", "nan"],
        "--top-k -1 (build_candidates)": [sys.executable, "-m", "jobs.build_candidates", "--left-texts", "pairs.jsonl",
                                          "--right-texts", "pairs.jsonl", "--texts-text-col", "left", "--output",
                                          "o", "--top-k", "-1"],
        "--stall-timeout nan": score + ["--pairs", "pairs.jsonl", "--output", "o", "--stall-timeout", "nan"],
        "--weight-decay nan (train_teacher)": teach + ["--weight-decay", "nan"],
        "--max-grad-norm inf (train_teacher)": teach + ["--max-grad-norm", "inf"],
        "--output held by a running job": score + ["--pairs", "pairs.jsonl", "--output", "held"],
        "truncated .jsonl.gz": score + ["--pairs", "cut.jsonl.gz", "--output", "o"],
        ".parquet.gz input": score + ["--pairs", "pairs.parquet.gz", "--output", "o"],
        "one file twice (a symlink)": score + ["--pairs", "pairs.jsonl", "--pairs", "tonight.jsonl", "--output", "o"],
        "reference: python -c 'import jobs.score_pairs'": [sys.executable, "-c", "import jobs.score_pairs"],
    }


def time_once(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[float, int | None]:
    """(seconds from launch to exit, exit status; None when it ran past ``timeout`` and was killed).
    The output a run may have written is removed, so that every run starts alike."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout)
        status: int | None = done.returncode
    except subprocess.TimeoutExpired:
        status = None
    seconds = time.perf_counter() - started
    shutil.rmtree(cwd / "o", ignore_errors=True)
    return seconds, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose jobs are timed")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a run is killed")
    parser.add_argument("--only", default="", help="time only the mistakes whose name this regular expression finds")
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(args.repo), os.environ.get("PYTHONPATH", "")) if p))
    load_before = os.getloadavg()
    commands = {name: command for name, command in cases().items() if re.search(args.only, name)}
    times: dict[str, list[float]] = {name: [] for name in commands}
    statuses: dict[str, set] = {name: set() for name in commands}
    with tempfile.TemporaryDirectory(prefix="error-latency-") as folder:
        make_inputs(Path(folder))
        for _ in range(args.repeats):
            for name, command in commands.items():
                seconds, status = time_once(command, Path(folder), env, args.timeout)
                times[name].append(seconds)
                statuses[name].add(status)
    width = max(len(name) for name in commands)
    print(f"{'mistake (python -m jobs.<job> ...)':<{width}}  median s    min s    max s  "
          f"(n={args.repeats}, {os.cpu_count()} CPUs, {args.repo})")
    for name, values in times.items():
        median = statistics.median(values)
        expect = 0 if name.startswith("reference") else 2
        if statuses[name] != {expect}:
            flag = "  exit " + "/".join("killed" if s is None else str(s) for s in sorted(
                statuses[name], key=lambda s: -1 if s is None else s)) + f" (expected {expect})"
        else:
            flag = "" if expect == 0 else ("  ok" if median <= TARGET_SECONDS else "  OVER 1.5 s")
        print(f"{name:<{width}}  {median:8.2f} {min(values):8.2f} {max(values):8.2f}{flag}")
    print(f"load average before: {', '.join(f'{x:.2f}' for x in load_before)}; "
          f"after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
