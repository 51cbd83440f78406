"""The README's examples run as written: the ids-mode command on the files in examples/ids/."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from jobs.cli import pairscore

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- run by tests/jobs/test_examples.py -->"


def readme_command(name: str) -> list[str]:
    """The README's ``pairscore <name> ...`` line (with its continuation lines) in the bash block
    after the marker."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for block in re.findall(re.escape(MARKER) + r"\n```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if line.strip().startswith(f"pairscore {name} "):
                return shlex.split(line)[1:]
    raise AssertionError(f"no `pairscore {name}` line in a marked bash block of README.md")


def test_the_ids_example_scores_every_pair_whose_ids_have_texts(tmp_path, monkeypatch):
    args = readme_command("score-pairs")
    assert "--left-id-col" in args and "examples/ids/pairs.jsonl" in args
    out = tmp_path / "example-ids"
    args[args.index("--output") + 1] = str(out)
    monkeypatch.chdir(REPO)                         # the README's paths are relative to the checkout
    result = CliRunner().invoke(pairscore, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "_SUMMARY.json").read_text())
    assert summary["counts"]["pairs_read"] == 25 and summary["counts"]["pairs_scored"] == 24
    assert summary["dead_letters"] == {"left_text_missing": 1}            # q99 has no text
    scores = pq.read_table(out / "scores").to_pandas()
    assert sorted(scores.columns) == ["left_id", "pair_id", "right_id", "score"]
    assert scores["score"].between(-1, 1).all()
    matching = scores[scores["left_id"].str[1:] == scores["right_id"].str[1:]]   # q01-p01 ...
    others = scores[scores["left_id"].str[1:] != scores["right_id"].str[1:]]
    assert len(matching) == 12 and matching["score"].mean() > others["score"].mean()
