"""DiPair's tables 2-4 on QQP, end to end with pairscore's own jobs, in one command.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/reproduce_qqp.py --out ../runs/qqp-repro
    python benchmarks/reproduce_qqp.py --out ../runs/qqp-smoke --limit 120     # a smoke test of every step (minutes)

Steps (each a ``python -m jobs.<name>`` command, printed before it runs; a step whose output already
has ``_SUMMARY.json`` is skipped, so an interrupted run resumes where it stopped):

1. data: ``../shared/data/qqp/train.jsonl`` is split into the teacher's and students' training pairs
   and a *selection* set (the last ``--select-pairs`` pairs) on which every model picks its best
   epoch and its accuracy threshold; ``dev.jsonl`` is only evaluated on, so it is a clean test set.
2. teacher: ``train_teacher`` (MiniLM-L6 cross-encoder) on the training pairs (``--teacher DIR``
   reuses one instead).
3. candidates: ``build_candidates`` mines each training question's ``--top-k`` nearest questions.
4. distillation set: ``label_pairs`` labels the training pairs (human labels kept) and the mined pairs.
5. students: ``train_student`` with each head -- dipair, dipair-ffnn, li, de-ffnn, de-cos -- and the
   same student config (with the cosine skip), two-stage: stage 1 with the encoder frozen, each
   epoch over the whole distillation set (its frozen states computed once and shared through
   ``--cache-dir``), then stage 2 training the top ``--train-layers`` encoder layers on the cached
   lower layers' states over ``--stage2-max-pairs`` pairs; every epoch's checkpoint is judged by
   AUC on the selection pairs and the best is kept. Extra steps, not counted in the time:
   ``--ablate-stages`` (dipair in one stage: the whole encoder from the first step) and
   ``--ablate-skip`` (dipair without the cosine skip).
6. ``evaluate`` on dev: teacher, the students and the zero-training cosine baseline.

Writes ``OUT/RESULTS.md`` (the table with the stage each student's checkpoint came from, the
ablations, the targets, the time of every step) next to ``OUT/report/report.md`` (plots). Targets
checked (each with the 95% paired-bootstrap interval of the AUC difference on dev, so a reader sees
which the dev set can tell from noise): the best student >= 0.895 dev AUC; the best token head
beats de-cos with an interval excluding 0; a chosen checkpoint comes from stage 2; dipair >= 98% of
the teacher's AUC and above de-cos and de-ffnn; two-stage above one-stage (with
``--ablate-stages``); the whole run under 150 minutes (the sum of the steps' times, kept in
OUT/step_seconds.json across resumed runs; ``--until labels`` stops after the distillation set).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reproduction import (DATA, Steps, checkpoint_origin, inside_repo,  # noqa: E402  (after the path: a script)
                                     targets_section, verdict)
from encoders.metrics import auc_difference_interval  # noqa: E402
QQP = DATA / "qqp"
HEADS = ("dipair", "dipair-ffnn", "li", "de-ffnn", "de-cos")
TOKEN_HEADS = ("dipair", "dipair-ffnn", "li")
TARGET_MINUTES = 150      # the 2.5 hours (90 before the two-epoch teacher and the stage 2 on 30k pairs)
TARGET_AUC = 0.895        # best student on dev (0.888 with the one-epoch teacher and 3,000 stage-2 pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="everything goes here (keep it outside the repository)")
    parser.add_argument("--limit", type=int, default=None,
                        help="smoke test: use only the first N training pairs and N dev pairs, short schedules")
    parser.add_argument("--teacher", default=None, help="an existing teacher checkpoint to use instead of training one "
                        "(note: one trained on all of train.jsonl has seen the selection pairs)")
    parser.add_argument("--select-pairs", type=int, default=3000, help="training pairs held out for model selection")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--teacher-max-length", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=2, help="mined neighbours per training question")
    parser.add_argument("--random-per-left", type=int, default=0, help="random (easy negative) pairs per question")
    parser.add_argument("--layers", type=int, default=None, help="student encoder layers K (default: all 6)")
    parser.add_argument("--n", type=int, default=16, help="N = M, tokens kept per question (16 covers 67%% of QQP "
                        "questions whole)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=64, help="student tokenizer max length, both sides")
    parser.add_argument("--stage1-epochs", type=int, default=1,
                        help="most stage-1 epochs, each over the whole distillation set (~196k examples with the "
                             "swap; the head converges within one on top of the cosine skip; early stop, patience 2)")
    parser.add_argument("--stage1-max-pairs", type=int, default=None,
                        help="at most this many pairs per stage-1 epoch (a new random sample each epoch); default: all")
    parser.add_argument("--train-layers", type=int, default=2,
                        help="top encoder layers trained in stage 2, on the cached lower layers' states (0: the "
                             "whole encoder, each batch encoded in full)")
    parser.add_argument("--stage2-epochs", type=int, default=1)
    parser.add_argument("--stage2-max-pairs", type=int, default=30_000,
                        help="pairs per stage-2 epoch (a random sample of the distillation set), and of the "
                             "one-stage ablation")
    parser.add_argument("--heads", default=",".join(HEADS), help="heads to train (comma-separated)")
    parser.add_argument("--fresh", action="store_true", help="rerun steps whose output already exists")
    parser.add_argument("--ablate-stages", action="store_true",
                        help="also train dipair in one stage (the whole encoder from the first step, on "
                             "--stage2-max-pairs pairs: slow); an extra step, not counted in the reproduction's time")
    parser.add_argument("--ablate-skip", action="store_true",
                        help="also train dipair without the cosine skip (the plain DiPair head); an extra step, "
                             "not counted in the reproduction's time")
    parser.add_argument("--until", choices=("labels", "evaluate"), default="evaluate",
                        help="stop after this step: 'labels' builds the teacher and the distillation set only")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    if inside_repo(out, "QQP (Quora's non-commercial terms)"):
        sys.exit(2)
    out.mkdir(parents=True, exist_ok=True)
    small = args.limit is not None
    steps = Steps(out, fresh=args.fresh)
    step = steps.run

    started = time.monotonic()
    data = out / "data"
    prepare_data(data, args.limit, args.select_pairs)
    train, select, questions = data / "train.jsonl", data / "select.jsonl", data / "questions.jsonl"
    dev = QQP / "dev.jsonl"
    limit = ["--limit", str(args.limit)] if small else []

    teacher = Path(args.teacher) if args.teacher else out / "teacher"
    if not args.teacher:
        step("teacher", teacher, ["jobs.train_teacher", "--train", str(train), "--dev", str(select), "--task", "binary",
                                  "--epochs", str(args.teacher_epochs), "--max-length", str(args.teacher_max_length),
                                  "--lr", "3e-5", "--batch-size", "32", "--no-progress", "--output", str(teacher)])
    step("candidates", out / "candidates", [
        "jobs.build_candidates", "--left-texts", str(questions), "--right-texts", str(questions), "--top-k",
        str(args.top_k), "--random-per-left", str(args.random_per_left), "--max-length", str(args.max_length),
        "--output", str(out / "candidates")])
    step("label training pairs", out / "distill-train", [
        "jobs.label_pairs", "--pairs", str(train), "--teacher", str(teacher), "--keep-cols", "label",
        "--output", str(out / "distill-train")])
    step("label mined pairs", out / "distill-mined", [
        "jobs.label_pairs", "--pairs", str(out / "candidates"), "--teacher", str(teacher), "--left-id-col", "left_id",
        "--right-id-col", "right_id", "--keep-cols", "source", "--output", str(out / "distill-mined")])

    if args.until == "labels":
        print(f"\n--until labels: teacher and distillation set are in {out}", flush=True)
        return
    stage2_pairs = min(args.stage2_max_pairs, args.limit or args.stage2_max_pairs)
    common = ["--distill", str(out / "distill-train"), "--distill", str(out / "distill-mined"), "--dev", str(select),
              "--n", str(args.n), "--m", str(args.n), "--dim", str(args.dim), "--left-max-length", str(args.max_length),
              "--right-max-length", str(args.max_length), "--swap", "--human-label-col", "label",
              "--stage1-epochs", str(2 if small else args.stage1_epochs), "--stage1-batch-size", "256"]
    if args.stage1_max_pairs:
        common += ["--stage1-max-pairs", str(args.stage1_max_pairs)]
    common += ["--stage2-epochs", str(args.stage2_epochs), "--stage2-max-pairs", str(stage2_pairs),
               "--cache-dir", str(out / "cache"), "--no-progress"]
    if args.layers:
        common += ["--layers", str(args.layers)]
    # Stage 2 trains the top layers on the cached lower layers' states; the one-stage ablation
    # (--stages 1) trains the whole encoder from the first step, so it cannot take --train-layers.
    two_stage = [*common, "--train-layers", str(args.train_layers)] if args.train_layers else common
    students = {}
    for head in [h for h in args.heads.split(",") if h]:
        students[head] = out / f"student-{head}"
        step(f"student {head}", students[head], ["jobs.train_student", "--head", head, *two_stage,
                                                 "--output", str(students[head])])
    if args.ablate_stages and "dipair" in students:
        students["dipair-1stage"] = out / "student-dipair-1stage"
        step("student dipair, one stage (extra)", students["dipair-1stage"], [
            "jobs.train_student", "--head", "dipair", "--stages", "1", *common,
            "--output", str(students["dipair-1stage"])], extra=True)
    if args.ablate_skip and "dipair" in students:
        students["dipair-no-skip"] = out / "student-dipair-no-skip"
        step("student dipair, no cosine skip (extra)", students["dipair-no-skip"], [
            "jobs.train_student", "--head", "dipair", "--no-cosine-skip", *two_stage,
            "--output", str(students["dipair-no-skip"])], extra=True)

    report = out / "report"
    models = [f"teacher={teacher}", *(f"{name}={path}" for name, path in students.items()), "baseline"]
    step("evaluate", report, ["jobs.evaluate", "--pairs", str(dev), "--dev", str(select),
                              *sum((["--model", m] for m in models), []), *limit, "--output", str(report)])
    total = time.monotonic() - started
    write_results(out, report, students, steps, total, args, stage2_pairs)


def prepare_data(data: Path, limit: int | None, select_pairs: int) -> None:
    """train.jsonl -> DATA/train.jsonl + DATA/select.jsonl (the last ``select_pairs``, or a fifth of
    a --limit sample) and DATA/questions.jsonl (the unique questions of the training pairs)."""
    if (data / "questions.jsonl").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (QQP / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    if limit is not None:
        rows = rows[:limit + max(limit // 5, 20)]
        select_pairs = max(limit // 5, 20)
    train, select = rows[:-select_pairs], rows[-select_pairs:]
    questions = sorted({text for row in train for text in (row["left"], row["right"])})
    for name, table in (("train", train), ("select", select), ("questions", [{"text": q} for q in questions])):
        with open(data / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in table)
    print(f"data: {len(train):,} training pairs, {len(select):,} selection pairs, {len(questions):,} questions",
          flush=True)


def write_results(out: Path, report: Path, students: dict[str, Path], steps: Steps, total: float, args,
                  stage2_pairs: int) -> None:
    """OUT/RESULTS.md: DiPair-style table (with the stage each student's checkpoint came from), the
    ablations, the targets and the time of each step."""
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    models = metrics["models"]
    teacher = models["teacher"]
    origin = {name: checkpoint_origin(path, "auc", "AUC") for name, path in students.items()}
    stage2 = (f"stage 2 trains the top {args.train_layers} encoder layers" if args.train_layers
              else "stage 2 trains the whole encoder")
    lines = [f"# QQP reproduction ({'smoke test, --limit ' + str(args.limit) if args.limit else 'full'})", "",
             f"Evaluated on `{metrics['pairs']['paths'][0]}` ({metrics['pairs']['count']:,} pairs, "
             f"{metrics['pairs']['pairs_per_unique_text']:.2f} pairs per unique text); thresholds and best epochs "
             f"chosen on the held-out selection pairs. Student: N = M = {args.n}, D = {args.dim}, "
             f"K = {args.layers or 'all'}, max length {args.max_length}; stage 1 (encoder frozen) over "
             + (f"{args.stage1_max_pairs:,} pairs" if args.stage1_max_pairs else "the whole distillation set")
             + f" per epoch, {stage2} on {stage2_pairs:,} pairs per epoch. Teacher: "
             + (f"`{args.teacher}` (given)" if args.teacher else
                f"MiniLM-L6 cross-encoder, {args.teacher_epochs} epochs, max length {args.teacher_max_length}")
             + f". Machine: {metrics['machine']['torch_threads']} torch threads, {metrics['machine']['platform']}.", "",
             "| model | AUC | Δ vs teacher | accuracy | F1 | checkpoint from | speedup end to end | speedup, head only |",
             "|---|---|---|---|---|---|---|---|"]
    for name, result in models.items():
        quality = result["quality"]
        delta = quality["auc"] / teacher["quality"]["auc"] - 1
        lines.append(f"| {name} | {quality['auc']:.4f} | {delta:+.1%} | {quality['accuracy']:.1%} | "
                     f"{quality['f1']:.3f} | {origin.get(name, '—')} | {result.get('speedup', 1.0):,.1f}× | "
                     + (f"{result['speedup_head']:,.0f}× |" if "speedup_head" in result else "— |"))
    auc = {name: result["quality"]["auc"] for name, result in models.items()}
    scores = pq.read_table(report / "scores.parquet").to_pydict()
    labels = np.asarray(scores["target"]) >= 0.5

    def compare(a: str, b: str, weight: float = 1.0, strict: bool = False) -> tuple[bool, str]:
        """AUC(a) > weight * AUC(b) on dev, with the paired bootstrap interval of the difference;
        ``strict``: passed only when the interval excludes 0."""
        difference, low, high = auc_difference_interval(np.asarray(scores[f"score:{a}"]),
                                                        np.asarray(scores[f"score:{b}"]), labels, weight)
        d = {"difference": difference, "low": low, "high": high}
        return (low > 0 if strict else difference > 0), (f"difference {difference:+.4f}, 95% paired-bootstrap "
                                                         f"interval [{low:+.4f}, {high:+.4f}]: {verdict(d)}")

    checks = []
    trained = [name for name in students if name in HEADS]
    if trained:
        best = max(trained, key=lambda h: auc[h])
        checks.append((f"best student ({best}) dev AUC >= {TARGET_AUC}", auc[best] >= TARGET_AUC,
                       f"{auc[best]:.4f}"))
        heads = [h for h in trained if h in TOKEN_HEADS]
        if heads and "de-cos" in auc:
            top = max(heads, key=lambda h: auc[h])
            checks.append((f"the best token head ({top}) beats de-cos with an interval excluding 0",
                           *compare(top, "de-cos", strict=True)))
        checks.append(("the chosen checkpoint of at least one student comes from stage 2 (encoder trained)",
                       any(origin[h].startswith("stage2") for h in trained),
                       ", ".join(f"{h}: {origin[h]}" for h in trained)))
    if "dipair" in auc:
        checks.append(("dipair >= 98% of the teacher's AUC", *compare("dipair", "teacher", 0.98)))
        for other in ("de-cos", "de-ffnn"):
            if other in auc:
                checks.append((f"dipair beats {other}", *compare("dipair", other)))
        if "dipair-1stage" in auc:
            checks.append(("two-stage dipair beats one-stage", *compare("dipair", "dipair-1stage")))
            lines += ["", f"Ablation (DiPair §4.7): dipair two-stage AUC {auc['dipair']:.4f} vs one-stage "
                          f"{auc['dipair-1stage']:.4f} (the same {stage2_pairs:,} pairs of encoder training, the whole "
                          "encoder in one stage; two-stage also had stage 1)."]
        if "dipair-no-skip" in auc:
            lines += ["", f"Ablation (the cosine skip, heads/cosine_skip.py): dipair with the skip AUC {auc['dipair']:.4f} "
                          f"vs the plain DiPair head {auc['dipair-no-skip']:.4f}, same data and schedule."]
    steps_total = steps.counted_seconds()
    if steps_total is not None:
        checks.append((f"whole run under {TARGET_MINUTES} minutes", steps_total < TARGET_MINUTES * 60,
                       f"{steps_total / 60:.1f} minutes, the sum of the steps"))
    lines += ["", *targets_section(checks, "PASS / FAIL compare the point estimates; the interval says whether the "
                                   f"{metrics['pairs']['count']:,} dev pairs can tell the difference from noise.")]
    lines += ["", *steps.table()]
    lines += ["", steps.footer("reproduce_qqp.py", total, " Plots and every metric: [report/report.md](report/report.md).")]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
