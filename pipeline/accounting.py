"""A run's row accounting: every row read is somewhere, or the run is not reported as done.

Each job states its counts as :class:`Balance` equations (``pairs read N = scored + duplicates +
dead-lettered``); :func:`reconcile` checks every one and joins the shown ones into the summary's
reconciliation line. A balance that does not hold is a bug (a bundle lost, a part file missing):
RuntimeError, never a committed output. Engine-neutral: Beam's and Spark's counts go through the
same equations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

SIDES = ("left", "right")    # encoders.config.SIDES (this module stays standard-library only)


@dataclass(frozen=True)
class Balance:
    """``{what} {total:,} = {name} {count:,} + ...``: the parts must add up to the total.
    ``shown``: part of the reconciliation line (else only checked, e.g. rows written = scored)."""
    what: str
    total: int
    parts: tuple[tuple[str, int], ...]
    shown: bool = True

    def line(self) -> str:
        return f"{self.what} {self.total:,} = " + " + ".join(f"{name} {count:,}" for name, count in self.parts)

    def holds(self) -> bool:
        return sum(count for _, count in self.parts) == self.total


def reconcile(balances: Iterable[Balance | str]) -> str:
    """The reconciliation line (shown balances, and lines given as text, joined by ``; ``);
    RuntimeError naming the first balance that does not hold."""
    balances = list(balances)
    for balance in balances:
        if isinstance(balance, Balance) and not balance.holds():
            raise RuntimeError(f"row accounting failed: {balance.line()} (off by "
                               f"{balance.total - sum(n for _, n in balance.parts):,})")
    return "; ".join(b if isinstance(b, str) else b.line() for b in balances if isinstance(b, str) or b.shown)


def text_row_balance(side: str, counts: Mapping[str, int]) -> Balance:
    """``left text rows read N = kept + duplicates + unused + dead-lettered`` (id mode's text
    tables). Unused: no pair names the row's id (pipeline/beam/used_texts.py)."""
    key = f"{side}_text_rows_"
    return Balance(f"{side} text rows read", counts[key + "read"],
                   tuple((label, counts[key + name]) for label, name in (
                       ("kept", "kept"), ("duplicates", "duplicate"), ("unused", "unused"),
                       ("dead-lettered", "dead_lettered"))))
