"""benchmarks/reproduce_wikiqa.py: the question-disjoint split, and the whole reproduction in its
--limit smoke mode (every step for real, on a few hundred pairs: a few minutes), then resumed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import reproduce_wikiqa as reproduce

_PATH = Path(reproduce.__file__)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_split_is_by_question_and_keeps_questions_whole(shared_data, tmp_path):
    counts = reproduce.prepare_data(tmp_path, 400, 0.2)
    train, select = _rows(tmp_path / "train.jsonl"), _rows(tmp_path / "select.jsonl")
    dev, trec = _rows(tmp_path / "dev.jsonl"), _rows(tmp_path / "trecqa-dev.jsonl")
    assert not {r["qid"] for r in train} & {r["qid"] for r in select}
    assert counts["select"]["questions"] == round(0.2 * (counts["train"]["questions"] + counts["select"]["questions"]))
    # Whole questions: every kept question has all its candidates from the source file.
    source = _rows(shared_data / "wikiqa" / "dev.jsonl")
    for qid in {r["qid"] for r in dev}:
        assert sum(r["qid"] == qid for r in dev) == sum(r["qid"] == qid for r in source)
    assert 400 <= len(dev) < 400 + 40 and len({r["left"] for r in trec}) == counts["trecqa-dev"]["questions"]
    assert reproduce.prepare_data(tmp_path, 400, 0.2) == counts            # written once, then read back


def test_teacher_sample_is_balanced_and_written_once(shared_data, tmp_path):
    reproduce.prepare_data(tmp_path, 600, 0.2)
    train = _rows(tmp_path / "train.jsonl")
    sample_path = reproduce.balanced_sample(tmp_path / "train.jsonl", tmp_path / "teacher.jsonl", 3)
    sample = _rows(sample_path)
    positives = sum(r["label"] for r in train)
    assert sum(r["label"] for r in sample) == positives and len(sample) == 4 * positives
    assert all(r in train for r in sample)
    assert reproduce.balanced_sample(tmp_path / "train.jsonl", tmp_path / "teacher.jsonl", 3) == sample_path
    assert _rows(sample_path) == sample
    assert reproduce.balanced_sample(tmp_path / "train.jsonl", tmp_path / "x.jsonl", 0) == tmp_path / "train.jsonl"


# Eight job processes (each imports torch, transformers and Beam): about 3-4 minutes on a quiet 2-core
# machine; the limit is for a shared, busy one.
@pytest.mark.timeout(2400)
def test_smoke_run_end_to_end_and_resume(shared_data, tmp_path):
    out = tmp_path / "wikiqa"
    command = [sys.executable, str(_PATH), "--out", str(out), "--limit", "80", "--stage1-epochs", "1"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = (out / "RESULTS.md").read_text(encoding="utf-8")
    for model in ("teacher", "dipair", "li", "de-cos", "baseline"):
        assert f"| {model} | " in results
    assert "| dipair − de-cos | " in results and "## Transfer: TrecQA dev" in results and "## Targets" in results
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["group_col"] == "qid" and {"mrr@10", "map", "ndcg@10"} <= set(metrics["models"]["dipair"]["ranking"])
    for head in ("dipair", "li", "de-cos"):
        summary = json.loads((out / f"student-{head}" / "_SUMMARY.json").read_text())["metrics"]
        assert summary["lower_cache"]["train_layers"] == 2 and summary["select_metric"] == "mrr@10"
        assert f"{summary['best_stage']} epoch {summary['best_epoch']}" in results
    # Resumed: every step is skipped, RESULTS.md is written again from the outputs.
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("(done before: skipped)") == 7, again.stdout[-2000:]


def test_output_inside_the_repository_is_refused(shared_data):
    assert reproduce.main(["--out", str(_PATH.parent / "wikiqa-out"), "--limit", "10"]) == 2
    assert not (_PATH.parent / "wikiqa-out").exists()
