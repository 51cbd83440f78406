"""Where does token interaction pay on WikiQA? A sweep of the relevance reproduction's student
settings (trained layers, none to four; tokens kept; stage-2 set size) over one finished
reproduction.

    python benchmarks/sweep_wikiqa.py --base /work/runs/wikiqa-repro2 --teacher /work/runs/teacher-trial/teacher \\
        --out /work/runs/sweep

Each configuration is ``benchmarks/reproduce_wikiqa.py`` with a few flags changed, run in
``OUT/<config>`` on the base run's split, teacher labels and frozen-state caches (hard links, so
every configuration sees the same data and teacher, and nothing is labeled or cached twice). A
configuration whose students and reports exist is not rerun (the reproduction's steps resume), so
the sweep can be stopped and started again; ``--only`` runs some of them.

Writes ``OUT/SWEEP.md``: per configuration, each student's dev MRR@10 and every token head minus
de-cos with its 95% paired-bootstrap interval over questions, plus the same interval widened for
the number of comparisons in the table (Bonferroni): picking the best of several configurations
on dev makes a plain 95% interval that excludes 0 easier to find by chance than it looks.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reproduction import REPO, inside_repo, interval, job_env  # noqa: E402  (after the path)
from encoders.ranking_metrics import query_difference, rank_queries  # noqa: E402

# name -> (what changes, reproduce_wikiqa.py flags). "default" is the base run itself.
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "frozen": ("no stage 2: the encoder stays frozen, only projection and head train", ["--stage2-epochs", "0"]),
    "frozen-seed1": ("frozen, students seeded 1", ["--stage2-epochs", "0", "--seed", "1"]),
    "frozen-seed2": ("frozen, students seeded 2", ["--stage2-epochs", "0", "--seed", "2"]),
    "default": ("the reproduction's defaults: stage 2 on 10,000 sampled pairs, top 2 layers, N 12, M 32", []),
    "stage2-all": ("stage 2 on all 17,475 training pairs", ["--stage2-max-pairs", "17475"]),
    "layers4": ("stage 2 on all pairs, top 4 layers trained", ["--stage2-max-pairs", "17475", "--train-layers", "4"]),
    "tokens-all": ("stage 2 on all pairs, every token kept: N 32, M 64",
                   ["--stage2-max-pairs", "17475", "--n", "32", "--m", "64"]),
}
TOKEN_HEADS = ("dipair", "li")
SHARED = ("data", "distill-train")


def link_base(base: Path, target: Path) -> None:
    """Give ``target`` the base run's split, labels and caches as hard links (no copies)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        if not (target / name).exists():
            subprocess.run(["cp", "-al", str(base / name), str(target / name)], check=True)
    (target / "cache").mkdir(exist_ok=True)
    for state in (base / "cache").glob("*.safetensors"):
        if not (target / "cache" / state.name).exists():
            os.link(state, target / "cache" / state.name)


def differences(report: Path, comparisons: int) -> dict:
    """From a report's ``scores.parquet``: every model's dev MRR@10 and each token head minus
    de-cos, at 95% and at the Bonferroni level for ``comparisons`` comparisons."""
    table = pq.read_table(report / "scores.parquet").to_pydict()
    targets, groups = np.asarray(table["target"]), np.asarray(table["group"])
    models = [c.split(":", 1)[1] for c in table if c.startswith("score:")]
    per_query = {m: rank_queries(np.asarray(table[f"score:{m}"], np.float64), targets, groups).values["mrr@10"]
                 for m in models}
    result = {"mrr": {m: float(np.mean(v)) for m, v in per_query.items()}, "vs_de_cos": {}}
    for head in [h for h in TOKEN_HEADS if h in models and "de-cos" in models]:
        result["vs_de_cos"][head] = (query_difference(per_query[head], per_query["de-cos"]).to_dict(),
                                     query_difference(per_query[head], per_query["de-cos"],
                                                      level=1 - 0.05 / comparisons).to_dict())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="a finished reproduce_wikiqa.py OUT (data, labels, caches)")
    parser.add_argument("--teacher", default=None, help="the base run's teacher, when it was given with --teacher")
    parser.add_argument("--out", required=True, help="one directory per configuration goes here (outside the repo)")
    parser.add_argument("--only", default=",".join(CONFIGS), help="configurations to run (comma-separated)")
    args = parser.parse_args(argv)

    base, out = Path(args.base).resolve(), Path(args.out).resolve()
    if inside_repo(out, "WikiQA (research-only)"):
        return 2
    if not (base / "distill-train" / "_SUMMARY.json").exists():
        print(f"{base} is not a finished WikiQA reproduction (no distill-train/_SUMMARY.json)", file=sys.stderr)
        return 2
    unknown = sorted(set(args.only.split(",")) - set(CONFIGS))
    if unknown:
        print(f"--only {','.join(unknown)} is not allowed: choose from {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    teacher = ["--teacher", str(Path(args.teacher).resolve())] if args.teacher else []

    runs = {}
    for name in args.only.split(","):
        flags = CONFIGS[name][1]
        if not flags:
            runs[name] = base
            continue
        runs[name] = out / name
        link_base(base, runs[name])
        command = [sys.executable, "benchmarks/reproduce_wikiqa.py", "--out", str(runs[name]), *teacher, *flags]
        print(f"\n##### {name}: {shlex.join(command[1:])}", flush=True)
        subprocess.run(command, cwd=REPO, env=job_env(), check=True)

    comparisons = sum(1 for r in runs.values() for h in TOKEN_HEADS if (r / f"student-{h}").exists())
    lines = ["# WikiQA sweep: does a token head beat de-cos?", "",
             f"Base run `{base}` (split, teacher labels, caches shared by every configuration); dev MRR@10 over "
             "the 359 ranked WikiQA dev questions. Intervals: 95% paired bootstrap over questions; "
             f"'Bonferroni' widens them to {1 - 0.05 / max(comparisons, 1):.4f} for the {comparisons} "
             "token-head comparisons in this table.", "",
             "| configuration | what changes | teacher | dipair | li | de-cos | zero-shot | dipair − de-cos (95%) "
             "| li − de-cos (95%) | dipair − de-cos (Bonferroni) | li − de-cos (Bonferroni) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        found = differences(run / "report", max(comparisons, 1))
        mrr, vs = found["mrr"], found["vs_de_cos"]

        def cell(head: str, which: int) -> str:
            return interval(vs[head][which]) if head in vs else "—"
        lines.append(f"| {name} | {CONFIGS[name][0]} | {mrr.get('teacher', float('nan')):.4f} | "
                     f"{mrr.get('dipair', float('nan')):.4f} | {mrr.get('li', float('nan')):.4f} | "
                     f"{mrr.get('de-cos', float('nan')):.4f} | {mrr.get('baseline', float('nan')):.4f} | "
                     f"{cell('dipair', 0)} | {cell('li', 0)} | {cell('dipair', 1)} | {cell('li', 1)} |")
    lines += ["", f"Made by `{shlex.join(['python', 'benchmarks/sweep_wikiqa.py', *sys.argv[1:]])}`; each "
                  "configuration's RESULTS.md has its steps, times and commands."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "SWEEP.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n" + "\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
