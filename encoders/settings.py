"""Settings declared once: each field of a settings dataclass says, through :func:`setting`, its
default, its flag's help and what it allows.

One dataclass per concern (data, student, distillation, output, run); a job's settings class
inherits the concerns it has, and its fields are its flags (``stage1_epochs`` is
``--stage1-epochs``). From the same fields:

* ``jobs/options.py`` generates the click options (type, choices, range, default, help, metavar);
* :func:`check_settings` refuses a value outside what its field allows, with the line the
  command line gives (``--n 0 is not allowed: give a positive integer``), for library callers;
* the library reads the dataclass itself (``encoders.distill.DistillConfig`` is one concern).

Adding a flag is adding a field to its concern. Standard library only: ``--help`` and the
pre-flight read these before torch, Beam or transformers are imported.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from encoders.errors import FlagError

T = TypeVar("T")
FLAG_KEY = "pairscore.flag"


@dataclass(frozen=True)
class Range:
    """A number's range: ``kind`` int or float (NaN and infinity refused), ``low``/``high`` bounds,
    exclusive when ``low_open``/``high_open``; ``allowed`` says what is allowed in the error."""
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allowed: str | None = None

    def describe(self) -> str:
        if self.allowed:
            return self.allowed
        if self.kind is int and self.low == 1 and self.high is None and not self.low_open:
            return "give a positive integer"
        what = "an integer" if self.kind is int else "a finite number"
        bounds = [f"{'>' if self.low_open else '>='} {self.low:g}"] if self.low is not None else []
        bounds += [f"{'<' if self.high_open else '<='} {self.high:g}"] if self.high is not None else []
        return f"give {what}" + (" " + " and ".join(bounds) if bounds else "")

    def convert(self, flag: str, value: Any) -> Any:
        """``value`` (a number or its text) as ``kind``; ValueError naming the flag, the value and
        what is allowed when it is not one, or outside the range."""
        try:
            if isinstance(value, bool):
                raise ValueError
            number = self.kind(value)
            if self.kind is int and isinstance(value, float) and value != number:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise FlagError(f"{flag} {value!r} is not allowed: {self.describe()}") from None
        if (self.kind is float and not math.isfinite(number)
                or self.low is not None and (number <= self.low if self.low_open else number < self.low)
                or self.high is not None and (number >= self.high if self.high_open else number > self.high)):
            raise FlagError(f"{flag} {number!r} is not allowed: {self.describe()}")
        return number


# The ranges several settings share.
POSITIVE_INT = Range(int, 1)
NON_NEGATIVE_INT = Range(int, 0)
SEED = Range(int, 0, 2 ** 32 - 1, allowed="give an integer in [0, 2**32 - 1]")      # what numpy seeds with
LEARNING_RATE = Range(float, 0, low_open=True, allowed="give a learning rate > 0")
WEIGHT_DECAY = Range(float, 0)
MAX_GRAD_NORM = Range(float, 0, low_open=True)          # an infinite norm would clip nothing
FRACTION = Range(float, 0, 1, allowed="give a fraction in [0, 1]")


def warmup_range(of: str) -> Range:
    """--warmup: the fraction of ``of`` (the steps it counts) spent warming up."""
    return Range(float, 0, 1, high_open=True, allowed=f"give the fraction of {of} spent warming up, 0 <= WARMUP < 1")


@dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line (the field's metadata).

    help:      the --help text.            name: the flag, default ``--`` + the field's name.
    choices:   the values allowed (a tuple of strings).   range: a number's :class:`Range`.
    parse:     text -> value for a setting that is not a plain string (e.g. ``LOW,HIGH``);
               raises ValueError naming the flag.
    required / multiple (repeatable: a tuple) / switch (``--x`` is True) / negatable
    (``--x/--no-x``) / metavar / show_default: as click has them.
    """
    help: str
    name: str | None = None
    choices: tuple[str, ...] | None = None
    range: Range | None = None
    parse: Callable[[str], Any] | None = None
    required: bool = False
    multiple: bool = False
    switch: bool = False
    negatable: bool = False
    metavar: str | None = None
    show_default: bool = True


def setting(default: Any = dataclasses.MISSING, help: str = "", **flag: Any) -> Any:
    """A settings field: its default (none when ``required``) and its :class:`Flag`."""
    metadata = {FLAG_KEY: Flag(help, **flag)}
    if isinstance(default, (dict, list, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field) -> Flag | None:
    return field.metadata.get(FLAG_KEY)


def flag_name(field: dataclasses.Field) -> str:
    """``--stage1-epochs`` for field ``stage1_epochs`` (or the name its Flag gives)."""
    flag = flag_of(field)
    return (flag.name if flag is not None and flag.name else None) or "--" + field.name.replace("_", "-")


def declared_fields(settings: Any) -> list[tuple[dataclasses.Field, Flag]]:
    """The fields of a settings class (or object) that are flags, in declaration order."""
    return [(f, flag_of(f)) for f in dataclasses.fields(settings) if flag_of(f) is not None]


def check_settings(settings: Any) -> None:
    """Every declared value within what its field allows (its choices, its range); None is a
    setting left unset. ValueError naming the flag, the value and what is allowed otherwise."""
    for field, flag in declared_fields(settings):
        value = getattr(settings, field.name)
        if value is None or flag.multiple or flag.parse is not None:
            continue
        if flag.choices is not None and value not in flag.choices:
            raise FlagError(f"{flag_name(field)} {value!r} is not allowed: choose one of {', '.join(flag.choices)}")
        if flag.range is not None:
            flag.range.convert(flag_name(field), value)


def section(cls: type[T], settings: Any) -> T:
    """The ``cls`` concern of ``settings`` (an object with all its fields, e.g. a job's settings,
    which inherits it): ``DistillConfig`` out of a ``TrainStudentJob``."""
    return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls) if f.init})
