"""Pre-flight check of a job's pass-through Beam options, and the list it checks against.

An option that no Beam runner defines is refused before the job imports Beam, with a "did you
mean" among Beam's options and the job's own flags. The list is :mod:`pipeline.beam.beam_options`,
generated from the installed Beam: ``python -m pipeline.beam.option_names --write-beam-options``
(tests/jobs/test_preflight.py regenerates it and compares). Light: the standard library only;
Beam is imported only to regenerate the list.
"""
from __future__ import annotations

import difflib
import os
from importlib import metadata
from typing import Iterable, Sequence

from pipeline.preflight import PreflightError


def check_beam_flags(beam_args: Sequence[str], own_flags: Iterable[str] = ()) -> None:
    """Refuse a pass-through option that no Beam runner defines, suggesting the nearest option
    (Beam's or the job's own: a misspelt job flag lands here too). Skipped when the installed
    Beam is not the one the list was generated from (its own check runs after the import)."""
    from pipeline.beam import beam_options

    if _installed_beam() != beam_options.BEAM_VERSION:
        return
    unknown = []
    for arg in beam_args:
        if not arg.startswith("--"):
            continue
        name = arg.split("=", 1)[0]
        # DaskRunner options exist only with dask installed: left to Beam's own check.
        if name not in beam_options.OPTIONS and not name.startswith(("--dask_", "--no_dask")):
            unknown.append(name)
    if not unknown:
        return
    candidates = sorted(set(beam_options.OPTIONS) | set(own_flags))
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
        if close:
            hints.append(f"{name}: did you mean {close[0]}?")
    shown = ", ".join(arg for arg in beam_args if arg.split("=", 1)[0] in unknown)
    message = (f"unknown option(s) {shown}: not a flag of this job (see --help) nor a pipeline option of any "
               "Beam runner")
    raise PreflightError(message + (f" ({'; '.join(hints)})" if hints else ""))


def _installed_beam() -> str | None:
    try:
        return metadata.version("apache-beam")
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- the list of Beam's options

BEAM_OPTIONS_MODULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "beam_options.py")


def generate_beam_options() -> tuple[str, list[str]]:
    """(installed Beam's version, every ``--option`` string its options classes define), as the
    jobs see them: after importing the Beam jobs' library (pipeline/beam), so every options class it brings is there, and
    through ``pipeline.beam.runner.beam_option_parser``, the parser the jobs' own check uses. Imports
    Beam: for regenerating :mod:`pipeline.beam.beam_options` and its test only."""
    import apache_beam

    import pipeline.beam.encode  # noqa: F401 - the options classes the Beam jobs' library brings
    import pipeline.beam.label  # noqa: F401
    import pipeline.beam.score  # noqa: F401
    from pipeline.beam.runner import beam_option_parser

    names = {option for option in beam_option_parser()._option_string_actions if option.startswith("--")}
    return apache_beam.__version__, sorted(names)


def beam_options_source(version: str, names: Sequence[str]) -> str:
    """The text of pipeline/beam/beam_options.py for ``version`` and ``names``."""
    lines = [f'"""Every pipeline option string of apache-beam {version} (all runners), for the pre-flight check of',
             "pass-through flags (pipeline/beam/option_names.py). Generated:",
             "``python -m pipeline.beam.option_names --write-beam-options``;",
             'tests/jobs/test_preflight.py regenerates it from the installed Beam and compares."""',
             f"BEAM_VERSION = {version!r}", "OPTIONS = frozenset({"]
    lines += [f"    {name!r}," for name in names]
    lines.append("})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write-beam-options"]:
        sys.exit("usage: python -m pipeline.beam.option_names --write-beam-options")
    with open(BEAM_OPTIONS_MODULE, "w", encoding="utf-8") as handle:
        handle.write(beam_options_source(*generate_beam_options()))
    print(f"wrote {BEAM_OPTIONS_MODULE}")
