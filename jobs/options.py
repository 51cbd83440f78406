"""A job's click options, generated from its declared settings (``encoders/settings.py``).

A job's settings class inherits one dataclass per concern (``pipeline/settings.py``: data,
output, run; ``encoders/config.py``: the student; ``encoders/distill_config.py``: distillation)
and adds its own fields; :func:`options` turns every declared field into its click option, in
the class's field order (``jobs.common.job_command``: the whole command), so a flag is declared in
one place::

    lr: float = setting(5e-4, "Peak learning rate of projection + head in stage 1.", range=LEARNING_RATE)

is ``--lr FLOAT`` (default 0.0005, refused outside the range in one line, exit 2), the field
``lr`` of the job's settings and, through ``section``, of the library's ``DistillConfig``.
Click and the standard library only.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import click

from encoders.settings import FLAG_KEY, Flag, Range, declared_fields, flag_name

# Options a Beam job does not declare are collected and handed to Beam as pipeline options.
BEAM_JOB_CONTEXT = {"ignore_unknown_options": True, "allow_extra_args": True,
                    "help_option_names": ["-h", "--help"], "max_content_width": 100}
# Jobs without Beam take only their own options.
PLAIN_JOB_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
ARGV_KEY = "pairscore.argv"


class JobCommand(click.Command):
    """A job's command: remembers the arguments it was given (``ctx.meta[ARGV_KEY]``), which
    the summary records, the same under ``pairscore <job>`` and ``python -m jobs.<name>``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[ARGV_KEY] = list(args)
        return super().parse_args(ctx, args)


class FlagValueError(click.ClickException):
    """A flag value outside what it allows: one line (``error: --flag VALUE is not allowed: ...``),
    exit 2, raised while the flags parse (before any pre-flight work or heavy import)."""
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Number(click.ParamType):
    """A number in a :class:`Range` (``Number(int, 1)`` or ``Number(Range(...))``); NaN and
    infinity refused (click.FloatRange lets NaN through: every comparison with NaN is false)."""

    def __init__(self, kind: type | Range = float, *args: Any, **kwargs: Any) -> None:
        self.range = kind if isinstance(kind, Range) else Range(kind, *args, **kwargs)
        self.name = "integer" if self.range.kind is int else "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        flag = max(param.opts, key=len) if param is not None and param.opts else "value"
        try:
            return self.range.convert(flag, value)
        except ValueError as err:
            raise FlagValueError(str(err)) from None

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.name.upper()


def _parsed(parse: Callable[[str], Any]) -> Callable:
    """A click callback turning the flag's text into its value; a ValueError is one line, exit 2."""
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            return parse(value)
        except ValueError as err:
            raise FlagValueError(str(err)) from None
    return callback


def click_option(field: dataclasses.Field, flag: Flag) -> Callable:
    """The click option a declared field is."""
    name = flag_name(field)
    default = None if field.default is dataclasses.MISSING or flag.required else field.default
    kwargs: dict[str, Any] = {"help": flag.help, "metavar": flag.metavar, "multiple": flag.multiple,
                              "required": flag.required}
    if flag.switch:
        return click.option(name, field.name, is_flag=True, default=bool(default), **kwargs)
    if flag.negatable:
        return click.option(f"{name}/--no-{name[2:]}", field.name, default=default, show_default=flag.show_default,
                            **kwargs)
    if flag.parse is not None:       # the text is parsed into the value (None: the field's default)
        return click.option(name, field.name, default=None, callback=_parsed(flag.parse), **kwargs)
    kind = click.Choice(flag.choices) if flag.choices else Number(flag.range) if flag.range else None
    if not flag.required:    # click counts any default given, even None, as the flag given
        kwargs["default"] = () if flag.multiple else default
    return click.option(name, field.name, type=kind,
                        show_default=flag.show_default and default is not None and not flag.multiple, **kwargs)


def option_of(settings: type, name: str, **changes: Any) -> Callable:
    """The click option of one declared field of ``settings``, its Flag ``changes``d (e.g. a
    job's own help)."""
    field = next(f for f, _ in declared_fields(settings) if f.name == name)
    return click_option(field, dataclasses.replace(field.metadata[FLAG_KEY], **changes))


def options(settings: type) -> Callable:
    """Every declared field of ``settings`` as a click option, listed in field order."""
    def decorate(command: Callable) -> Callable:
        for field, flag in reversed(declared_fields(settings)):
            command = click_option(field, flag)(command)
        return command
    return decorate
