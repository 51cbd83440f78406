"""benchmarks/sweep_wikiqa.py: its refusals, the hard-linked base it gives each configuration, and
the table's intervals (read from a report's scores.parquet; the runs themselves are the
reproduction's, tested in test_reproduce_wikiqa.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import sweep_wikiqa as sweep

_PATH = Path(sweep.__file__)


def _fake_base(root: Path) -> Path:
    base = root / "base"
    for name in ("data", "distill-train", "cache"):
        (base / name).mkdir(parents=True)
    (base / "data" / "train.jsonl").write_text("{}\n", encoding="utf-8")
    (base / "distill-train" / "_SUMMARY.json").write_text("{}", encoding="utf-8")
    (base / "cache" / "lower-states-x.safetensors").write_bytes(b"states")
    return base


def _report(root: Path, queries: int, li_better: bool) -> Path:
    """A report whose li puts the correct candidate first in every query and whose de-cos puts it
    second in every other query (li_better), or where both rank identically."""
    rows = {"target": [], "group": [], "score:li": [], "score:de-cos": [], "score:baseline": []}
    for q in range(queries):
        for candidate, label in enumerate((1.0, 0.0, 0.0)):
            rows["target"].append(label)
            rows["group"].append(f"q{q}")
            rows["score:li"].append(1.0 - candidate * 0.1)
            swapped = li_better and q % 2 == 0 and candidate < 2
            rows["score:de-cos"].append(1.0 - (1 - candidate) * 0.1 if swapped else 1.0 - candidate * 0.1)
            rows["score:baseline"].append(float(candidate))
    report = root / "report"
    report.mkdir(parents=True)
    pq.write_table(pa.table(rows), report / "scores.parquet")
    return report


def test_refuses_a_base_that_is_not_a_finished_reproduction_and_an_output_in_the_repository(tmp_path, capsys):
    assert sweep.main(["--base", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "not a finished WikiQA reproduction" in capsys.readouterr().err
    assert sweep.main(["--base", str(_fake_base(tmp_path)), "--out", str(_PATH.parent / "sweep-out")]) == 2
    assert "inside the repository" in capsys.readouterr().err
    assert not (_PATH.parent / "sweep-out").exists()


def test_unknown_configuration_is_named(tmp_path, capsys):
    assert sweep.main(["--base", str(_fake_base(tmp_path)), "--out", str(tmp_path / "o"), "--only", "layers9"]) == 2
    assert "--only layers9 is not allowed: choose from frozen, frozen-seed1" in capsys.readouterr().err


def test_configurations_share_the_base_by_hard_links(tmp_path):
    base = _fake_base(tmp_path)
    sweep.link_base(base, tmp_path / "layers4")
    sweep.link_base(base, tmp_path / "layers4")                  # again: nothing to do, no error
    for name in ("data/train.jsonl", "distill-train/_SUMMARY.json", "cache/lower-states-x.safetensors"):
        assert (tmp_path / "layers4" / name).stat().st_ino == (base / name).stat().st_ino
    # A configuration's own cache files (other trained layers) stay its own.
    (tmp_path / "layers4" / "cache" / "lower-states-y.safetensors").write_bytes(b"mine")
    assert not (base / "cache" / "lower-states-y.safetensors").exists()


def test_differences_are_per_question_and_bonferroni_is_wider(tmp_path):
    found = sweep.differences(_report(tmp_path / "a", 200, li_better=True), comparisons=8)
    assert found["mrr"]["li"] == 1.0 and np.isclose(found["mrr"]["de-cos"], 0.75)
    plain, widened = found["vs_de_cos"]["li"]
    assert np.isclose(plain["difference"], 0.25) and plain["low"] > 0
    assert widened["level"] == 1 - 0.05 / 8
    assert widened["low"] <= plain["low"] and widened["high"] >= plain["high"]
    assert "dipair" not in found["vs_de_cos"]                    # no dipair student in this report

    tie = sweep.differences(_report(tmp_path / "b", 50, li_better=False), comparisons=1)
    assert tie["vs_de_cos"]["li"][0]["difference"] == 0.0
