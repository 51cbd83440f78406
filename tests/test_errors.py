"""User errors are typed: a mistake the user can fix is raised as the usage-error family
(encoders/errors.py) and a job reports it in one line with exit 2; anything else, a plain
ValueError included, is a bug: its traceback, a line saying so, exit 1 (jobs.common.run_job).

Read from the source like tests/test_layers.py: every ``raise`` whose message names a ``--flag``
must raise a class of the family (or a one-line refusal, or click's own flag error), so that a
message written for the user never ends as a traceback with exit 1.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import (EXIT_BUG, EXIT_USAGE, FlagError, InputChanged, ModelError, RefusedToCommit, UsageError,
                             usage_in)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "encoders", "heads", "jobs")
SOURCES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))

# Where a one-line exit other than the family's is right for a message naming a flag: a run that
# refuses to commit (exit 3: "try a lower --lr"), and click's own exceptions (exit 2, while the
# flags parse, before anything of pairscore is imported: jobs.common.FlagValueError).
ONE_LINE_ROOTS = {"UsageError", "RefusedToCommit", "ClickException", "BadParameter"}
FLAG = re.compile(r"(?:^|[\s(/'\"`])--(?:[a-z]|$)")


def class_bases() -> dict[str, set[str]]:
    """Class name -> the names of its bases, for every class defined in the four packages (names
    are unique enough here; a clash would only widen what counts as the family)."""
    bases: dict[str, set[str]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                names = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}
                bases.setdefault(node.name, set()).update(names)
    return bases


def one_line_classes() -> set[str]:
    bases, found = class_bases(), set(ONE_LINE_ROOTS)
    changed = True
    while changed:
        changed = False
        for name, parents in bases.items():
            if name not in found and parents & found:
                found.add(name)
                changed = True
    return found


def message_text(call: ast.Call) -> str:
    """The literal text of an exception's message: its string constants, an f-string's
    placeholders as ``{}``."""
    parts = []
    for arg in call.args:
        for node in ast.walk(arg):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts.append(node.value)
            elif isinstance(node, ast.FormattedValue):
                parts.append("{}")
    return "".join(parts)


def raises_naming_a_flag() -> list[tuple[str, int, str, str]]:
    """(file, line, raised class, message) for every ``raise Class(...)`` whose text names a --flag."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                text = message_text(node.exc)
                if name and FLAG.search(text):
                    found.append((str(path.relative_to(ROOT)), node.lineno, name, text))
    return found


def test_every_message_naming_a_flag_is_raised_as_a_usage_error():
    family = one_line_classes()
    sites = raises_naming_a_flag()
    assert len(sites) > 50           # the scan finds the flags' messages (jobs/, encoders/, pipeline/)
    wrong = [f"{path}:{line}: raise {cls}({text[:70]!r}...)" for path, line, cls, text in sites if cls not in family]
    assert wrong == []


def test_the_scan_catches_a_flag_message_raised_as_a_plain_value_error():
    call = ast.parse('raise ValueError(f"--left-col {x!r} is not allowed: give a column")').body[0]
    assert FLAG.search(message_text(call.exc))
    assert "ValueError" not in one_line_classes()
    assert {"FlagError", "ModelError", "InputError", "PreflightError", "StoreError", "PartChanged", "ModelChanged",
            "FileSystemUnavailable", "FlagValueError", "DeadLetterLimit"} <= one_line_classes()


def test_the_family_is_one_tree_of_value_errors():
    from encoders.file_fingerprint import ModelChanged
    from pipeline.files import FileSystemUnavailable
    from pipeline.preflight import PreflightError
    from pipeline.readers import InputError
    from pipeline.store import PartChanged, StoreError

    for cls in (FlagError, ModelError, ModelChanged, FileSystemUnavailable, PreflightError, InputError, StoreError,
                PartChanged):
        assert issubclass(cls, UsageError) and issubclass(cls, ValueError), cls
    import encoders.errors
    assert UsageError is encoders.errors.UsageError     # re-exported, not a second class


@pytest.mark.parametrize("options, message", [
    ({"ffn": -1}, r"^ffn=-1 is not allowed: use a positive integer$"),
    ({"width": 3}, r"^unknown option 'width' for head 'dipair'; allowed options: layers, heads"),
    ({"heads": 5}, r"^heads=5 is not allowed: it must divide the token dimension dim=32$"),
])
def test_a_head_refused_for_the_users_options_is_a_model_error(options, message):
    """heads/ raises ValueError (a plain-PyTorch library); built from the user's --head-options or a
    checkpoint's config (encoders.checkpoint.build_head), the same message is a ModelError: exit 2."""
    from encoders.checkpoint import build_head
    from heads import build_head as build_plain_head

    with pytest.raises(ValueError, match=message) as plain:
        build_plain_head("dipair", dim=32, left_tokens=2, right_tokens=3, **options)
    assert not isinstance(plain.value, UsageError)
    with pytest.raises(ModelError, match=message):
        build_head("dipair", dim=32, left_tokens=2, right_tokens=3, **options)


# --------------------------------------------------------------------------- Beam's wrapping

def test_a_usage_error_wrapped_by_beam_in_process_is_its_one_line():
    wrapped = FlagError("--head-quantize int8 is not allowed for this model [while running 'Score/ScorePairs']")
    found = usage_in(wrapped)
    assert type(found) is FlagError and str(found) == "--head-quantize int8 is not allowed for this model"


def test_a_usage_error_from_another_process_is_its_class_and_one_line():
    text = textwrap.dedent("""\
        Traceback (most recent call last):
          File "apache_beam/runners/common.py", line 1512, in apache_beam.runners.common.DoFnRunner.process
        pipeline.readers.InputError: a.parquet is corrupt: bad page

        During handling of the above exception, another exception occurred:

        Traceback (most recent call last):
          File "apache_beam/runners/worker/sdk_worker.py", line 300, in _execute
        pipeline.readers.InputError: a.parquet is corrupt: bad page [while running 'Read/Rows']
        """)
    from pipeline.readers import InputError

    found = usage_in(RuntimeError(text))
    assert type(found) is InputError and str(found) == "a.parquet is corrupt: bad page"


@pytest.mark.parametrize("last", [
    "ValueError: could not broadcast input array from shape (3,) into shape (4,)",   # a bug in numpy's hands
    "pipeline.errors.InputChanged: store part x changed after this run started",      # exit 3, not 2
    "pipeline.readers.NoSuchClass: made up",
    "somewhere.else.InputError: not ours",
])
def test_anything_else_from_another_process_is_not_a_usage_error(last):
    text = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
            "pipeline.readers.InputError: an input error that a bug then hid\n\n"
            "During handling of the above exception, another exception occurred:\n\n"
            f"Traceback (most recent call last):\n  File \"y.py\", line 2, in g\n{last}\n")
    assert usage_in(RuntimeError(text)) is None


def test_a_plain_value_error_or_a_refusal_is_not_a_usage_error():
    assert usage_in(ValueError("--flag 3 is not allowed")) is None
    assert usage_in(InputChanged("model file x changed")) is None
    assert not isinstance(InputChanged("x"), UsageError) and issubclass(InputChanged, RefusedToCommit)


# --------------------------------------------------------------------------- what a worker process prints

def worker_record(last: str) -> list[bytes]:
    """A Beam worker's log record of a failed bundle, as its default handler prints it."""
    return [line.encode() for line in [
        "ERROR:apache_beam.runners.worker.sdk_worker:Error processing instruction bundle_7. Original traceback is",
        "Traceback (most recent call last):", '  File "pipeline/readers.py", line 476, in _read_parquet',
        "OSError: ZSTD decompression failed: Data corruption detected", "",
        "The above exception was the direct cause of the following exception:", "",
        "Traceback (most recent call last):", '  File "pipeline/beam/encode.py", line 41, in process', last, ""]]


def through_the_filter(lines: list[bytes]) -> list[bytes]:
    from pipeline.stderr import _WorkerUsageErrors

    blocks = _WorkerUsageErrors()
    return [out for line in lines for out in blocks.feed(line)] + blocks.flush()


def test_a_workers_record_of_a_usage_error_is_dropped_and_the_jobs_line_kept():
    import pipeline.readers  # noqa: F401  (the launching process has imported the class it names)

    record = worker_record("pipeline.readers.InputError: a.parquet is corrupt [while running 'ReadRows']")
    assert through_the_filter(record + [b"error: a.parquet is corrupt"]) == [b"error: a.parquet is corrupt"]
    assert through_the_filter([b"progress 10 rows"] + record) == [b"progress 10 rows"]


def test_a_workers_record_of_a_bug_passes_whole():
    record = worker_record("KeyError: 'left'")
    assert through_the_filter(record + [b"error: score_pairs failed unexpectedly (exit 1)"]) == \
        record + [b"error: score_pairs failed unexpectedly (exit 1)"]


def test_a_forwarded_log_message_with_escaped_newlines_names_the_usage_error():
    from pipeline.errors import mentions_usage_error

    forwarded = ('Worker: severity: ERROR message: "Error processing instruction bundle_7. Original traceback is'
                 '\\nTraceback (most recent call last):\\n  File \\"x.py\\"\\npipeline.readers.InputError: '
                 'a.parquet is corrupt"')
    assert mentions_usage_error(forwarded)
    assert not mentions_usage_error(forwarded.replace("pipeline.readers.InputError", "builtins.ValueError"))
    assert not mentions_usage_error("xpipeline.readers.InputError: glued to another word")


# --------------------------------------------------------------------------- a job's exit status

def run_job_in_a_fresh_process(tmp_path: Path, raising: str) -> subprocess.CompletedProcess:
    """``jobs.common.run_job`` on a job whose body is ``raising`` (Python statements), as the
    command line runs it: (exit status, stdout, stderr)."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""\
        from jobs.common import run_job

        def job():
            {raising}

        run_job(job, name="demo", quiet=True)
        """))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_an_internal_value_error_exits_1_with_its_traceback_and_the_bug_line(tmp_path):
    done = run_job_in_a_fresh_process(tmp_path, 'import numpy as np; np.zeros(3) + np.zeros(4)')
    assert done.returncode == EXIT_BUG, done.stderr
    assert "Traceback (most recent call last):" in done.stderr
    assert "ValueError: operands could not be broadcast together" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: demo failed unexpectedly (exit 1): a bug in pairscore or a library it uses")


def test_a_usage_error_exits_2_with_one_line_and_no_traceback(tmp_path):
    done = run_job_in_a_fresh_process(
        tmp_path, 'from pipeline.errors import FlagError; raise FlagError("--top-k -1 is not allowed: give K >= 0")')
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr.strip().splitlines() == ["error: --top-k -1 is not allowed: give K >= 0"]


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe not UTF-8", b"[1, 2]"], ids=["json", "utf-8", "list"])
def test_a_damaged_distillation_manifest_is_the_users_to_fix(tmp_path, content):
    """A --previous or --distill directory whose manifest is not a JSON object: json's and the
    decoder's own ValueErrors would read as a bug (exit 1); it is an input (exit 2) naming the flag."""
    from pipeline.datasets import DistillationManifest, distillation_task
    from pipeline.readers import InputError
    from pipeline.store import MANIFEST_FILE

    (tmp_path / MANIFEST_FILE).write_bytes(content)
    with pytest.raises(InputError, match=rf"^--previous: {tmp_path / MANIFEST_FILE} "):
        DistillationManifest.read(str(tmp_path))
    with pytest.raises(InputError, match=rf"^--distill: {tmp_path / MANIFEST_FILE} "):
        distillation_task([str(tmp_path)])
