"""How long a person waits for a one-line error: each common mistake as a fresh
``python -m jobs.<name>`` process, wall time from launch to exit (status 2).

    python benchmarks/error_latency.py [--repeats 5]

The mistakes: a missing input file, a wrong column (JSON Lines, CSV, Parquet footer), a corrupt
Parquet file, an unknown Beam flag (with its "did you mean"), a misspelt job flag, a Beam flag
with a value its type or choices refuse (read from the installed Beam's source), a non-empty
``--output``, a missing and an incomplete ``--model`` directory, a missing and an incomplete
``--teacher`` (label_pairs), a missing evaluated ``--model`` (evaluate), and a ``--store`` that is
a job output or another model's store. Each is answered by the
pre-flight checks (jobs/preflight.py) before Beam, torch or transformers are imported. Prints the
median (and min / max) over ``--repeats`` runs, interleaved so that a busy moment of a shared
machine spreads over every case, the load average before and after, and, for reference, what
importing the job costs (what each error took before the pre-flight step). Target: 1.5 s each,
at load below 2.
"""
from __future__ import annotations

import argparse
import json
import os
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
        "reference: python -c 'import jobs.score_pairs'": [sys.executable, "-c", "import jobs.score_pairs"],
    }


def time_once(command: list[str], cwd: Path, env: dict[str, str], expect: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - started
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}, expected {expect}: "
                         f"{done.stderr.decode()[-400:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    load_before = os.getloadavg()
    commands = cases()
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="error-latency-") as folder:
        make_inputs(Path(folder))
        for _ in range(args.repeats):
            for name, command in commands.items():
                expect = 0 if name.startswith("reference") else 2
                times[name].append(time_once(command, Path(folder), env, expect))
    width = max(len(name) for name in commands)
    print(f"{'mistake (python -m jobs.<job> ...)':<{width}}  median s    min s    max s  "
          f"(n={args.repeats}, {os.cpu_count()} CPUs)")
    for name, values in times.items():
        median = statistics.median(values)
        flag = "" if name.startswith("reference") else ("  ok" if median <= TARGET_SECONDS else "  OVER 1.5 s")
        print(f"{name:<{width}}  {median:8.2f} {min(values):8.2f} {max(values):8.2f}{flag}")
    print(f"load average before: {', '.join(f'{x:.2f}' for x in load_before)}; "
          f"after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
