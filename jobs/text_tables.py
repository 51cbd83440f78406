"""The columns of a job's left and right text tables, declared once for every job that reads them
(score-pairs in id mode, build-candidates).

``--texts-id-col`` / ``--texts-text-col`` (each job declares them, with its own default) name the
columns of both sides' tables; ``--left-texts-id-col`` ... override them for one side, so that a
query table (``query_id``, ``query_text``) and a product table (``sku``, ``title``) are read as
they are. Light on purpose (click only), like jobs/common.py: the pre-flight uses it too.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import click

SIDES = ("left", "right")
ROLES = ("id", "text")     # which column of a text table


def side_flag(side: str | None, role: str) -> str:
    """``--left-texts-id-col`` (one side) or ``--texts-id-col`` (both)."""
    return f"--{side + '-' if side else ''}texts-{role}-col"


def _key(side: str | None, role: str) -> str:
    return side_flag(side, role)[2:].replace("-", "_")


def side_column_options(command: Callable) -> Callable:
    """The four per-side flags (``--left-texts-id-col``, ``--left-texts-text-col`` and the right
    pair); each defaults to the shared ``--texts-*-col`` flag of the job."""
    for side in reversed(SIDES):
        for role in reversed(ROLES):
            command = click.option(side_flag(side, role), _key(side, role), default=None, metavar="COL",
                                   help=f"{role.capitalize()} column of the {side} text tables "
                                        f"(default: {side_flag(None, role)}).")(command)
    return command


def side_columns(values: Mapping[str, Any], side: str) -> dict[str, tuple[str | None, str]]:
    """``{"id": (column, flag that named it), "text": (...)}`` for ``side``'s text tables, from a
    job's flags (click's names) or its fields: the side's own flag, else the shared one."""
    chosen = {}
    for role in ROLES:
        own = values.get(_key(side, role))
        chosen[role] = (own, side_flag(side, role)) if own is not None else (values.get(_key(None, role)),
                                                                              side_flag(None, role))
    return chosen
