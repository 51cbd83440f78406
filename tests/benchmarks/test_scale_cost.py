"""docs/scale.md's cost table is the one benchmarks/scale_cost.py writes: the committed block
between the markers re-renders, from the figures it carries, to exactly itself."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("scale_cost", REPO / "benchmarks" / "scale_cost.py")
scale_cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scale_cost)


def test_the_committed_table_is_the_scripts_format():
    block = scale_cost.committed_block((REPO / "docs" / "scale.md").read_text(encoding="utf-8"))
    assert scale_cost.cost_table(scale_cost.figures_of(block)) == block


def test_writing_replaces_the_block_and_nothing_else(tmp_path):
    figures = {"command": "python benchmarks/scale_cost.py", "date": "2026-12-07", "machine": "test",
               "head_us": [250.0, 260.0], "encode_ms": 10.0, "tokens": 12.0,
               "join_us": {"shuffle": 300.0, "broadcast": 200.0}, "shuffle": {"join_left_pair": 100}}
    doc = tmp_path / "scale.md"
    doc.write_text(f"before\n{scale_cost.BEGIN}\nold table\n{scale_cost.END}\nafter\n", encoding="utf-8")
    scale_cost.write_doc(doc, figures)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("before\n") and text.endswith("\nafter\n") and "old table" not in text
    block = scale_cost.committed_block(text)
    assert scale_cost.figures_of(block) == figures
    assert "| stage two CPU, shuffle join (300 µs per pair) | 83 vCPU-hours = **10 worker-hours** |" in block
    assert "**250–260 CPU-µs per pair**" in block
