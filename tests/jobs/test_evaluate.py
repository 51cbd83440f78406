"""``jobs.evaluate``: metrics against scikit-learn and by hand, the threshold's source, agreement with
the teacher, speeds and their regime, the report and its pictures, bad arguments."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, roc_auc_score, roc_curve as sklearn_roc_curve

from jobs import evaluate
from encoders.evaluation import quality
from jobs.evaluate import EvaluateJob, parse_model_spec, run
from encoders.metrics import auc_difference_interval, f1_at_threshold, roc_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- metrics

def test_quality_by_hand_with_a_dev_threshold():
    """Dev scores (0.2, 0.6, 0.7, 0.9) with labels (0, 0, 1, 1): the best rule is score >= 0.7
    (all 4 right). On the evaluated pairs: AUC 3/4 (0.65 < 0.75 is the one inverted positive-negative
    pair of four); at 0.7: predictions
    (0, 1, 1, 0) against (0, 0, 1, 1) -> accuracy 2/4, F1 = 2*1 / (2*1 + 1 + 1) = 0.5."""
    dev = (np.array([0.2, 0.6, 0.7, 0.9]), np.array([0, 0, 1, 1]))
    scores, labels = np.array([0.1, 0.75, 0.8, 0.65]), np.array([0, 0, 1, 1])
    got = quality("binary", scores, labels, dev)
    assert got == pytest.approx({"auc": 3 / 4, "accuracy": 0.5, "f1": 0.5, "threshold": 0.7})
    assert got["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert got["f1"] == pytest.approx(f1_score(labels, scores >= 0.7))
    # Without dev the threshold is chosen on the pairs themselves: 0.8 gets 3 of 4.
    assert quality("binary", scores, labels, None) == pytest.approx({"auc": 0.75, "accuracy": 0.75, "f1": 2 / 3,
                                                                    "threshold": 0.8})


def test_roc_curve_f1_and_graded_metrics_match_scikit_learn_and_scipy():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 12, 300).astype(float) / 11     # many ties
    labels = rng.integers(0, 2, 300)
    fpr, tpr, thresholds = roc_curve(scores, labels)
    ref_fpr, ref_tpr, ref_thresholds = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thresholds[1:], ref_thresholds[1:])
    for threshold in (0.0, 0.5, 0.95, 2.0):
        assert f1_at_threshold(scores, labels, threshold) == pytest.approx(f1_score(labels, scores >= threshold,
                                                                                    zero_division=0))
    grades = rng.uniform(0, 5, 300)
    graded = quality("graded", scores + 0.1 * grades, grades, None)
    assert graded["pearson"] == pytest.approx(pearsonr(scores + 0.1 * grades, grades)[0])
    assert graded["spearman"] == pytest.approx(spearmanr(scores + 0.1 * grades, grades)[0])


def test_auc_difference_interval_is_paired_and_covers_the_truth():
    rng = np.random.default_rng(1)
    labels = rng.random(600) < 0.4
    signal = labels + rng.normal(0, 1.0, 600)
    # The same scores: the difference is 0 on every resample.
    assert auc_difference_interval(signal, signal, labels, resamples=200) == (0.0, 0.0, 0.0)
    # A clearly better model: the interval excludes 0, and the point estimate is scikit-learn's difference.
    better = labels + rng.normal(0, 0.3, 600)
    difference, low, high = auc_difference_interval(better, signal, labels, resamples=500)
    assert difference == pytest.approx(roc_auc_score(labels, better) - roc_auc_score(labels, signal))
    assert 0 < low < difference < high
    # weight_b: "keeps 98% of b" is AUC(a) - 0.98 AUC(b).
    kept, _, _ = auc_difference_interval(signal, better, labels, weight_b=0.98, resamples=10)
    assert kept == pytest.approx(roc_auc_score(labels, signal) - 0.98 * roc_auc_score(labels, better))
    # Noise only: two equally good models give an interval around 0.
    other = labels + rng.normal(0, 1.0, 600)
    _, low, high = auc_difference_interval(other, signal, labels, resamples=500)
    assert low < 0 < high


@pytest.mark.parametrize("spec, expected", [
    ("baseline", ("baseline", "baseline")), ("runs/teacher-qqp", ("teacher-qqp", "runs/teacher-qqp")),
    ("runs/student/", ("student", "runs/student/")), ("two-stage=runs/s", ("two-stage", "runs/s"))])
def test_model_specs(spec, expected):
    assert parse_model_spec(spec) == expected


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def labeled(shared_data, tmp_path_factory) -> dict[str, Path]:
    """40 real QQP dev pairs to evaluate on and 30 others to choose thresholds on."""
    rows = [json.loads(line) for line in (shared_data / "qqp" / "dev.jsonl").read_text().splitlines()[:70]]
    tmp = tmp_path_factory.mktemp("labeled")
    pairs = [{"left": r["left"], "right": r["right"], "label": r["label"]} for r in rows]
    # A text repeated across pairs, so the regime is not exactly one pair per text.
    pairs[39] = dict(pairs[39], left=pairs[0]["left"])
    return {"pairs": write_jsonl(tmp / "pairs.jsonl", pairs[:40]), "dev": write_jsonl(tmp / "dev.jsonl", pairs[40:]),
            "rows": pairs[:40]}


@pytest.fixture(scope="module")
def report(labeled, tiny_teacher_dir, tiny_checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("report") / "out"
    run(EvaluateJob(pairs=(str(labeled["pairs"]),), dev=(str(labeled["dev"]),), output=str(output),
                    models=(f"teacher={tiny_teacher_dir}", f"student={tiny_checkpoint}", "baseline")), argv=[])
    return output


def test_report_metrics_match_scikit_learn_on_the_written_scores(report, labeled):
    metrics = json.loads((report / "metrics.json").read_text())
    scores = pq.read_table(report / "scores.parquet").to_pydict()
    labels = np.array([r["label"] for r in labeled["rows"]])
    dev_labels = np.array([json.loads(l)["label"] for l in labeled["dev"].read_text().splitlines()])
    assert scores["target"] == labels.tolist() and metrics["threshold_source"] == "dev"
    assert list(metrics["models"]) == ["teacher", "student", "baseline"]
    stamped = json.loads(pq.read_schema(report / "scores.parquet").metadata[b"pairscore.models"])
    assert {name: m["fingerprint"] for name, m in stamped.items()} == \
        {name: m["fingerprint"] for name, m in metrics["models"].items()}      # provenance of every score column
    for name, result in metrics["models"].items():
        got = np.array(scores[f"score:{name}"], dtype=np.float64)
        assert result["quality"]["auc"] == pytest.approx(roc_auc_score(labels, got), abs=1e-6)
        threshold = float(result["quality"]["threshold"])   # "inf" when nothing is best called positive
        assert result["quality"]["accuracy"] == pytest.approx(((got >= threshold) == labels).mean(), abs=1e-6)
        assert result["quality"]["f1"] == pytest.approx(f1_score(labels, got >= threshold), abs=1e-6)
    assert metrics["models"]["baseline"]["kind"] == "baseline" and metrics["reference_teacher"] == "teacher"
    assert len(dev_labels) == metrics["dev"]["count"] == 30


def test_agreement_with_the_teacher(report):
    metrics = json.loads((report / "metrics.json").read_text())
    scores = pq.read_table(report / "scores.parquet").to_pydict()
    logit = lambda p: np.log(np.asarray(p, np.float64) / (1 - np.asarray(p, np.float64)))
    teacher = np.array(scores["score:teacher"], dtype=np.float64)
    assert "agreement" not in metrics["models"]["teacher"]
    student = metrics["models"]["student"]["agreement"]
    # float32 scores written to Parquet: the logits recovered from them are close, not exact.
    assert student["teacher_logit_pearson"] == pytest.approx(
        pearsonr(logit(scores["score:student"]), logit(teacher))[0], abs=1e-3)
    baseline = metrics["models"]["baseline"]["agreement"]   # the baseline's "logit" is its cosine
    assert baseline["teacher_logit_pearson"] == pytest.approx(
        pearsonr(scores["score:baseline"], logit(teacher))[0], abs=1e-3)
    hard = teacher >= 0.5
    if 0 < hard.sum() < len(hard):
        assert baseline["teacher_label_auc"] == pytest.approx(roc_auc_score(hard, scores["score:baseline"]), abs=1e-6)


def test_speeds_and_their_regime(report, labeled):
    metrics = json.loads((report / "metrics.json").read_text())
    rows = labeled["rows"]
    unique = len({r["left"] for r in rows}) + len({r["right"] for r in rows})
    assert metrics["pairs"]["unique_left_texts"] + metrics["pairs"]["unique_right_texts"] == unique == 79
    assert metrics["pairs"]["pairs_per_unique_text"] == pytest.approx(40 / 79)
    teacher = metrics["models"]["teacher"]
    assert teacher["speed"]["pairs_per_second"] > 0 and "head_pairs_per_second" not in teacher["speed"]
    assert teacher["speedup"] == 1.0 and teacher["relative_quality"] == 1.0
    for name in ("student", "baseline"):
        speed = metrics["models"][name]["speed"]
        assert speed["head_pairs_per_second"] > speed["pairs_per_second"] > 0
        assert speed["pairs_per_second"] == pytest.approx(40 / (speed["encode_seconds"] + speed["head_seconds"]))
        assert metrics["models"][name]["speedup"] == pytest.approx(speed["pairs_per_second"]
                                                                   / teacher["speed"]["pairs_per_second"])
    assert metrics["machine"]["torch_threads"] >= 1


def test_report_is_markdown_with_pictures(report):
    text = (report / "report.md").read_text()
    for png in ("roc.png", "histograms.png", "quality_speed.png"):
        assert f"]({png})" in text and (report / png).read_bytes()[:8] == PNG_MAGIC
    assert "pairs per unique text" in text and "threshold on the dev pairs" in text
    assert "| teacher | teacher |" in text and "| baseline | baseline |" in text
    summary = json.loads((report / "_SUMMARY.json").read_text())
    assert summary["job"] == "evaluate" and summary["counts"]["pairs_used"] == 40
    assert set(summary["model_fingerprints"]) == {"teacher", "student", "baseline"}


def test_graded_labels_without_dev_from_the_command_line(tmp_path, shared_data, tiny_checkpoint):
    rows = [json.loads(line) for line in (shared_data / "stsb" / "dev.jsonl").read_text().splitlines()[:30]]
    pairs = write_jsonl(tmp_path / "sts.jsonl", rows)
    output = tmp_path / "graded"
    result = CliRunner().invoke(evaluate.main, ["--pairs", str(pairs), "--task", "graded", "--label-range", "0,5",
                                                "--model", tiny_checkpoint, "--output", str(output)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["threshold_source"] is None and metrics["reference_teacher"] is None
    table = pq.read_table(output / "scores.parquet")
    (column,) = [name for name in table.column_names if name.startswith("score:")]
    scores = np.array(table.column(column).to_pylist(), dtype=np.float64)
    grades = np.array([r["label"] for r in rows])
    quality_ = next(iter(metrics["models"].values()))["quality"]
    assert quality_["spearman"] == pytest.approx(spearmanr(scores, grades)[0], abs=1e-6)
    assert (output / "scores.png").read_bytes()[:8] == PNG_MAGIC and "Spearman" in result.output


def test_threshold_on_the_evaluated_pairs_is_said(tmp_path, labeled, tiny_checkpoint):
    output = tmp_path / "nodev"
    run(EvaluateJob(pairs=(str(labeled["pairs"]),), models=(tiny_checkpoint,), output=str(output), limit=20), argv=[])
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["threshold_source"] == "evaluated pairs" and metrics["pairs"]["count"] == 20
    assert "*these same pairs*" in (output / "report.md").read_text()


@pytest.mark.parametrize("extra, message", [
    (["--model", "baseline", "--model", "baseline"], "--model names baseline more than once"),
    (["--model", "/no/such/dir"], "is not a model directory"),
    (["--model", "baseline", "--task", "graded"], "--task graded needs --label-range"),
    (["--model", "baseline", "--label-col", "grade"], "no column 'grade'"),
    (["--model", "baseline", "--batch-size", "0"], "--batch-size 0 is not allowed"),
])
def test_bad_arguments_exit_2_before_work(tmp_path, labeled, extra, message):
    result = CliRunner().invoke(evaluate.main, ["--pairs", str(labeled["pairs"]), "--output", str(tmp_path / "o"),
                                                *extra])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_one_class_is_refused(tmp_path, tiny_checkpoint):
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"left": "a", "right": "b", "label": 1}] * 3)
    result = CliRunner().invoke(evaluate.main, ["--pairs", str(pairs), "--model", tiny_checkpoint,
                                                "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "only one class" in result.output


def test_help_explains_every_flag():
    result = CliRunner().invoke(evaluate.main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--pairs", "--model", "--dev", "--label-col", "--left-col", "--right-col", "--task", "--label-range",
                 "--device", "--limit", "--output", "--overwrite", "baseline"):
        assert flag in result.output


# --------------------------------------------------------------------------- ranking by query

@pytest.fixture(scope="module")
def wikiqa_ranked(shared_data, tiny_checkpoint, tmp_path_factory) -> Path:
    """Real WikiQA dev candidates of 12 questions (some without a correct answer), plus one row
    without a qid, ranked by the tiny student and the baseline."""
    rows, qids = [], []
    for line in (shared_data / "wikiqa" / "dev.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["qid"] not in qids:
            if len(qids) == 12:
                break
            qids.append(row["qid"])
        rows.append({"left": row["left"], "right": row["right"], "label": row["label"], "qid": row["qid"]})
    rows.append({"left": "a question", "right": "an answer", "label": 1, "qid": None})
    tmp = tmp_path_factory.mktemp("wikiqa")
    output = tmp / "out"
    run(EvaluateJob(pairs=(str(write_jsonl(tmp / "pairs.jsonl", rows)),), output=str(output), group_col="qid",
                    models=(f"student={tiny_checkpoint}", "baseline"), compare=("baseline,student",)), argv=[])
    return output


def test_ranking_metrics_per_query_from_the_written_scores(wikiqa_ranked):
    from encoders.ranking_metrics import rank_queries
    metrics = json.loads((wikiqa_ranked / "metrics.json").read_text())
    scores = pq.read_table(wikiqa_ranked / "scores.parquet").to_pydict()
    assert None not in scores["group"] and len(scores["group"]) == metrics["pairs"]["count"]
    groups, labels = np.array(scores["group"]), np.array(scores["target"])
    rankable = [q for q in set(groups) if 0 < labels[groups == q].sum() < (groups == q).sum()]
    for name in ("student", "baseline"):
        ranking = metrics["models"][name]["ranking"]
        assert ranking["queries_total"] == 12 and ranking["queries"] == len(rankable) < 12
        # MRR@10 recomputed by hand from the written scores (no ties among real cosines).
        reciprocal = []
        for q in rankable:
            ranked = labels[groups == q][np.argsort(-np.array(scores[f"score:{name}"])[groups == q])]
            first = int(np.flatnonzero(ranked > 0)[0]) + 1
            reciprocal.append(1 / first if first <= 10 else 0.0)
        assert ranking["mrr@10"] == pytest.approx(np.mean(reciprocal))
        assert ranking["map"] == pytest.approx(rank_queries(scores[f"score:{name}"], labels, groups).means()["map"])
    summary = json.loads((wikiqa_ranked / "_SUMMARY.json").read_text())
    assert summary["dead_letters"] == {"null_id": 1}


def test_compare_gives_paired_intervals_over_queries_and_pairs(wikiqa_ranked):
    metrics = json.loads((wikiqa_ranked / "metrics.json").read_text())
    (comparison,) = metrics["comparisons"]
    assert (comparison["a"], comparison["b"]) == ("baseline", "student")
    differences = comparison["differences"]
    assert set(differences) == {"auc", "mrr@10", "map", "ndcg@10"}
    models = metrics["models"]
    for metric in ("mrr@10", "map", "ndcg@10"):
        d = differences[metric]
        assert d["unit"] == "queries" and d["count"] == models["student"]["ranking"]["queries"]
        assert d["difference"] == pytest.approx(models["baseline"]["ranking"][metric] - models["student"]["ranking"][metric])
        assert d["low"] <= d["difference"] <= d["high"]
    assert differences["auc"]["unit"] == "pairs"
    assert differences["auc"]["difference"] == pytest.approx(models["baseline"]["quality"]["auc"]
                                                             - models["student"]["quality"]["auc"])
    text = (wikiqa_ranked / "report.md").read_text()
    assert "| model | MRR@10 | MAP | nDCG@10 |" in text and "baseline − student" in text


@pytest.mark.parametrize("extra, message", [
    (["--compare", "baseline"], "--compare 'baseline' is not allowed"),
    (["--compare", "baseline,teacher"], "--compare names teacher, not among the models"),
    (["--group-col", "qid"], "no column 'qid'"),
])
def test_bad_ranking_arguments_exit_2_before_work(tmp_path, labeled, extra, message):
    result = CliRunner().invoke(evaluate.main, ["--pairs", str(labeled["pairs"]), "--output", str(tmp_path / "o"),
                                                "--model", "baseline", *extra])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_compare_on_graded_labels_uses_pearson_and_spearman_over_pairs():
    from encoders.evaluation import Scored, compare_models
    rng = np.random.default_rng(2)
    targets = rng.random(300)
    close, far = targets + rng.normal(0, 0.05, 300), targets + rng.normal(0, 1.0, 300)
    scored = {name: Scored(np.zeros((300, 1)), s) for name, s in (("close", close), ("far", far))}
    comparison = compare_models("close", "far", "graded", scored, targets, None)
    assert set(comparison["differences"]) == {"pearson", "spearman"}
    pearson_d = comparison["differences"]["pearson"]
    assert pearson_d["difference"] == pytest.approx(pearsonr(close, targets)[0] - pearsonr(far, targets)[0])
    assert pearson_d["low"] > 0 and pearson_d["unit"] == "pairs" and pearson_d["verdict"] == "a better"
    spearman_d = comparison["differences"]["spearman"]
    assert spearman_d["difference"] == pytest.approx(spearmanr(close, targets)[0] - spearmanr(far, targets)[0])
