"""Graded similarity on STS-B, end to end with pairscore's jobs, in one command.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/reproduce_stsb.py --out /work/runs/stsb-repro
    python benchmarks/reproduce_stsb.py --out /tmp/stsb-smoke --limit 120     # every step, in minutes

Does a DiPair / late-interaction head over a few stored token embeddings score graded similarity
(0-5) better than the cosine of pooled embeddings, and close to the cross-encoder it learns from?
The zero-shot cosine of the packaged MiniLM already reads Pearson ~0.87 on STS-B dev (its
pretraining saw STS-like data), so this is a hard place to beat it. Steps (each a
``python -m jobs.<name>`` command, printed before it runs; a step whose output already has
``_SUMMARY.json`` is skipped, so an interrupted run resumes where it stopped):

1. data: ``../shared/data/stsb/train.jsonl`` is split *by sentence* into training pairs and a
   selection set (at least ``--select-pairs`` pairs): pairs are linked through shared sentences,
   and whole linked groups go to one side, so no sentence of a selection pair is in a training
   pair (nor in the mined pairs). Dev (``stsb/dev.jsonl``) is only evaluated on. What still leaks:
   249 of dev's 2,910 sentences also occur in STS-B train (the benchmark's own overlap; dev pairs
   are never trained on), and the packaged MiniLM's pretraining data is not known pair by pair.
2. teacher: ``train_teacher --task graded --label-range 0,5`` (a MiniLM-L6 cross-encoder; BCE on
   the label mapped to [0, 1]) on the training pairs, both orders (``--swap``); best epoch by
   Spearman on the selection pairs.
3. candidates: ``build_candidates`` mines each training sentence's ``--top-k`` nearest training
   sentences and ``--random-per-left`` random ones (low-similarity pairs, which STS-B has many of).
4. distillation set: ``label_pairs`` labels the training pairs (human labels kept and mixed into the
   students' loss) and the mined pairs (teacher only).
5. students: ``train_student`` with each head (dipair, li, de-cos by default), N = M tokens, both
   orders (``--swap``), two-stage: stage 1 with the encoder frozen (its outputs cached once),
   stage 2 training the top ``--train-layers`` encoder layers on the cached lower layers' states,
   each epoch's checkpoint chosen by Spearman on the selection pairs. The heads share the caches.
6. ``evaluate --task graded`` on STS-B dev: Pearson and Spearman of the teacher, every student and
   the zero-shot cosine (``baseline``), with 95% paired-bootstrap intervals over pairs of the
   differences (each token head against de-cos, each student against the teacher and the cosine).

Writes ``OUT/RESULTS.md`` (table, intervals, targets, which stage each student's checkpoint came
from, each step's time and command). The data never enters the repository: everything is under OUT.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reproduction import (DATA, Steps, checkpoint_origin, differences_table, inside_repo,  # noqa: E402
                                     interval, targets_section, verdict)

STSB = DATA / "stsb"
HEADS = ("dipair", "li", "de-cos")
TOKEN_HEADS = ("dipair", "li", "dipair-ffnn")
LABEL_RANGE = "0,5"
TARGET_MINUTES = 45


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="everything goes here (keep it outside the repository)")
    parser.add_argument("--limit", type=int, default=None,
                        help="smoke test: about N training pairs and N dev pairs, short schedules")
    parser.add_argument("--teacher", default=None, help="an existing teacher checkpoint instead of training one")
    parser.add_argument("--select-pairs", type=int, default=1000,
                        help="training pairs held out (with every pair sharing a sentence with them) for selection")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--teacher-lr", type=float, default=4e-5)
    parser.add_argument("--teacher-max-length", type=int, default=96, help="tokens per pair (99.9%% of pairs fit)")
    parser.add_argument("--top-k", type=int, default=2, help="mined nearest neighbours per training sentence")
    parser.add_argument("--random-per-left", type=int, default=1, help="random pairs per training sentence")
    parser.add_argument("--n", type=int, default=20, help="N = M, tokens kept per sentence (82%% of sentences whole)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=48, help="student tokenizer max length (99.9%% fit)")
    parser.add_argument("--train-layers", type=int, default=2, help="top encoder layers trained in stage 2")
    parser.add_argument("--stage1-epochs", type=int, default=4, help="most stage-1 epochs (early stop, patience 2)")
    parser.add_argument("--stage2-epochs", type=int, default=1)
    parser.add_argument("--stage2-max-pairs", type=int, default=20_000,
                        help="pairs per stage-2 epoch, a random sample of the distillation set (sized for the time)")
    parser.add_argument("--human-label-weight", type=float, default=0.5,
                        help="weight of the human label against the teacher's where a pair has one")
    parser.add_argument("--heads", default=",".join(HEADS), help="heads to train (comma-separated)")
    parser.add_argument("--fresh", action="store_true", help="rerun steps whose output already exists")
    args = parser.parse_args(argv)

    if not (STSB / "train.jsonl").exists():
        print(f"STS-B not found at {STSB}: this reproduction reads ../shared/data", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if inside_repo(out, "STS-B"):
        return 2
    out.mkdir(parents=True, exist_ok=True)
    small = args.limit is not None
    steps = Steps(out, fresh=args.fresh)
    step = steps.run

    started = time.monotonic()
    data = out / "data"
    split = prepare_data(data, args.limit, args.select_pairs)
    train, select, dev, sentences = (data / "train.jsonl", data / "select.jsonl", data / "dev.jsonl",
                                     data / "sentences.jsonl")
    graded = ["--task", "graded", "--label-range", LABEL_RANGE]

    teacher = Path(args.teacher) if args.teacher else out / "teacher"
    if not args.teacher:
        step("teacher", teacher, ["jobs.train_teacher", "--train", str(train), "--dev", str(select), *graded,
                                  "--swap", "--epochs", str(args.teacher_epochs),
                                  "--max-length", str(args.teacher_max_length), "--lr", str(args.teacher_lr),
                                  "--batch-size", "32", "--no-progress", "--output", str(teacher)])
    else:
        steps.given("teacher (given with --teacher)", teacher, "jobs.train_teacher")
    candidates = out / "candidates"
    step("candidates", candidates, ["jobs.build_candidates", "--left-texts", str(sentences), "--right-texts",
                                    str(sentences), "--top-k", str(args.top_k), "--random-per-left",
                                    str(args.random_per_left), "--max-length", str(args.max_length),
                                    "--no-progress", "--output", str(candidates)])
    distill_train, distill_mined = out / "distill-train", out / "distill-mined"
    step("label training pairs", distill_train, ["jobs.label_pairs", "--pairs", str(train), "--teacher", str(teacher),
                                                 "--keep-cols", "label", "--output", str(distill_train)])
    step("label mined pairs", distill_mined, ["jobs.label_pairs", "--pairs", str(candidates), "--teacher",
                                              str(teacher), "--left-id-col", "left_id", "--right-id-col", "right_id",
                                              "--keep-cols", "source", "--output", str(distill_mined)])

    common = ["--distill", str(distill_train), "--distill", str(distill_mined), "--dev", str(select),
              "--n", str(args.n), "--m", str(args.n), "--dim", str(args.dim),
              "--left-max-length", str(args.max_length), "--right-max-length", str(args.max_length), "--swap",
              "--human-label-col", "label", "--human-label-weight", f"{args.human_label_weight:g}",
              "--stage1-epochs", str(2 if small else args.stage1_epochs),
              "--stage1-batch-size", "256", "--stage2-epochs", str(args.stage2_epochs),
              "--train-layers", str(args.train_layers), "--cache-dir", str(out / "cache"), "--no-progress"]
    if args.stage2_max_pairs and not small:
        common += ["--stage2-max-pairs", str(args.stage2_max_pairs)]
    students = {}
    for head in [h for h in args.heads.split(",") if h]:
        students[head] = out / f"student-{head}"
        step(f"student {head}", students[head], ["jobs.train_student", "--head", head, *common,
                                                 "--output", str(students[head])])

    models = [f"teacher={teacher}", *(f"{name}={path}" for name, path in students.items()), "baseline"]
    compares = [f"{head},de-cos" for head in students if head != "de-cos" and "de-cos" in students]
    compares += [f"{head},baseline" for head in students] + [f"{head},teacher" for head in students]
    compares += ["teacher,baseline"]
    report = out / "report"
    step("evaluate on STS-B dev", report, ["jobs.evaluate", "--pairs", str(dev), *graded,
                                           *sum((["--model", m] for m in models), []),
                                           *sum((["--compare", c] for c in compares), []), "--output", str(report)])
    write_results(out, report, students, steps, time.monotonic() - started, args, split)
    return 0


def _components(rows: list[dict]) -> list[list[int]]:
    """Row indices grouped by shared sentences (union-find over the sentences of each pair), each
    group in file order, groups in order of their first row."""
    parent: dict[str, str] = {}

    def find(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for row in rows:
        a, b = find(row["left"]), find(row["right"])
        if a != b:
            parent[a] = b
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(find(row["left"]), []).append(i)
    return list(groups.values())


def prepare_data(data: Path, limit: int | None, select_pairs: int) -> dict:
    """STS-B train -> DATA/train.jsonl + DATA/select.jsonl, split by sentence: seeded random groups
    of pairs linked by a shared sentence go to selection until it holds ``select_pairs`` pairs
    (groups larger than a tenth of that stay in training, so one cluster cannot fill it);
    DATA/sentences.jsonl (the training pairs' unique sentences, for mining) and DATA/dev.jsonl.
    With ``limit``: the first ``limit`` + a fifth training rows, a fifth of them (at least 20) for
    selection, the first ``limit`` dev rows. Returns the counts (kept in DATA/split.json)."""
    summary = data / "split.json"
    if summary.exists():
        return json.loads(summary.read_text(encoding="utf-8"))
    data.mkdir(parents=True, exist_ok=True)

    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    rows, dev = read(STSB / "train.jsonl"), read(STSB / "dev.jsonl")
    if limit is not None:
        select_pairs = max(limit // 5, 20)
        rows, dev = rows[:limit + select_pairs], dev[:limit]
    groups = _components(rows)
    random.Random(0).shuffle(groups)
    chosen: set[int] = set()
    for group in groups:
        if len(chosen) >= select_pairs:
            break
        if len(group) <= max(select_pairs // 10, 1):
            chosen.update(group)
    train = [r for i, r in enumerate(rows) if i not in chosen]
    select = [r for i, r in enumerate(rows) if i in chosen]
    train_sentences = sorted({t for r in train for t in (r["left"], r["right"])})
    select_sentences = {t for r in select for t in (r["left"], r["right"])}
    assert not select_sentences & set(train_sentences), "a sentence in both the training and selection pairs"
    keys = ("id", "left", "right", "label", "genre")
    tables = {"train": train, "select": select, "dev": dev}
    for name, table in tables.items():
        with open(data / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps({k: r[k] for k in keys if k in r}, ensure_ascii=False) + "\n"
                              for r in table)
    with open(data / "sentences.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in train_sentences)
    dev_sentences = {t for r in dev for t in (r["left"], r["right"])}
    counts = {name: {"pairs": len(table), "sentences": len({t for r in table for t in (r["left"], r["right"])})}
              for name, table in tables.items()}
    counts["dev"]["sentences_also_in_training_pairs"] = len(dev_sentences & set(train_sentences))
    counts["dev"]["sentences_also_in_selection_pairs"] = len(dev_sentences & select_sentences)
    summary.write_text(json.dumps(counts, indent=2), encoding="utf-8")
    print("data: " + "; ".join(f"{k} {v['pairs']:,} pairs / {v['sentences']:,} sentences" for k, v in counts.items()),
          flush=True)
    return counts


def write_results(out: Path, report: Path, students: dict[str, Path], steps: Steps, total: float, args,
                  split: dict) -> None:
    """OUT/RESULTS.md: the graded table, intervals, targets, stages, steps."""
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    models = metrics["models"]
    origin = {name: checkpoint_origin(path, "spearman", "Spearman") for name, path in students.items()}
    distilled = sum(json.loads((out / name / "_SUMMARY.json").read_text(encoding="utf-8")).get("counts", {})
                    .get("pairs_labeled", 0) for name in ("distill-train", "distill-mined"))
    lines = [f"# STS-B reproduction ({'smoke test, --limit ' + str(args.limit) if args.limit else 'full'})", "",
             f"Graded similarity (0-5). Evaluated on `{metrics['pairs']['paths'][0]}` ({metrics['pairs']['count']:,} "
             f"pairs). Teacher and students trained on {split['train']['pairs']:,} pairs "
             f"({split['train']['sentences']:,} sentences); best epochs chosen by Spearman on "
             f"{split['select']['pairs']:,} other training pairs that share no sentence with them. Of dev's "
             f"{split['dev']['sentences']:,} sentences, {split['dev']['sentences_also_in_training_pairs']:,} also "
             f"occur in a training pair and {split['dev']['sentences_also_in_selection_pairs']:,} in a selection pair "
             f"(STS-B's own overlap; no dev pair is trained on). Distillation set: the training pairs and the pairs "
             f"mined among their sentences (top {args.top_k} neighbours and {args.random_per_left} random per "
             f"sentence), {distilled:,} pairs labeled by the teacher. Students: N = M = {args.n}, D = {args.dim}, max "
             f"length {args.max_length}, both orders, human labels at weight {args.human_label_weight:g}; stage 2 "
             f"trains the top {args.train_layers} encoder layers on "
             f"{'a smoke-test sample' if args.limit else f'{args.stage2_max_pairs:,} pairs per epoch'}. Teacher: "
             + (f"`{args.teacher}` (given)" if args.teacher else
                f"MiniLM-L6 cross-encoder, graded (BCE on label / 5), {args.teacher_epochs} epochs over both orders "
                f"at lr {args.teacher_lr:g}, max length {args.teacher_max_length}")
             + f". Machine: {metrics['machine']['torch_threads']} torch threads, {metrics['machine']['platform']}.", "",
             "| model | Pearson | Spearman | Pearson − teacher | checkpoint from | pairs/s end to end |",
             "|---|---|---|---|---|---|"]
    pearson = {name: result["quality"]["pearson"] for name, result in models.items()}
    for name, result in models.items():
        q = result["quality"]
        lines.append(f"| {name} | {q['pearson']:.4f} | {q['spearman']:.4f} | {q['pearson'] - pearson['teacher']:+.4f} | "
                     f"{origin.get(name, '—')} | {result['speed']['pairs_per_second']:,.0f} |")
    lines += ["", "Differences on dev, 95% paired bootstrap over pairs:", "",
              *differences_table(metrics["comparisons"], {"Pearson": "pearson", "Spearman": "spearman"})]
    by_pair = {(c["a"], c["b"]): c["differences"] for c in metrics["comparisons"]}

    checks = []
    heads = [h for h in students if h in TOKEN_HEADS]
    if heads and "de-cos" in students:
        best = max(heads, key=lambda h: pearson[h])
        d = by_pair[(best, "de-cos")]["pearson"]
        checks.append((f"the best token head ({best}) beats de-cos on Pearson with an interval excluding 0",
                       d["low"] > 0, f"{interval(d)}: {verdict(d)}"))
    if students:
        top = max(students, key=lambda h: pearson[h])
        d = by_pair[(top, "baseline")]["pearson"]
        checks.append((f"best student ({top}) Pearson >= zero-shot cosine + 0.02",
                       pearson[top] >= pearson["baseline"] + 0.02,
                       f"{pearson[top]:.4f} vs {pearson['baseline'] + 0.02:.4f}; difference {interval(d)}"))
        d = by_pair[(top, "teacher")]["pearson"]
        checks.append((f"best student ({top}) Pearson >= teacher's - 0.02", pearson[top] >= pearson["teacher"] - 0.02,
                       f"{pearson[top]:.4f} vs {pearson['teacher'] - 0.02:.4f}; difference {interval(d)}"))
        checks.append(("the chosen checkpoint of at least one student comes from stage 2 (encoder trained)",
                       any(o.startswith("stage2") for o in origin.values()),
                       ", ".join(f"{k}: {v}" for k, v in origin.items())))
    seconds = steps.counted_seconds()
    if seconds is not None:
        checks.append((f"whole run under {TARGET_MINUTES} minutes", seconds < TARGET_MINUTES * 60,
                       f"{seconds / 60:.1f} minutes, the sum of the steps"))
    lines += ["", *targets_section(checks, "PASS / FAIL compare point estimates; intervals are 95% paired bootstrap "
                                           "over dev's pairs.")]
    lines += ["", *steps.table()]
    lines += ["", steps.footer("reproduce_stsb.py", total, " Plots and every metric: report/report.md.")]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n" + "\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
