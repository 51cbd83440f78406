"""benchmarks/virt_wikiqa.py: what it refuses before training anything, and the students it trains
(the reproduction's settings, VIRT off and on). The full run takes an hour: docs/benchmarks.md."""
from __future__ import annotations

from pathlib import Path

from benchmarks import virt_wikiqa

_PATH = Path(virt_wikiqa.__file__)


def _repro(tmp_path: Path) -> Path:
    repro = tmp_path / "repro"
    for directory in ("teacher", "distill-train", "data"):
        (repro / directory).mkdir(parents=True)
    for name in ("select.jsonl", "dev.jsonl"):
        (repro / "data" / name).write_text("", encoding="utf-8")
    return repro


def test_refuses_an_incomplete_reproduction_and_an_output_inside_the_repository(tmp_path, capsys):
    repro = _repro(tmp_path)
    (repro / "teacher").rmdir()
    assert virt_wikiqa.main(["--repro", str(repro)]) == 2
    assert "has no teacher: run benchmarks/reproduce_wikiqa.py first" in capsys.readouterr().err
    (repro / "teacher").mkdir()
    assert virt_wikiqa.main(["--repro", str(repro), "--out", str(_PATH.parents[1] / "runs-virt")]) == 2
    assert "is inside the repository" in capsys.readouterr().err
    assert virt_wikiqa.main(["--repro", str(repro), "--out", str(tmp_path / "o"), "--heads", "dipair"]) == 2
    assert "--sweep-head 'de-cos' is not one of --heads 'dipair'" in capsys.readouterr().err
    assert not (_PATH.parents[1] / "runs-virt").exists()


def test_students_use_the_reproductions_settings(tmp_path):
    repro = _repro(tmp_path)
    args = type("Args", (), {"train_layers": 2, "stage2_max_pairs": 10_000, "seed": 0})()
    flags = virt_wikiqa.student_flags(repro, args)
    flags = [f for f in flags if f != "--no-progress"]
    settings = dict(zip(flags[::2], flags[1::2]))
    assert settings["--distill"] == str(repro / "distill-train") and settings["--dev"].endswith("select.jsonl")
    assert (settings["--n"], settings["--m"], settings["--dim"], settings["--train-layers"],
            settings["--stage2-max-pairs"]) == ("12", "32", "128", "2", "10000")
    assert settings["--select-metric"] == "mrr@10" and settings["--dev-group-col"] == "qid"
