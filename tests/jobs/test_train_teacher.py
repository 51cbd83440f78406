"""``jobs.train_teacher``: bad rows with exact counts, --swap, batching, metrics, real data, CLI."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from encoders.teacher import load_teacher
from jobs import train_teacher
from encoders.metrics import average_ranks, best_threshold_accuracy, roc_auc, spearman
from encoders.training import GROUP_BATCHES, length_grouped_batches
from jobs.train_teacher import TrainTeacherJob, run
from pipeline.datasets import LabeledPairs, training_examples
from pipeline.errors import DeadLetterLimit


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def summary_of(output: Path) -> dict:
    return json.loads((output / "_SUMMARY.json").read_text())


GOOD = [{"left": f"how do I learn topic {i}?", "right": f"what is the best way to learn topic {i}?",
         "label": i % 2} for i in range(10)]


@pytest.fixture(scope="module")
def bad_rows_run(tmp_path_factory, tiny_encoder_dir):
    """One short training run over a train file with every kind of bad row."""
    tmp = tmp_path_factory.mktemp("train-bad")
    train = write_jsonl(tmp / "train.jsonl", GOOD + [
        {"left": "", "right": "x", "label": 1},                 # left_empty_text
        {"left": "a", "right": "   ", "label": 0},              # right_empty_text
        {"left": "a", "right": None, "label": 0},               # right_null_text
        {"right": "b", "label": 0},                             # left_null_text (absent)
        {"left": 7, "right": "b", "label": 0},                  # left_non_string_text
        {"left": "a", "right": "b"},                            # null_label (absent)
        {"left": "a", "right": "b", "label": None},             # null_label
        {"left": "a", "right": "b", "label": ""},               # null_label
        {"left": "a", "right": "b", "label": 2},                # invalid_label
        {"left": "a", "right": "b", "label": "yes"},            # invalid_label
        b'{"left": "broken',                                    # invalid_json
        b'{"left": "caf\xe9", "right": "b", "label": 1}',       # invalid_utf8
    ])
    dev = write_jsonl(tmp / "dev.jsonl", GOOD[:6] + [{"left": "a", "right": "b", "label": 0.5}])
    output = tmp / "teacher"
    summary = run(TrainTeacherJob(max_dead_letter_fraction=1.0,
                                  train=(str(train),), dev=(str(dev),), output=str(output), base=tiny_encoder_dir,
                                  epochs=2, batch_size=4, max_length=32, swap=True, progress=False), argv=["test"])
    return output, summary


def test_bad_rows_are_skipped_and_counted_exactly(bad_rows_run):
    output, summary = bad_rows_run
    stored = summary_of(output)
    counts = stored["counts"]
    assert {k: counts[k] for k in ("train_rows_read", "train_pairs_used", "train_rows_skipped", "train_examples",
                                   "dev_rows_read", "dev_pairs_used", "dev_rows_skipped")} == {
        "train_rows_read": 22, "train_pairs_used": 10, "train_rows_skipped": 12, "train_examples": 20,
        "dev_rows_read": 7, "dev_pairs_used": 6, "dev_rows_skipped": 1}
    assert stored["dead_letters"] == {"invalid_json": 1, "invalid_label": 3, "invalid_utf8": 1,
                                      "left_empty_text": 1, "left_non_string_text": 1, "left_null_text": 1,
                                      "null_label": 3, "right_empty_text": 1, "right_null_text": 1}
    letters = pq.read_table(output / "_dead_letter").to_pylist()
    assert len(letters) == 13
    dev_letter = [l for l in letters if l["source"].startswith(str(output.parent / "dev.jsonl"))]
    assert len(dev_letter) == 1 and "not 0 or 1" in dev_letter[0]["detail"]
    assert "train rows read 22 = used 10 + skipped 12" in stored["reconciliation"]


def test_swap_doubles_the_training_pairs(bad_rows_run):
    _, summary = bad_rows_run
    assert summary.counts["train_examples"] == 2 * summary.counts["train_pairs_used"]
    pairs = LabeledPairs(lefts=["a", "b"], rights=["c", "d"], targets=[1.0, 0.0])
    lefts, rights, targets = training_examples(pairs, swap=True)
    assert list(zip(lefts, rights, targets)) == [("a", "c", 1.0), ("b", "d", 0.0), ("c", "a", 1.0), ("d", "b", 0.0)]
    assert training_examples(pairs, swap=False) == (["a", "b"], ["c", "d"], [1.0, 0.0])


def test_summary_has_dev_metrics_per_epoch_and_the_best_checkpoint(bad_rows_run):
    output, summary = bad_rows_run
    metrics = summary_of(output)["metrics"]
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for epoch in metrics["epochs"]:
        assert set(epoch["dev"]) == {"auc", "accuracy", "log_loss", "positive_rate", "label_rate"}
        assert epoch["train_loss"] > 0 and epoch["pairs_per_second"] > 0
    best = metrics["best_epoch"]
    assert metrics["best_dev"] == metrics["epochs"][best - 1]["dev"]
    assert summary.counts["optimizer_steps"] == 2 * 5  # 20 examples / batch 4, two epochs
    teacher = load_teacher(output)
    assert summary.model_fingerprints["teacher"] == teacher.fingerprint
    assert teacher.task.max_length == 32 and teacher.task.task == "binary"
    # The saved weights are the best epoch's: the dev AUC recomputed from them matches.
    dev = [r for r in GOOD[:6]]
    logits = teacher.predict_texts([r["left"] for r in dev], [r["right"] for r in dev])
    assert roc_auc(logits[:, 0], np.array([r["label"] for r in dev])) == pytest.approx(metrics["best_dev"]["auc"])


def test_length_grouped_batches_cover_every_example_once():
    rng = random.Random(0)
    lengths = [rng.randrange(3, 60) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 8, random.Random(1))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000)) and all(1 <= len(b) <= 8 for b in batches)
    # Within a batch lengths are close: far less spread than random batches of 8 would have.
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 5 and GROUP_BATCHES * 8 < 1000
    assert length_grouped_batches(lengths, 8, random.Random(1)) == batches  # seeded


def test_training_learns_a_trivial_task(tmp_path, tiny_encoder_dir):
    """The label is the first word of the right text (yes/no): the loop must drive the loss down,
    and with AUC saturated at 1 the lower dev loss picks the best epoch."""
    words = ["apple", "river", "engine", "violin", "desert", "planet", "copper", "garden"]
    rows = [{"left": f"is {w} good", "right": ("yes" if i % 2 else "no") + f" {w}", "label": i % 2}
            for i, w in enumerate(words * 2)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows * 2)
    summary = run(TrainTeacherJob(train=(str(data),), dev=(str(data),), output=str(tmp_path / "t"),
                                  base=tiny_encoder_dir, epochs=10, lr=1e-2, batch_size=8, warmup=0.0,
                                  max_length=16, progress=False), argv=[])
    epochs = summary.metrics["epochs"]
    assert epochs[-1]["train_loss"] < 0.25 * epochs[0]["train_loss"], [e["train_loss"] for e in epochs]
    best = summary.metrics["best_dev"]
    assert best["auc"] == 1.0 and best["accuracy"] == 1.0
    assert best["log_loss"] == min(e["dev"]["log_loss"] for e in epochs if e["dev"]["auc"] == 1.0)


def test_graded_task_on_real_stsb(tmp_path, shared_data, tiny_encoder_dir):
    output = tmp_path / "sts"
    summary = run(TrainTeacherJob(train=(str(shared_data / "stsb" / "train.jsonl"),),
                                  dev=(str(shared_data / "stsb" / "dev.jsonl"),), output=str(output), task="graded",
                                  label_range=(0, 5), loss="mse", base=tiny_encoder_dir, epochs=1, batch_size=16,
                                  max_length=32, limit=48, progress=False), argv=[])
    assert summary.counts["train_rows_read"] == 48 and summary.counts["dev_rows_read"] == 48
    assert set(summary.metrics["best_dev"]) == {"spearman", "pearson", "mse"}
    task = json.loads((output / "teacher.json").read_text())
    assert task["label_range"] == [0.0, 5.0] and task["loss"] == "mse" and task["task"] == "graded"


def test_classes_task_on_real_sick_entailment(tmp_path, shared_data, tiny_encoder_dir):
    """SICK's relatedness 1-5 rounded down and shifted to 0..4 makes a 5-class set from real pairs."""
    rows = [json.loads(l) for l in (shared_data / "sick" / "train.jsonl").read_text().splitlines()[:40]]
    classes = [dict(r, label=int(r["label"]) - 1) for r in rows]
    data = write_jsonl(tmp_path / "sick.jsonl", classes + [dict(rows[0], label=5)])
    summary = run(TrainTeacherJob(train=(str(data),), dev=(str(data),), output=str(tmp_path / "k"), task="classes",
                                  num_classes=5, base=tiny_encoder_dir, epochs=1, batch_size=8, max_length=32,
                                  progress=False), argv=[])
    assert summary.dead_letters == {"invalid_label": 2}  # label 5 is not a class 0..4, in train and dev
    assert set(summary.metrics["best_dev"]) == {"accuracy", "log_loss"}
    assert load_teacher(tmp_path / "k").task.num_outputs == 5


def test_real_qqp_end_to_end_from_the_command_line(tmp_path, shared_data, tiny_encoder_dir):
    output = tmp_path / "qqp-teacher"
    result = CliRunner().invoke(train_teacher.main, [
        "--train", str(shared_data / "qqp" / "train.jsonl"), "--dev", str(shared_data / "qqp" / "dev.jsonl"),
        "--task", "binary", "--base", tiny_encoder_dir, "--epochs", "2", "--batch-size", "16", "--max-length", "32",
        "--limit", "64", "--swap", "--no-progress", "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "train_examples" in result.output and "epoch 2: train loss" in result.output
    stored = summary_of(output)
    assert stored["counts"]["train_examples"] == 128 and stored["counts"]["dev_pairs_used"] == 64
    assert stored["job"] == "train_teacher"
    assert 0 <= stored["metrics"]["best_dev"]["auc"] <= 1


@pytest.mark.parametrize("extra, message", [
    (["--task", "graded"], "needs label_range"),
    (["--task", "graded", "--label-range", "0;5"], "--label-range '0;5' is not allowed"),
    (["--task", "classes"], "num_classes=None is not allowed"),
    (["--label-col", "score"], "no column 'score'"),
    (["--epochs", "0"], "--epochs 0 is not allowed"),
    (["--warmup", "1.5"], "--warmup 1.5 is not allowed: give the fraction of all steps spent warming up"),
    (["--lr", "-1"], "--lr -1.0 is not allowed: give a learning rate > 0"),
    (["--weight-decay", "-0.1"], "--weight-decay -0.1 is not allowed: give a finite number >= 0"),
    (["--base", "./no/such/model"], "does not exist"),
])
def test_bad_arguments_exit_2_before_training(tmp_path, tiny_encoder_dir, extra, message):
    data = write_jsonl(tmp_path / "d.jsonl", GOOD)
    args = ["--train", str(data), "--dev", str(data), "--output", str(tmp_path / "out"), "--base", tiny_encoder_dir]
    result = CliRunner().invoke(train_teacher.main, args + extra)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out" / "_SUMMARY.json").exists()


def test_all_rows_bad_is_an_error(tmp_path, tiny_encoder_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [{"left": "a", "right": "b", "label": 3}])
    # Every row dead-lettered: the run refuses to commit (exit 3), before any training.
    with pytest.raises(DeadLetterLimit, match=r"2 of 2 rows dead-lettered \(every row\): train rows read 1 = used 0 "
                                              r"\+ skipped 1; dev rows read 1 .*invalid_label 2"):
        run(TrainTeacherJob(train=(str(data),), dev=(str(data),), output=str(tmp_path / "o"), base=tiny_encoder_dir,
                            progress=False), argv=[])


def test_help_explains_every_flag():
    result = CliRunner().invoke(train_teacher.main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--train", "--dev", "--label-col", "--left-col", "--right-col", "--task", "--base", "--swap",
                 "--epochs", "--lr", "--batch-size", "--max-length", "--warmup", "--seed", "--device",
                 "--label-range", "--num-classes", "--overwrite", "--limit", "--output", "--loss"):
        assert flag in result.output


def test_metrics_match_scikit_learn():
    from sklearn.metrics import roc_auc_score
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 300).astype(float)  # many ties
    labels = rng.integers(0, 2, 300)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(roc_auc(scores, np.ones(300)))
    x, y = rng.normal(size=100), rng.integers(0, 4, 100)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y)[0])
    assert list(average_ranks(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]
    accuracy, threshold = best_threshold_accuracy(scores, labels)
    brute = max(((scores >= t) == labels).mean() for t in [*np.unique(scores), np.inf])
    assert accuracy == pytest.approx(brute) and ((scores >= threshold) == labels).mean() == pytest.approx(accuracy)
