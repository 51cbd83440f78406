"""Threads that fit the slot: the head's and the scoring core's pairs/s on 1 and 2 cores, with and
without a competing busy process, under the old thread sizing and the new one.

    python benchmarks/threads.py [--repeats 3] [--seconds 1.5]

Each figure is a fresh process pinned with ``taskset`` to the cores of its row (``0`` or ``0,1``):

* before: torch's threads as ``torch_threads_for`` sized them (``os.cpu_count() // processes``,
  the whole machine whatever the affinity), OpenMP's default (spinning) waiting policy;
* after: ``encoders.threads.ThreadPlan`` (the process's share of its affinity) and
  ``OMP_WAIT_POLICY=PASSIVE``, as the command-line entry sets it.

"busy" starts ``python -c 'while True: pass'`` pinned to core 0 for the row (another task on a
shared core). Figures: ``head``, the dipair head alone (N=4, M=12, D=128, L=2, FFN 1024, fp32,
batch 4096, ``HeadScorer.score`` on stored float16 tokens); ``end to end``, the scoring core on
Parquet batches of id pairs (``pipeline.scoring_core.score_batch``: validate, look up both stores,
gather, head, output table), no Beam. Medians of ``--repeats`` interleaved runs.
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
sys.path.insert(0, str(REPO))


def child(mode: str, seconds: float, workdir: str) -> None:
    """One measurement in this (pinned) process: prints ``RESULT {json}``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from benchmarks.gpu_score import build_core
    from encoders.threads import ThreadPlan

    if mode == "before":
        torch.set_num_threads(max(1, os.cpu_count() or 1))   # the old torch_threads_for(1)
    else:
        ThreadPlan().apply()
    core = build_core("cpu", batch_size=4096, rows=4096)
    left, right = core.left.gather(np.arange(4096)), core.right.gather(np.arange(4096)[::-1])

    def rate(call, pairs: int) -> float:
        call()
        runs, spent = [], 0.0
        while spent < seconds or len(runs) < 3:
            start = time.perf_counter()
            call()
            runs.append(time.perf_counter() - start)
            spent += runs[-1]
        return pairs / statistics.median(runs)

    head = rate(lambda: core.scorer.score(left, right), 4096)
    table = pq.read_table(Path(workdir) / "pairs.parquet")
    end_to_end = rate(lambda: [core.score_batch(pa.Table.from_batches([part])) for part in table.to_batches(4096)], table.num_rows)
    print("RESULT " + json.dumps({"head": head, "end_to_end": end_to_end, "threads": torch.get_num_threads()}))


def measure(mode: str, cores: str, seconds: float, workdir: str) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if mode == "after":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    done = subprocess.run(["taskset", "-c", cores, sys.executable, __file__, "--child", mode, "--seconds", str(seconds),
                           "--workdir", workdir], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per figure and run")
    parser.add_argument("--child", choices=("before", "after"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds, args.workdir)
        return
    from benchmarks.gpu_score import write_pairs_file

    print(f"{os.cpu_count()} CPUs; medians of {args.repeats} interleaved runs; pairs/s")
    print(f"{'cores':<6} {'busy':<5} {'figure':<11} {'before':>9} {'after':>9} {'after/before':>13}  threads b/a")
    with tempfile.TemporaryDirectory() as workdir:
        write_pairs_file(Path(workdir) / "pairs.parquet", pairs=8192, rows=4096)
        for cores in ("0", "0,1"):
            for busy in (False, True):
                spinner = (subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
                           if busy else None)
                try:
                    runs = {"before": [], "after": []}
                    for _ in range(args.repeats):
                        for mode in runs:
                            runs[mode].append(measure(mode, cores, args.seconds, workdir))
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
                for figure in ("head", "end_to_end"):
                    before = statistics.median(r[figure] for r in runs["before"])
                    after = statistics.median(r[figure] for r in runs["after"])
                    print(f"{len(cores.split(',')):<6} {'yes' if busy else 'no':<5} {figure.replace('_', ' '):<11} "
                          f"{before:>9,.0f} {after:>9,.0f} {after / before:>12.2f}x  "
                          f"{runs['before'][0]['threads']}/{runs['after'][0]['threads']}", flush=True)


if __name__ == "__main__":
    main()
