"""Pre-flight check of a job's pass-through Beam options, read from the installed Beam's source.

A job hands every option it does not declare to Beam. Before Beam is imported (11-33 s on a busy
machine), this module refuses an option that no Beam runner defines, with a "did you mean" among
Beam's options and the job's own flags, and a value that the option's declared type or choices
cannot take (``--direct_num_workers=two``, ``--direct_running_mode=bogus``).

Where the list comes from: the installed Beam's own source, without importing it. Beam's options
classes declare their flags in ``_add_argparse_args`` as ``parser.add_argument(...)`` and
``parser.add_value_provider_argument(...)`` calls with literal option strings, ``type=``, ``choices=``
and ``action=``; :func:`read_beam_options` reads those calls with :mod:`ast` (~0.1 s), so every Beam
version the package allows is checked against what it really defines, and nothing is generated or
pinned to one version. What the source does not say literally (a ``type=`` that is a function,
``choices`` computed at run time) is left to Beam's own check after the import
(pipeline/beam/runner.py ``validate_beam_args``), which stays the final word.
tests/jobs/test_preflight.py checks that this reading equals the parser the imported Beam builds.

Light: the standard library only.
"""
from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from pipeline.preflight import PreflightError

# The modules of Beam whose options classes the jobs' parser holds (pipeline/beam/runner.py
# beam_option_parser: every PipelineOptions subclass that Beam and the jobs' imports define),
# relative to the apache_beam package. The Dask runner's options need dask: they are left to
# Beam's own check (see _UNCHECKED_PREFIXES).
OPTION_SOURCES = ("options/pipeline_options.py",)
_UNCHECKED_PREFIXES = ("--dask_", "--no_dask")

_VALUE_TYPES = {"int": int, "float": float}
# argparse actions that take no value.
_NO_VALUE_ACTIONS = {"store_true", "store_false", "store_const", "count", "help", "version"}


@dataclass(frozen=True)
class BeamOption:
    """One option string as Beam declares it: whether it takes a value, and what the source says
    about the value (``value_type``: "int", "float" or None for anything else; ``choices``: the
    literal list, or None)."""
    name: str
    takes_value: bool
    value_type: str | None = None
    choices: tuple[str, ...] | None = None


def check_beam_flags(beam_args: Sequence[str], own_flags: Iterable[str] = (),
                     options: Mapping[str, BeamOption] | None = None) -> None:
    """Refuse a pass-through option that no Beam runner defines, suggesting the nearest option
    (Beam's or the job's own: a misspelt job flag lands here too), and a value its declared type
    or choices refuse. ``options``: Beam's options (default: read from the installed Beam; when
    no Beam is installed, nothing is checked here and the job's import fails on its own).

    Raises:
        PreflightError: one line naming the option(s), the value and what is allowed.
    """
    if options is None:
        options = installed_beam_options()
        if options is None:
            return
    unknown: list[str] = []
    bad_values: list[str] = []
    for name, value in _split_options(beam_args):
        if name.startswith(_UNCHECKED_PREFIXES):
            continue
        option = options.get(name)
        if option is None:
            unknown.append(name)
        elif value is not None:
            problem = _value_problem(option, value)
            if problem:
                bad_values.append(problem)
    if unknown:
        candidates = sorted(set(options) | set(own_flags))
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
            if close:
                hints.append(f"{name}: did you mean {close[0]}?")
        shown = ", ".join(arg for arg in beam_args if arg.split("=", 1)[0] in unknown)
        message = (f"unknown option(s) {shown}: not a flag of this job (see --help) nor a pipeline option of any "
                   "Beam runner")
        raise PreflightError(message + (f" ({'; '.join(hints)})" if hints else ""))
    if bad_values:
        raise PreflightError("; ".join(bad_values))


def _split_options(beam_args: Sequence[str]) -> list[tuple[str, str | None]]:
    """(option, value or None) for each ``--option`` among ``beam_args``: ``--a=v`` and ``--a v``
    (the next argument, when it is not itself an option)."""
    found = []
    for i, arg in enumerate(beam_args):
        if not arg.startswith("--"):
            continue
        if "=" in arg:
            name, value = arg.split("=", 1)
        else:
            following = beam_args[i + 1] if i + 1 < len(beam_args) else None
            name, value = arg, (following if following is not None and not following.startswith("--") else None)
        found.append((name, value))
    return found


def _value_problem(option: BeamOption, value: str) -> str | None:
    """What is wrong with ``value`` for ``option`` by its declared type and choices, or None."""
    if not option.takes_value:
        return None   # a flag's following word is a positional argument, Beam's to judge
    if option.choices is not None and value not in option.choices:
        return f"{option.name} {value!r} is not allowed: choose one of {', '.join(option.choices)}"
    convert = _VALUE_TYPES.get(option.value_type or "")
    if convert is not None:
        try:
            convert(value)
        except ValueError:
            article = "an" if option.value_type == "int" else "a"
            kind = "integer" if option.value_type == "int" else "number"
            return f"{option.name} {value!r} is not allowed: give {article} {kind}"
    return None


# --------------------------------------------------------------------------- reading Beam's source

def installed_beam_root() -> str | None:
    """The installed ``apache_beam`` package's directory, found without importing it."""
    spec = importlib.util.find_spec("apache_beam")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def installed_beam_options() -> dict[str, BeamOption] | None:
    """Every option the installed Beam's options classes declare (None without Beam)."""
    root = installed_beam_root()
    if root is None:
        return None
    paths = tuple(os.path.join(root, source) for source in OPTION_SOURCES)
    stamps = tuple((os.path.getmtime(p), os.path.getsize(p)) for p in paths if os.path.exists(p))
    return _read_cached(paths, stamps)


@functools.lru_cache(maxsize=4)
def _read_cached(paths: tuple[str, ...], stamps: tuple) -> dict[str, BeamOption]:
    return read_beam_options(paths)


def read_beam_options(paths: Sequence[str]) -> dict[str, BeamOption]:
    """Option string -> :class:`BeamOption` for every ``add_argument`` and
    ``add_value_provider_argument`` call inside the ``_add_argparse_args`` methods of the classes
    in ``paths`` (Python source files). Later declarations replace earlier ones, as Beam's
    ``conflict_handler="resolve"`` parser does."""
    options: dict[str, BeamOption] = {}
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), filename=path)
        for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
            constants = _class_constants(cls)
            for method in cls.body:
                if isinstance(method, ast.FunctionDef) and method.name == "_add_argparse_args":
                    for call in ast.walk(method):
                        for option in _declared_options(call, constants):
                            options[option.name] = option
    return options


def _class_constants(cls: ast.ClassDef) -> dict[str, object]:
    """A class body's literal assignments (``PUBLISHED_FLINK_VERSIONS = [...]``), for ``choices``
    that name them as ``cls.NAME``."""
    constants = {}
    for statement in cls.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 \
                and isinstance(statement.targets[0], ast.Name):
            try:
                constants[statement.targets[0].id] = ast.literal_eval(statement.value)
            except ValueError:
                pass
    return constants


def _declared_options(node: ast.AST, constants: Mapping[str, object]) -> list[BeamOption]:
    """The options one ``parser.add_argument(...)``-like call declares (none for other nodes)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("add_argument", "add_value_provider_argument")):
        return []
    names = [arg.value for arg in node.args
             if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--")]
    keywords = {keyword.arg: keyword.value for keyword in node.keywords if keyword.arg}
    action = keywords.get("action")
    takes_value = not (isinstance(action, ast.Constant) and action.value in _NO_VALUE_ACTIONS)
    nargs = keywords.get("nargs")
    if isinstance(nargs, ast.Constant) and nargs.value == 0:
        takes_value = False
    value_type = None
    declared_type = keywords.get("type")
    if isinstance(declared_type, ast.Name) and declared_type.id in _VALUE_TYPES:
        value_type = declared_type.id
    choices = _literal_choices(keywords.get("choices"), constants)
    return [BeamOption(name, takes_value, value_type, choices) for name in names]


def _literal_choices(node: ast.AST | None, constants: Mapping[str, object]) -> tuple[str, ...] | None:
    if node is None:
        return None
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cls":
        value = constants.get(node.attr)
    else:
        try:
            value = ast.literal_eval(node)
        except ValueError:
            return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None   # not literal: Beam's own check (after the import) judges the value
