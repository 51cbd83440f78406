"""The kinds of failure a job reports, and the exit status each one gets (the CLI contract,
"Exit codes and bad nights").

| exit | meaning | raised as |
|---|---|---|
| 0 | committed | (no exception) |
| 1 | a bug: the traceback is kept, with a line saying so | any other exception |
| 2 | a usage error: one line, before any work where the mistake can be seen up front | :class:`UsageError` and the existing ``ValueError`` family (input, output, pre-flight, store errors) |
| 3 | the run refused to commit: one line, the previous output stays | :class:`RefusedToCommit` (too many dead letters, an input, store or model changed during the run, a stall) |
| 130 / 143 | interrupted (SIGINT / SIGTERM): one line, nothing committed | KeyboardInterrupt, the run guard's SIGTERM |

Standard library only: the command line, the pre-flight and the engines' workers all import it.
"""
from __future__ import annotations

import re

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class UsageError(ValueError):
    """A bad flag, input or output that the user can fix: one line, exit 2."""


class RefusedToCommit(RuntimeError):
    """The run did its work but will not commit it (exit 3, one line, nothing committed: the
    previous output stays). Its text is the one line."""


class DeadLetterLimit(RefusedToCommit):
    """More rows were dead-lettered than ``--max-dead-letter-fraction`` allows, or every row was."""


class InputChanged(RefusedToCommit):
    """Something the run pinned at its start (an input, a store, a model) changed while it ran."""


# Beam hands a worker's exception back wrapped: in process, the same class with
# " [while running 'STEP']" appended to its text; from other processes (the multi-process
# DirectRunner, portable workers), a RuntimeError whose text is the worker's traceback, with the
# original exception's "module.Class: message" line in it.
_WRAPPED_LINE = re.compile(r"^(?:[\w.]+\.)?(RefusedToCommit|DeadLetterLimit|InputChanged): (.+)$", re.M)
_WHILE_RUNNING = re.compile(r" \[while running '[^']*'\]")


def mentions_refusal(text: str) -> bool:
    """Whether ``text`` (a log message: Beam forwards a worker's traceback as text, its newlines
    sometimes escaped) reports one of these refusals raised."""
    return _RAISED.search(text) is not None


_RAISED = re.compile(r"\bpipeline\.errors\.(RefusedToCommit|DeadLetterLimit|InputChanged): ")


def refusal_in(err: BaseException) -> RefusedToCommit | None:
    """The :class:`RefusedToCommit` that ``err`` is, or that Beam wrapped (see above), with its one
    line restored (Beam's step names taken out); None when there is none. Looks through
    ``__cause__``/``__context__`` too."""
    classes = {cls.__name__: cls for cls in (RefusedToCommit, DeadLetterLimit, InputChanged)}
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, RefusedToCommit):
            return type(err)(_WHILE_RUNNING.sub("", str(err)).strip())
        found = _WRAPPED_LINE.search(str(err))
        if found:
            return classes[found.group(1)](_WHILE_RUNNING.sub("", found.group(2)).strip())
        err = err.__cause__ or err.__context__
    return None
