"""Relevance ranking on WikiQA (question -> answer sentence), end to end with pairscore's jobs, in one command.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/reproduce_wikiqa.py --out /work/runs/wikiqa-repro
    python benchmarks/reproduce_wikiqa.py --out /tmp/wikiqa-smoke --limit 300     # every step, in minutes

Does a DiPair / late-interaction head over a few stored token embeddings rank a question's candidate
answers better than the cosine of pooled embeddings (de-cos), the cheap alternative? Steps (each a
``python -m jobs.<name>`` command, printed before it runs; a step whose output already has
``_SUMMARY.json`` is skipped, so an interrupted run resumes where it stopped):

1. data: ``../shared/data/wikiqa/train.jsonl`` is split *by question* (``qid``) into training
   questions and a selection set (``--select-fraction`` of the questions; no question is in both)
   on which every model picks its best epoch (by MRR@10). Dev
   (``wikiqa/dev.jsonl``: the original dev + test questions) is only evaluated on.
2. teacher: ``train_teacher``, a MiniLM-L6 cross-encoder, on a class-balanced sample of the training
   pairs: every correct answer and ``--teacher-negatives`` (3) random wrong ones per correct one.
   Only ~5% of WikiQA candidates are correct; one epoch on all of them at lr 3e-5 left the teacher
   at the prior (train loss ~ the label entropy, selection AUC 0.70, below the zero-shot cosine's
   0.79), so the teacher sees balanced data for 3 epochs at lr 6e-5 instead.
3. distillation set: ``label_pairs`` labels every candidate pair of the training questions (the
   human labels are kept and mixed into the students' loss).
4. students: ``train_student`` with each head (dipair, li, de-cos by default), question on the left
   (N tokens), sentence on the right (M tokens), two-stage: stage 1 with the encoder frozen (its
   outputs cached once), stage 2 training the top ``--train-layers`` encoder layers on the cached
   lower layers' states. All heads share the caches (``--cache-dir``).
5. evaluate on WikiQA dev, grouped by ``qid``: MRR@10, MAP, nDCG@10 (and AUC), the teacher, every
   student and the zero-shot cosine (``baseline``), with 95% paired-bootstrap intervals over
   questions for each token head against de-cos.
6. transfer: the same models on ``../shared/data/trecqa/dev.jsonl``, grouped by the question text.

Writes ``OUT/RESULTS.md`` (tables, intervals, targets, which stage each student's checkpoint came
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
from benchmarks.reproduction import (DATA, RANKING_COLUMNS, Steps, checkpoint_origin,  # noqa: E402  (after the path)
                                     differences_table, inside_repo, interval, targets_section)

WIKIQA, TRECQA = DATA / "wikiqa", DATA / "trecqa"
HEADS = ("dipair", "li", "de-cos")
TOKEN_HEADS = ("dipair", "li", "dipair-ffnn")
TARGET_MINUTES = 80


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="everything goes here (keep it outside the repository)")
    parser.add_argument("--limit", type=int, default=None,
                        help="smoke test: about N training pairs, N dev pairs and N TrecQA pairs (whole questions), "
                             "short schedules")
    parser.add_argument("--teacher", default=None, help="an existing teacher checkpoint instead of training one")
    parser.add_argument("--select-fraction", type=float, default=0.15, help="training questions held out for selection")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--teacher-lr", type=float, default=6e-5)
    parser.add_argument("--teacher-max-length", type=int, default=64, help="tokens per pair (90%% of WikiQA pairs fit)")
    parser.add_argument("--teacher-negatives", type=int, default=3,
                        help="wrong answers per correct one in the teacher's (balanced) training sample; 0: all pairs")
    parser.add_argument("--n", type=int, default=12, help="question tokens kept (86%% of questions whole)")
    parser.add_argument("--m", type=int, default=32, help="sentence tokens kept (63%% of sentences whole)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--left-max-length", type=int, default=32)
    parser.add_argument("--right-max-length", type=int, default=64, help="95%% of sentences fit")
    parser.add_argument("--train-layers", type=int, default=2, help="top encoder layers trained in stage 2")
    parser.add_argument("--stage1-epochs", type=int, default=4, help="most stage-1 epochs (early stop, patience 2)")
    parser.add_argument("--stage2-epochs", type=int, default=1, help="0: stage 1 only, the encoder stays frozen")
    parser.add_argument("--stage2-max-pairs", type=int, default=10_000,
                        help="pairs per stage-2 epoch, a random sample (of ~17.5k; sized for the time budget)")
    parser.add_argument("--seed", type=int, default=0, help="the students' seed (initialisation, dropout, batch order)")
    parser.add_argument("--heads", default=",".join(HEADS), help="heads to train (comma-separated)")
    parser.add_argument("--fresh", action="store_true", help="rerun steps whose output already exists")
    args = parser.parse_args(argv)

    if not (WIKIQA / "train.jsonl").exists():
        print(f"WikiQA not found at {WIKIQA}: this reproduction reads ../shared/data", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if inside_repo(out, "WikiQA (research-only)"):
        return 2
    out.mkdir(parents=True, exist_ok=True)
    small = args.limit is not None
    steps = Steps(out, fresh=args.fresh)
    step = steps.run

    started = time.monotonic()
    data = out / "data"
    split = prepare_data(data, args.limit, args.select_fraction)
    train, select, dev, trec = data / "train.jsonl", data / "select.jsonl", data / "dev.jsonl", data / "trecqa-dev.jsonl"

    teacher = Path(args.teacher) if args.teacher else out / "teacher"
    if not args.teacher:
        teacher_train = balanced_sample(train, data / f"teacher-train-{args.teacher_negatives}.jsonl",
                                        args.teacher_negatives)
        step("teacher", teacher, ["jobs.train_teacher", "--train", str(teacher_train), "--dev", str(select),
                                  "--task", "binary", "--epochs", str(args.teacher_epochs),
                                  "--max-length", str(args.teacher_max_length), "--lr", str(args.teacher_lr),
                                  "--batch-size", "32", "--no-progress", "--output", str(teacher)])
    else:
        # Trained elsewhere: report the command and time its own summary records.
        steps.given("teacher (given with --teacher)", teacher, "jobs.train_teacher")
    distill = out / "distill-train"
    step("label training pairs", distill, ["jobs.label_pairs", "--pairs", str(train), "--teacher", str(teacher),
                                           "--keep-cols", "label,qid", "--output", str(distill)])

    common = ["--distill", str(distill), "--dev", str(select), "--dev-group-col", "qid", "--select-metric", "mrr@10",
              "--n", str(args.n), "--m", str(args.m), "--dim", str(args.dim),
              "--left-max-length", str(args.left_max_length), "--right-max-length", str(args.right_max_length),
              "--human-label-col", "label", "--stage1-epochs", str(2 if small else args.stage1_epochs),
              "--stage1-batch-size", "256", "--stage2-epochs", str(args.stage2_epochs),
              "--cache-dir", str(out / "cache"), "--no-progress"]
    if args.seed:
        common += ["--seed", str(args.seed)]
    if args.stage2_epochs:                 # 0: stage 1 only, the encoder frozen (no layers to train)
        common += ["--train-layers", str(args.train_layers)]
        if args.stage2_max_pairs and not small:
            common += ["--stage2-max-pairs", str(args.stage2_max_pairs)]
    students = {}
    for head in [h for h in args.heads.split(",") if h]:
        students[head] = out / f"student-{head}"
        step(f"student {head}", students[head], ["jobs.train_student", "--head", head, *common,
                                                 "--output", str(students[head])])

    models = [f"teacher={teacher}", *(f"{name}={path}" for name, path in students.items()), "baseline"]
    compares = [f"{head},de-cos" for head in students if head != "de-cos" and "de-cos" in students]
    compares += [f"{head},baseline" for head in students] + ["teacher,baseline"]
    model_flags = sum((["--model", m] for m in models), []) + sum((["--compare", c] for c in compares), [])
    report = out / "report"
    # No --dev: a threshold (accuracy, F1) means little for ranking, and scoring the selection pairs
    # with every model would cost a third more.
    step("evaluate on WikiQA dev", report, ["jobs.evaluate", "--pairs", str(dev), "--group-col", "qid", *model_flags,
                                            "--output", str(report)])
    transfer = out / "report-trecqa"
    step("evaluate on TrecQA dev (transfer)", transfer, ["jobs.evaluate", "--pairs", str(trec), "--group-col", "left",
                                                         *model_flags,
                                                         "--output", str(transfer)])
    write_results(out, report, transfer, students, steps, time.monotonic() - started, args, split)
    return 0


def balanced_sample(train: Path, target: Path, negatives: int) -> Path:
    """The teacher's training pairs: every positive of ``train`` and ``negatives`` random negatives
    per positive (seeded, in file order), written once to ``target``; ``train`` itself when
    ``negatives`` is 0."""
    if negatives == 0:
        return train
    if not target.exists():
        rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
        positives = [i for i, r in enumerate(rows) if int(r["label"]) == 1]
        wrong = [i for i, r in enumerate(rows) if int(r["label"]) != 1]
        chosen = set(positives) | set(random.Random(0).sample(wrong, min(len(wrong), negatives * len(positives))))
        temporary = target.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in sorted(chosen))
        temporary.replace(target)
        print(f"teacher data: {len(chosen):,} pairs ({len(positives):,} positives)", flush=True)
    return target


def _whole_questions(rows: list[dict], key: str, limit: int | None) -> list[dict]:
    """The rows of the first questions (by ``key``, in file order) holding about ``limit`` pairs;
    all rows when ``limit`` is None. A question is never cut."""
    if limit is None:
        return rows
    kept, questions = [], set()
    for row in rows:
        if row[key] not in questions and len(kept) >= limit:
            break
        questions.add(row[key])
        kept.append(row)
    return kept


def prepare_data(data: Path, limit: int | None, select_fraction: float) -> dict:
    """WikiQA train -> DATA/train.jsonl + DATA/select.jsonl split by qid (a seeded random
    ``select_fraction`` of the questions); DATA/dev.jsonl (WikiQA dev) and DATA/trecqa-dev.jsonl,
    limited to whole questions with ``limit``. Returns the counts (kept in DATA/split.json)."""
    summary = data / "split.json"
    if summary.exists():
        return json.loads(summary.read_text(encoding="utf-8"))
    data.mkdir(parents=True, exist_ok=True)

    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    rows = _whole_questions(read(WIKIQA / "train.jsonl"), "qid", None if limit is None else limit + limit // 4)
    qids = sorted({row["qid"] for row in rows})
    random.Random(0).shuffle(qids)
    chosen = set(qids[:max(2, round(select_fraction * len(qids)))])
    train = [r for r in rows if r["qid"] not in chosen]
    select = [r for r in rows if r["qid"] in chosen]
    dev = _whole_questions(read(WIKIQA / "dev.jsonl"), "qid", limit)
    trec = _whole_questions(read(TRECQA / "dev.jsonl"), "left", limit)
    for name, table in (("train", train), ("select", select), ("dev", dev), ("trecqa-dev", trec)):
        with open(data / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps({k: r[k] for k in ("id", "left", "right", "label", "qid") if k in r},
                                         ensure_ascii=False) + "\n" for r in table)
    counts = {name: {"pairs": len(table), "questions": len({r.get("qid", r["left"]) for r in table}),
                     "positives": sum(int(r["label"]) for r in table)}
              for name, table in (("train", train), ("select", select), ("dev", dev), ("trecqa-dev", trec))}
    assert not {r["qid"] for r in train} & {r["qid"] for r in select}, "a question in both train and selection"
    summary.write_text(json.dumps(counts, indent=2), encoding="utf-8")
    print("data: " + "; ".join(f"{k} {v['pairs']:,} pairs / {v['questions']:,} questions" for k, v in counts.items()),
          flush=True)
    return counts


def write_results(out: Path, report: Path, transfer: Path, students: dict[str, Path], steps: Steps,
                  total: float, args, split: dict) -> None:
    """OUT/RESULTS.md: ranking tables (dev and transfer), intervals, targets, stages, steps."""
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    trec = json.loads((transfer / "metrics.json").read_text(encoding="utf-8"))
    models = metrics["models"]
    origin = {name: checkpoint_origin(path, "mrr@10", "MRR@10") for name, path in students.items()}
    first = next(iter(models.values()))["ranking"]
    lines = [f"# WikiQA reproduction ({'smoke test, --limit ' + str(args.limit) if args.limit else 'full'})", "",
             f"Question -> answer sentence ranking. Evaluated on `{metrics['pairs']['paths'][0]}` "
             f"({metrics['pairs']['count']:,} pairs; {first['queries']:,} of {first['queries_total']:,} questions have "
             "a correct and a wrong candidate and are ranked). Teacher and students trained on "
             f"{split['train']['pairs']:,} pairs of {split['train']['questions']:,} training questions; best epochs "
             f"chosen on {split['select']['pairs']:,} pairs of {split['select']['questions']:,} other "
             f"training questions (split by qid). Students: N = {args.n} question tokens, M = {args.m} sentence "
             f"tokens, D = {args.dim}, max lengths {args.left_max_length} / {args.right_max_length}, "
             + (f"stage 2 trains the top {args.train_layers} encoder layers" if args.stage2_epochs else
                "no stage 2 (the encoder stays frozen)")
             + (f", seed {args.seed}" if args.seed else "") + ". Teacher: "
             + (f"`{args.teacher}` (given)" if args.teacher else
                f"MiniLM-L6 cross-encoder, {args.teacher_epochs} epochs at lr {args.teacher_lr:g}, max length "
                f"{args.teacher_max_length}, on every positive and {args.teacher_negatives} random negatives per "
                "positive of the training questions")
             + f". Machine: {metrics['machine']['torch_threads']} torch "
             f"threads, {metrics['machine']['platform']}.", "",
             "| model | MRR@10 | MAP | nDCG@10 | AUC | checkpoint from | pairs/s end to end |",
             "|---|---|---|---|---|---|---|"]
    for name, result in models.items():
        r = result["ranking"]
        lines.append(f"| {name} | {r['mrr@10']:.4f} | {r['map']:.4f} | {r['ndcg@10']:.4f} | "
                     f"{result['quality']['auc']:.4f} | {origin.get(name, '—')} | "
                     f"{result['speed']['pairs_per_second']:,.0f} |")
    lines += ["", "Differences on dev, 95% paired bootstrap over questions (AUC: over pairs):", "",
              *differences_table(metrics["comparisons"], RANKING_COLUMNS)]
    tfirst = next(iter(trec["models"].values()))["ranking"]
    lines += ["", f"## Transfer: TrecQA dev, grouped by question text ({trec['pairs']['count']:,} pairs; "
                  f"{tfirst['queries']:,} of {tfirst['queries_total']:,} questions ranked: wide intervals)", "",
              "| model | MRR@10 | MAP | nDCG@10 |", "|---|---|---|---|"]
    for name, result in trec["models"].items():
        r = result["ranking"]
        lines.append(f"| {name} | {r['mrr@10']:.4f} | {r['map']:.4f} | {r['ndcg@10']:.4f} |")
    lines += ["", *differences_table(trec["comparisons"], {"MRR@10": "mrr@10", "MAP": "map"})]

    mrr = {name: result["ranking"]["mrr@10"] for name, result in models.items()}
    checks = []
    by_pair = {(c["a"], c["b"]): c["differences"] for c in metrics["comparisons"]}
    heads = [h for h in students if h in TOKEN_HEADS]
    if heads and "de-cos" in students:
        best = max(heads, key=lambda h: mrr[h])
        d = by_pair[(best, "de-cos")]["mrr@10"]
        checks.append((f"the best token head ({best}) beats de-cos on MRR@10 with an interval excluding 0",
                       d["low"] > 0, interval(d)))
    student_best = max(students, key=lambda h: mrr[h]) if students else None
    if student_best:
        checks.append((f"best student ({student_best}) MRR@10 >= 0.95 x teacher's", mrr[student_best] >= 0.95 * mrr["teacher"],
                       f"{mrr[student_best]:.4f} vs {0.95 * mrr['teacher']:.4f}"))
        checks.append((f"best student ({student_best}) MRR@10 >= zero-shot cosine + 0.05",
                       mrr[student_best] >= mrr["baseline"] + 0.05, f"{mrr[student_best]:.4f} vs {mrr['baseline'] + 0.05:.4f}"))
        checks.append(("the chosen checkpoint of at least one student comes from stage 2 (encoder trained)",
                       any(o.startswith("stage2") for o in origin.values()), ", ".join(f"{k}: {v}" for k, v in origin.items())))
    seconds = steps.counted_seconds()
    if seconds is not None:
        checks.append((f"whole run under {TARGET_MINUTES} minutes", seconds < TARGET_MINUTES * 60,
                       f"{seconds / 60:.1f} minutes, the sum of the steps"))
    lines += ["", *targets_section(checks, "PASS / FAIL compare point estimates; intervals are 95% paired bootstrap.")]
    lines += ["", *steps.table()]
    lines += ["", steps.footer("reproduce_wikiqa.py", total,
                               " Plots and every metric: report/report.md, report-trecqa/report.md.")]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n" + "\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
