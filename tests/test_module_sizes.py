"""The size budget (issue 25): a job module reads top to bottom as its steps, so it stays short,
and a library module holds one concern. Every job module but the CLI (jobs/cli.py, which gathers
the commands) is at most 350 lines; every library module (pipeline/, encoders/, heads/, their
sub-packages included) at most 700. A module over its budget is split along its concerns, not
squeezed."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOB_LIMIT = 350
LIBRARY_LIMIT = 700
LIBRARIES = ("pipeline", "encoders", "heads")


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def over(paths, limit: int) -> list[str]:
    return [f"{path.relative_to(ROOT)}: {lines(path)} lines > {limit}" for path in paths if lines(path) > limit]


def test_every_job_module_but_the_cli_is_at_most_350_lines():
    jobs = sorted(p for p in (ROOT / "jobs").rglob("*.py") if p.relative_to(ROOT).as_posix() != "jobs/cli.py")
    assert jobs, "no job modules found"
    assert over(jobs, JOB_LIMIT) == []


@pytest.mark.parametrize("package", LIBRARIES)
def test_every_library_module_is_at_most_700_lines(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules found in {package}/"
    assert over(modules, LIBRARY_LIMIT) == []


def test_the_budget_counts_lines_as_an_editor_shows_them(tmp_path):
    """The counter the tests use: a file of N lines is N, with or without a final newline."""
    (tmp_path / "a.py").write_text("x = 1\n" * 351)
    (tmp_path / "b.py").write_text("x = 1\n" * 349 + "x = 1")
    assert lines(tmp_path / "a.py") == 351 and lines(tmp_path / "b.py") == 350
