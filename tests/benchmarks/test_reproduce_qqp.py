"""benchmarks/reproduce_qqp.py in its --limit smoke mode: every step for real on a few dozen pairs
(two heads), the new stage two (top 2 layers on cached lower states), then resumed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce_qqp.py"


# Seven job processes (each imports torch, transformers and Beam): about 1.5 minutes on a quiet
# 2-core machine; the limit is for a shared, busy one.
@pytest.mark.timeout(2400)
def test_smoke_run_end_to_end_and_resume(shared_data, tmp_path):
    out = tmp_path / "qqp"
    command = [sys.executable, str(_PATH), "--out", str(out), "--limit", "60", "--teacher-epochs", "1",
               "--heads", "dipair,de-cos"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = (out / "RESULTS.md").read_text(encoding="utf-8")
    for model in ("teacher", "dipair", "de-cos", "baseline"):
        assert f"| {model} | " in results
    assert "dev AUC >= 0.895" in results and "(dipair) beats de-cos with an interval excluding 0" in results
    for head in ("dipair", "de-cos"):
        summary = json.loads((out / f"student-{head}" / "_SUMMARY.json").read_text())
        assert summary["metrics"]["lower_cache"]["train_layers"] == 2
        assert "--stage1-max-pairs" not in summary["arguments"]              # stage 1 over the whole set
        assert f"{summary['metrics']['best_stage']} epoch {summary['metrics']['best_epoch']}" in results
    # Resumed: every step is skipped, RESULTS.md is written again from the outputs.
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("(done before: skipped)") == 7, again.stdout[-2000:]


def test_refuses_an_output_inside_the_repository():
    """QQP is under Quora's non-commercial terms: its copies and the models trained on it must not
    land in the checkout (the default used to be REPO/runs)."""
    inside = _PATH.parents[1] / "qqp-out"
    done = subprocess.run([sys.executable, str(_PATH), "--out", str(inside), "--limit", "10"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "is inside the repository" in done.stderr, done.stderr
    assert not inside.exists()
    missing = subprocess.run([sys.executable, str(_PATH), "--limit", "10"], capture_output=True, text=True)
    assert missing.returncode == 2 and "--out" in missing.stderr
