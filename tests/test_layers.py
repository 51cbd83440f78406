"""The dependency rule, enforced: ``jobs -> pipeline/beam | pipeline/spark -> pipeline -> encoders -> heads``.

Read from the source (every ``import`` statement, inside functions too, since a job imports its
library where it runs): a module may import its own layer and the layers below it, never one
above; no job imports another job (``jobs/cli.py`` gathers them; ``jobs/common.py``, ``jobs/runner.py``,
``jobs/preflight.py``, ``jobs/text_tables.py``, ``jobs/engines.py`` and ``jobs/options.py`` are shared helpers, which
import no job);
the two engine adapters share a layer and neither imports the other; pyspark is imported in ``pipeline/spark`` only;
Beam appears below ``pipeline/beam`` only as its FileSystems (in ``encoders/remote.py`` and in
``pipeline/``); package ``__init__`` files import nothing heavy; and no import circle exists.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("heads", "encoders", "pipeline", "jobs")
LAYERS = {"heads": 0, "encoders": 1, "pipeline": 2, "pipeline.beam": 3, "pipeline.spark": 3, "jobs": 4}
ADAPTERS = ("pipeline.beam", "pipeline.spark")
BEAM_FILESYSTEMS = ("apache_beam.io.filesystems", "apache_beam.io.filesystem")
HEAVY = ("torch", "transformers", "apache_beam", "safetensors")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    for adapter in ADAPTERS:
        if module == adapter or module.startswith(adapter + "."):
            return adapter
    top = module.split(".")[0]
    return top if top in LAYERS else None


def imports_of(path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``path``; ``from pkg import mod`` names the
    submodule when ``pkg/mod.py`` exists."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                    (ROOT / Path(*candidate.split(".")) / "__init__.py").exists()
                found.append((candidate if is_module else node.module, node.lineno))
    return found


SOURCES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
OURS = {module_name(p) for p in SOURCES}


def test_the_sources_are_found():
    assert {"jobs.score_pairs", "pipeline.beam.score", "pipeline.scoring_core", "encoders.checkpoint",
            "heads"} <= OURS


def upward_imports() -> list[str]:
    problems = []
    for path in SOURCES:
        importer = module_name(path)
        for imported, line in imports_of(path):
            target = layer_of(imported)
            if target is not None and LAYERS[target] > LAYERS[layer_of(importer)]:
                problems.append(f"{importer}:{line} imports {imported} ({target} is above {layer_of(importer)})")
    return problems


def test_no_layer_imports_a_layer_above_it():
    assert upward_imports() == []


# What every job shares: not jobs themselves, and they import no job.
JOB_HELPERS = ("jobs", "jobs.common", "jobs.runner", "jobs.preflight", "jobs.text_tables", "jobs.engines",
               "jobs.options")


def test_no_job_imports_another_job():
    problems = []
    for path in SOURCES:
        importer = module_name(path)
        if layer_of(importer) != "jobs" or importer == "jobs.cli":
            continue
        for imported, line in imports_of(path):
            if layer_of(imported) != "jobs" or imported == importer:
                continue
            if imported not in JOB_HELPERS:
                problems.append(f"{importer}:{line} imports {imported}")
    assert problems == []


def test_beam_below_pipeline_beam_is_only_its_filesystems():
    problems = []
    for path in SOURCES:
        importer = module_name(path)
        if layer_of(importer) not in ("heads", "encoders", "pipeline"):
            continue
        for imported, line in imports_of(path):
            if imported.split(".")[0] != "apache_beam":
                continue
            allowed = imported.startswith(BEAM_FILESYSTEMS) and layer_of(importer) == "pipeline" or \
                imported.startswith(BEAM_FILESYSTEMS) and importer == "encoders.remote"
            if not allowed:
                problems.append(f"{importer}:{line} imports {imported}")
    assert problems == []


def adapter_problems() -> list[str]:
    """An engine adapter importing the other one, or pyspark imported outside pipeline/spark."""
    problems = []
    for path in SOURCES:
        importer = module_name(path)
        for imported, line in imports_of(path):
            if imported.split(".")[0] == "pyspark" and layer_of(importer) != "pipeline.spark":
                problems.append(f"{importer}:{line} imports {imported} (pyspark belongs in pipeline/spark)")
            target = layer_of(imported)
            if target in ADAPTERS and layer_of(importer) in ADAPTERS and target != layer_of(importer):
                problems.append(f"{importer}:{line} imports {imported} (engine adapters do not import each other)")
    return problems


def test_engine_adapters_stay_apart_and_pyspark_stays_in_its_adapter():
    assert adapter_problems() == []


def test_the_adapter_rule_catches_a_crossing_import(monkeypatch):
    fake = ROOT / "pipeline" / "spark" / "score.py"
    original = imports_of

    def crossing(path, top_level_only=False):
        found = original(path, top_level_only)
        return found + [("pipeline.beam.score", 1)] if path == fake else found
    monkeypatch.setitem(globals(), "imports_of", crossing)
    assert adapter_problems() == ["pipeline.spark.score:1 imports pipeline.beam.score "
                                  "(engine adapters do not import each other)"]


@pytest.mark.parametrize("package", ["encoders", "pipeline", "pipeline.beam", "pipeline.spark", "pipeline.output",
                                     "jobs"])
def test_package_inits_are_light(package):
    """heads/__init__.py is the head registry itself (torch), and stays as it is."""
    init = ROOT / Path(*package.split(".")) / "__init__.py"
    heavy = [imported for imported, _ in imports_of(init) if imported.split(".")[0] in HEAVY + PACKAGES]
    assert heavy == []


def test_no_import_circle():
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        importer = module_name(path)
        graph[importer] = {imported for imported, _ in imports_of(path)
                           if imported in OURS and imported != importer and not importer.startswith(imported + ".")}
    # Tarjan's strongly connected components: any component of two or more modules is a circle.
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert circles == []


def test_the_rule_test_catches_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: an encoders module importing pipeline is reported."""
    fake = ROOT / "encoders" / "checkpoint.py"
    original = imports_of

    def with_upward(path, top_level_only=False):
        found = original(path, top_level_only)
        return found + [("pipeline.output.commit", 1)] if path == fake else found
    monkeypatch.setitem(globals(), "imports_of", with_upward)
    assert upward_imports() == ["encoders.checkpoint:1 imports pipeline.output.commit (pipeline is above encoders)"]
