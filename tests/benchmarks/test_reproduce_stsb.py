"""benchmarks/reproduce_stsb.py: the sentence-disjoint split, and the whole graded reproduction in
its --limit smoke mode (every step for real on a few dozen pairs), then resumed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import reproduce_stsb as reproduce

_PATH = Path(reproduce.__file__)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _sentences(rows: list[dict]) -> set[str]:
    return {text for row in rows for text in (row["left"], row["right"])}


def test_linked_pairs_stay_together():
    rows = [{"left": "a", "right": "b"}, {"left": "c", "right": "d"}, {"left": "b", "right": "e"},
            {"left": "f", "right": "a"}, {"left": "d", "right": "d"}]
    assert sorted(reproduce._components(rows)) == [[0, 2, 3], [1, 4]]


def test_split_shares_no_sentence_and_mines_only_training_sentences(shared_data, tmp_path):
    counts = reproduce.prepare_data(tmp_path, None, 1000)
    train, select, dev = (_rows(tmp_path / f"{name}.jsonl") for name in ("train", "select", "dev"))
    source = _rows(shared_data / "stsb" / "train.jsonl")
    assert not _sentences(train) & _sentences(select)
    assert 1000 <= len(select) < 1100 and len(train) + len(select) == len(source)
    assert sorted(r["id"] for r in train + select) == sorted(r["id"] for r in source)
    assert {r["text"] for r in _rows(tmp_path / "sentences.jsonl")} == _sentences(train)
    assert len(dev) == 1500 and all(0 <= r["label"] <= 5 for r in dev)
    assert counts["dev"]["sentences_also_in_training_pairs"] == len(_sentences(dev) & _sentences(train)) > 0
    # The one big cluster of linked news pairs stays in training (it alone would fill a fifth of selection).
    biggest = max(reproduce._components(source), key=len)
    assert len(biggest) > 100 and {source[i]["id"] for i in biggest} <= {r["id"] for r in train}
    assert reproduce.prepare_data(tmp_path, None, 1000) == counts            # written once, then read back


# Eight job processes (each imports torch, transformers and Beam): about 1.5 minutes on a quiet
# 2-core machine; the limit is for a shared, busy one.
@pytest.mark.timeout(2400)
def test_smoke_run_end_to_end_and_resume(shared_data, tmp_path):
    out = tmp_path / "stsb"
    command = [sys.executable, str(_PATH), "--out", str(out), "--limit", "60", "--teacher-epochs", "1",
               "--stage1-epochs", "1"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = (out / "RESULTS.md").read_text(encoding="utf-8")
    for model in ("teacher", "dipair", "li", "de-cos", "baseline"):
        assert f"| {model} | " in results
    for comparison in ("dipair − de-cos", "li − de-cos", "li − teacher", "teacher − baseline"):
        assert f"| {comparison} | " in results
    assert "## Targets" in results and "Pearson >= zero-shot cosine + 0.02" in results
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["task"] == "graded" and {"pearson", "spearman"} <= set(metrics["models"]["li"]["quality"])
    teacher = json.loads((out / "teacher" / "_SUMMARY.json").read_text())
    assert teacher["metrics"]["task"]["task"] == "graded" and teacher["metrics"]["task"]["label_range"] == [0.0, 5.0]
    for head in ("dipair", "li", "de-cos"):
        summary = json.loads((out / f"student-{head}" / "_SUMMARY.json").read_text())["metrics"]
        assert summary["lower_cache"]["train_layers"] == 2 and summary["task"]["task"] == "graded"
        assert f"{summary['best_stage']} epoch {summary['best_epoch']}" in results
    # Resumed: every step is skipped, RESULTS.md is written again from the outputs.
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("(done before: skipped)") == 8, again.stdout[-2000:]
    assert (out / "RESULTS.md").read_text(encoding="utf-8").split("## Steps")[0] == results.split("## Steps")[0]


def test_output_inside_the_repository_is_refused(shared_data):
    assert reproduce.main(["--out", str(_PATH.parent / "stsb-out"), "--limit", "10"]) == 2
    assert not (_PATH.parent / "stsb-out").exists()
