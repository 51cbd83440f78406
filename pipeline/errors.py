"""The kinds of failure a job reports, and the exit status each one gets (the CLI contract,
"Exit codes and bad nights").

| exit | meaning | raised as |
|---|---|---|
| 0 | committed | (no exception) |
| 1 | a bug: the traceback is kept, with a line saying so | any other exception |
| 2 | a usage error: one line, before any work where the mistake can be seen up front | the :class:`UsageError` family (encoders/errors.py: flag, model, input, output, pre-flight, store errors); a plain ``ValueError`` is a bug (exit 1) |
| 3 | the run refused to commit: one line, the previous output stays | :class:`RefusedToCommit` (too many dead letters, an input, store or model changed during the run, a stall) |
| 130 / 143 | interrupted (SIGINT / SIGTERM): one line, nothing committed | KeyboardInterrupt, the run guard's SIGTERM |

The usage-error family is defined in ``encoders/errors.py`` (the lowest layer that raises it; its
docstring says why) and re-exported here, so that the layers above find every failure kind in one
place.

Standard library only: the command line, the pre-flight and the engines' workers all import it.
"""
from __future__ import annotations

import importlib
import re
import sys

from encoders.errors import FlagError, ModelError, UsageError

__all__ = ["EXIT_OK", "EXIT_BUG", "EXIT_USAGE", "EXIT_REFUSED", "EXIT_SIGINT", "EXIT_SIGTERM", "UsageError",
           "FlagError", "ModelError", "RefusedToCommit", "DeadLetterLimit", "InputChanged", "usage_in",
           "refusal_in", "mentions_refusal", "mentions_usage_error", "usage_class"]

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


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


# An exception line of a traceback's text: "module.Class: message", the class one of pairscore's
# (after a newline that may be escaped, a backslash and an n, as Beam forwards a worker's log).
_OUR_EXCEPTION = re.compile(r"(?:(?<![\w.])|(?<=\\n))((?:encoders|heads|pipeline|jobs)(?:\.\w+)+)\.([A-Z]\w*): ")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*: ")


def usage_class(module: str, name: str, load: bool = True) -> type[UsageError] | None:
    """The usage-error class ``module.name`` names (from a traceback's text), or None when it is
    not one. ``load``: import the module if this process has not (a log filter does not)."""
    try:
        found = getattr(importlib.import_module(module) if load else sys.modules[module], name)
    except (ImportError, KeyError, AttributeError):
        return None
    return found if isinstance(found, type) and issubclass(found, UsageError) else None


def mentions_usage_error(text: str) -> bool:
    """Whether ``text`` (a log message or a worker's printed traceback) reports a usage error
    raised: an exception line naming a class of the family that this process has imported."""
    return any(usage_class(*found.groups(), load=False) for found in _OUR_EXCEPTION.finditer(text))


def usage_in(err: BaseException) -> UsageError | None:
    """The :class:`UsageError` that ``err`` is, or that Beam wrapped (see above), with its one line
    restored (Beam's step names taken out); None when ``err`` is anything else. Unlike
    :func:`refusal_in` it does not look through ``__context__``: a bug raised while handling a
    usage error is a bug. From another process only the exception that ended the worker's
    traceback counts (its last exception line)."""
    if isinstance(err, UsageError):
        text = _WHILE_RUNNING.sub("", str(err)).strip()
        return err if text == str(err) else type(err)(text)
    if type(err) is not RuntimeError:
        return None
    last = [line for line in str(err).splitlines() if _EXCEPTION_LINE.match(line)][-1:]
    found = _OUR_EXCEPTION.match(last[0]) if last else None
    cls = usage_class(*found.groups()) if found else None
    return cls(_WHILE_RUNNING.sub("", last[0][found.end():]).strip()) if cls else None
