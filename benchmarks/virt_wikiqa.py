"""VIRT on WikiQA: does distilling the teacher's cross attention into the towers help the students?

    nice -n 2 python benchmarks/virt_wikiqa.py --repro /work/runs/wikiqa-repro3 > /work/runs/virt-wikiqa.log 2>&1

Reuses a WikiQA reproduction directory made by ``benchmarks/reproduce_wikiqa.py`` (its teacher,
distillation set, selection and dev sets and state caches) and trains each head (dipair, de-cos)
with the reproduction's student settings, VIRT off and on (``--virt-weight``, same seed). The VIRT
weight alpha is chosen from a small sweep (``--alphas``) on one head (``--sweep-head``, de-cos: its
stage 1 is the cheap one; every VIRT run pays a teacher forward per stage-2 pair) by the selection
set's MRR@10 at the best epoch (the same number that picks the epoch); the other heads train with
that alpha. Dev is only evaluated on, once per head with the chosen alpha (the sweep head's while the
others train): ``jobs.evaluate`` grouped by ``qid``, VIRT on against off, paired bootstrap over
questions. Each step is a ``python -m jobs.<name>`` command, printed before it
runs; a step whose output has ``_SUMMARY.json`` is skipped (an interrupted run resumes).

Writes ``OUT/RESULTS.md`` (OUT: ``--out``, default REPRO/virt): the table with intervals, the sweep,
stage 2's pairs/s with and without VIRT, each step's time and command. Data stays outside the
repository.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reproduction import RANKING_COLUMNS, Steps, differences_table, inside_repo  # noqa: E402

HEADS = ("dipair", "de-cos")


def student_flags(repro: Path, args) -> list[str]:
    """The reproduction's student settings (benchmarks/results/wikiqa-one-command-RESULTS.md)."""
    return ["--distill", str(repro / "distill-train"), "--dev", str(repro / "data" / "select.jsonl"),
            "--dev-group-col", "qid", "--select-metric", "mrr@10", "--n", "12", "--m", "32", "--dim", "128",
            "--left-max-length", "32", "--right-max-length", "64", "--human-label-col", "label",
            "--stage1-epochs", "4", "--stage1-batch-size", "256", "--stage2-epochs", "1",
            "--cache-dir", str(repro / "cache"), "--no-progress", "--train-layers", str(args.train_layers),
            "--stage2-max-pairs", str(args.stage2_max_pairs), "--seed", str(args.seed)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repro", default="/work/runs/wikiqa-repro3",
                        help="a reproduce_wikiqa.py output directory (teacher/, distill-train/, data/, cache/)")
    parser.add_argument("--out", default=None, help="where the students and the report go (default REPRO/virt)")
    parser.add_argument("--alphas", default="1,5", help="the VIRT weights swept on the selection set")
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument("--sweep-head", default="de-cos", help="the head alpha is swept on (on the selection set)")
    parser.add_argument("--train-layers", type=int, default=2)
    parser.add_argument("--stage2-max-pairs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    repro = Path(args.repro).resolve()
    out = Path(args.out).resolve() if args.out else repro / "virt"
    if any(inside_repo(path, "WikiQA (research-only)") for path in (repro, out)):
        return 2
    for needed in ("teacher", "distill-train", "data/select.jsonl", "data/dev.jsonl"):
        if not (repro / needed).exists():
            print(f"--repro {repro} has no {needed}: run benchmarks/reproduce_wikiqa.py first", file=sys.stderr)
            return 2
    heads = [h for h in args.heads.split(",") if h]
    if args.sweep_head not in heads:
        print(f"--sweep-head {args.sweep_head!r} is not one of --heads {args.heads!r}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(out)
    step = steps.run

    alphas = [float(a) for a in args.alphas.split(",") if a]
    common = student_flags(repro, args)
    teacher = repro / "teacher"
    runs: dict[str, dict[float, Path]] = {head: {} for head in heads}

    def student(head: str, alpha: float) -> None:
        name = f"{head}-virt{alpha:g}" if alpha else head
        path = out / f"student-{name}"
        virt = ["--teacher", str(teacher), "--virt-weight", f"{alpha:g}"] if alpha else []
        step(f"student {name}", path, ["jobs.train_student", "--head", head, *common, *virt, "--output", str(path)])
        runs[head][alpha] = path

    def summary(head: str, alpha: float) -> dict:
        return json.loads((runs[head][alpha] / "_SUMMARY.json").read_text(encoding="utf-8"))

    def evaluate(head: str, alpha: float, background: bool = False):
        """Dev, once per head: VIRT on (the chosen alpha) against off, paired bootstrap over questions."""
        report = out / f"report-{head}-virt{alpha:g}"
        reports.append(report)
        return step(f"evaluate {head} on WikiQA dev", report,
                    ["jobs.evaluate", "--pairs", str(repro / "data" / "dev.jsonl"), "--group-col", "qid",
                     "--model", f"{head}-virt={runs[head][alpha]}", "--model", f"{head}={runs[head][0.0]}",
                     "--compare", f"{head}-virt,{head}", "--output", str(report)], background=background)

    # The sweep head, off and at every alpha; alpha is chosen on the selection set; its dev
    # evaluation runs while the other heads train with that alpha.
    reports: list[Path] = []
    for alpha in [0.0, *alphas]:
        student(args.sweep_head, alpha)
    best = max(alphas, key=lambda a: (_selection(summary(args.sweep_head, a)), -a))
    waiting = evaluate(args.sweep_head, best, background=True)
    for head in heads:
        if head != args.sweep_head:
            student(head, 0.0)
            student(head, best)
            evaluate(head, best)
    waiting()
    summaries = {head: {alpha: summary(head, alpha) for alpha in by_alpha} for head, by_alpha in runs.items()}
    write_results(out, reports, summaries, {head: best for head in heads}, steps, args)
    return 0


def _selection(summary: dict) -> float:
    return summary["metrics"]["best_dev"]["mrr@10"]


def _stage2_speed(summary: dict) -> float | None:
    speeds = [r["pairs_per_second"] for r in summary["metrics"]["epochs"] if r["stage"] == "stage2"]
    return sum(speeds) / len(speeds) if speeds else None


def _speed_text(summary: dict) -> str:
    speed = _stage2_speed(summary)
    return "—" if speed is None else f"{speed:,.1f}"


def write_results(out: Path, reports: list[Path], summaries: dict, chosen: dict, steps: Steps, args) -> None:
    parts = [json.loads((report / "metrics.json").read_text(encoding="utf-8")) for report in reports]
    metrics = {**parts[0], "models": {k: v for part in parts for k, v in part["models"].items()},
               "comparisons": [c for part in parts for c in part["comparisons"]]}
    models = metrics["models"]
    first = next(iter(models.values()))["ranking"]
    lines = ["# VIRT on WikiQA", "",
             f"The students of `{args.repro}` (benchmarks/reproduce_wikiqa.py: N = 12, M = 32, D = 128, max lengths "
             f"32 / 64, stage 2 trains the top {args.train_layers} encoder layers on {args.stage2_max_pairs:,} pairs, "
             f"seed {args.seed}) retrained with VIRT off and on (`--teacher {args.repro}/teacher --virt-weight "
             "ALPHA`: the teacher's cross attention maps distilled into the trained layers, paper eq. 5-7). "
             f"ALPHA swept on {args.sweep_head} ({args.alphas}) and chosen by its selection MRR@10; the other heads "
             "train with it. "
             f"Evaluated on `{metrics['pairs']['paths'][0]}` ({metrics['pairs']['count']:,} pairs; "
             f"{first['queries']:,} of {first['queries_total']:,} questions ranked). ALPHA is chosen on the "
             "selection set only; dev evaluated once. Machine: "
             f"{metrics['machine']['torch_threads']} torch threads, {metrics['machine']['platform']}, shared with "
             "other work (speeds are comparable only roughly).", "",
             "| model | alpha | MRR@10 | MAP | nDCG@10 | AUC | selection MRR@10 | checkpoint from | stage 2 pairs/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, result in models.items():
        head = name.removesuffix("-virt")
        alpha = chosen[head] if name.endswith("-virt") else 0.0
        summary = summaries[head][alpha]["metrics"]
        r = result["ranking"]
        lines.append(f"| {name} | {alpha:g} | {r['mrr@10']:.4f} | {r['map']:.4f} | {r['ndcg@10']:.4f} | "
                     f"{result['quality']['auc']:.4f} | {summary['best_dev']['mrr@10']:.4f} | "
                     f"{summary['best_stage']} epoch {summary['best_epoch']} | "
                     f"{_speed_text(summaries[head][alpha])} |")
    lines += ["", "Differences on dev (VIRT on − off), 95% paired bootstrap over questions (AUC: over pairs):", "",
              *differences_table(metrics["comparisons"], RANKING_COLUMNS, verdict_of="MRR@10")]
    lines += ["", "## The sweep (selection set only)", "",
              "| head | alpha | selection MRR@10 (best epoch) | best epoch | mean VIRT loss in stage 2 | "
              "stage 2 pairs/s |", "|---|---|---|---|---|---|"]
    for head, by_alpha in summaries.items():
        for alpha in sorted(by_alpha):
            summary = by_alpha[alpha]["metrics"]
            virt = [r["virt_loss"] for r in summary["epochs"] if "virt_loss" in r]
            mark = " (chosen)" if alpha == chosen[head] else ""
            lines.append(f"| {head} | {alpha:g}{mark} | {summary['best_dev']['mrr@10']:.4f} | {summary['best_stage']} "
                         f"epoch {summary['best_epoch']} | {', '.join(f'{v:.4f}' for v in virt) or '—'} | "
                         f"{_speed_text(by_alpha[alpha])} |")
    lines += ["", "Stage 2 pairs/s is the encoder-training stage's own speed (train steps only; with VIRT it includes "
                  "the teacher's eager-attention forward over each pair).", "", *steps.table()]
    command = shlex.join(["python", "benchmarks/virt_wikiqa.py", *sys.argv[1:]])
    lines += ["", f"Made by `{command}`; plots and every metric: "
                  f"{', '.join(report.name + '/report.md' for report in reports)}."]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n" + "\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
