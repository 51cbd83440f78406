"""Progress bars reach the library as a callback, never as settings: a job that shows bars passes
``bars(total, description, unit)``, which returns a bar (tqdm's ``update``, ``set_postfix``,
``close``); the library draws nothing without one. Standard library only."""
from __future__ import annotations

from typing import Any, Callable, Optional

Bars = Optional[Callable[[int, str, str], Any]]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def open_bar(bars: Bars, total: int, description: str, unit: str) -> Any:
    """A bar from ``bars`` (the job's callback), or one that draws nothing when it is None."""
    return bars(total, description, unit) if bars is not None else _NoBar()
