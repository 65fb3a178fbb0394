"""The typer application that every ``samdeploy`` sub-command registers itself on.

Help is plain text laid out by click (no boxed tables that cut long option names on an 80-column
terminal), with one row per option: its names, a metavar that says what to write (``X,Y``, ``DIR``,
``N``) rather than a Python type, the help text and a readable default. Commands are listed in the
order a newcomer needs them (:data:`COMMAND_ORDER`), not the order their modules were imported.
"""

from __future__ import annotations

import enum
from pathlib import PurePath
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

#: How ``samdeploy --help`` lists the commands; commands not named here follow in registration order.
COMMAND_ORDER = (
    "segment",
    "everything",
    "serve",
    "batch",
    "export",
    "inspect",
    "graph",
    "bench",
    "run-graph",
)

# What an option takes, by its value's Python type, when its definition names no metavar.
_METAVARS = {"int": "N", "float": "X", "str": "TEXT", "Path": "PATH"}


def _metavar(param: Any) -> str:
    if param.metavar:
        return param.metavar
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None:
        return "VALUE"
    if descriptor.choices:
        return "|".join(str(getattr(choice, "value", choice)) for choice in descriptor.choices)
    bare = param.bare_type().removeprefix("list[").removesuffix("]")
    return _METAVARS.get(bare, "VALUE")


def _is_argument(param: Any) -> bool:
    return param.param_type_name == "argument"


def _argument_name(param: Any) -> str:
    name = param.metavar or param.name.upper()
    return name if param.nargs == 1 or name.endswith("...") else name + "..."


def readable_default(value: Any) -> str | None:
    """A default as a person writes it: ``0.3413`` not ``0.3413333333333333``; None when there is
    nothing worth printing (no default, an off flag, an empty list)."""
    if value is None or value is False or value in ("", [], ()):
        return None
    if isinstance(value, (list, tuple)):
        parts = [readable_default(item) for item in value]
        return ", ".join(part for part in parts if part) or None
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, PurePath):
        return str(value)
    return str(value)


def help_record(param: Any, ctx: Any) -> tuple[str, str] | None:
    """(names and metavar, help with default) of one click argument or option, None if hidden."""
    if getattr(param, "hidden", False):
        return None
    flag = not _is_argument(param) and param.is_flag
    if _is_argument(param):
        name = _argument_name(param)
    else:
        names = ", ".join(sorted(param.opts, key=len))
        if param.secondary_opts:
            names += " / " + ", ".join(sorted(param.secondary_opts, key=len))
        if not flag:
            names += f" {_metavar(param)}"
        name = names
    help_text = getattr(param, "help", None) or ""
    extra = []
    shown = getattr(param, "show_default", None)
    if isinstance(shown, str):
        extra.append(f"default: {shown}")
    elif shown is not False and not param.required:
        default = param.get_default(ctx, call=False)
        if flag:  # an on/off switch: worth a word only when it is on unless turned off
            text = param.opts[-1].lstrip("-") if default is True and param.secondary_opts else None
        else:
            text = None if callable(default) else readable_default(default)
        if text is not None:
            extra.append(f"default: {text}")
    if param.required:
        extra.append("required")
    if extra:
        help_text = f"{help_text}  [{'; '.join(extra)}]" if help_text else f"[{'; '.join(extra)}]"
    return name, help_text


def _format_params(command: Any, ctx: Any, formatter: Any) -> None:
    rows = {"Arguments": [], "Options": []}
    for param in command.get_params(ctx):
        record = help_record(param, ctx)
        if record is not None:
            rows["Arguments" if _is_argument(param) else "Options"].append(record)
    for title, records in rows.items():
        if records:
            with formatter.section(title):
                formatter.write_dl(records)


class Command(TyperCommand):
    """A sub-command whose help reads as described in the module docstring."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if _is_argument(param):
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter)


class Group(TyperGroup):
    """The ``samdeploy`` command group: commands in :data:`COMMAND_ORDER`."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = list(self.commands)
        rank = {name: index for index, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: (rank.get(name, len(rank)), names.index(name)))

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter)
        self.format_commands(ctx, formatter)


class App(typer.Typer):
    """A ``typer.Typer`` whose commands are :class:`Command` unless they name another class."""

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or Command, **kwargs)


app = App(
    name="samdeploy",
    cls=Group,
    help="Export Segment Anything checkpoints to ONNX and run them without PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from samdeploy import __version__

        typer.echo(f"samdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="print the samdeploy version and exit"
        ),
    ] = False,
) -> None:
    """Export Segment Anything checkpoints to ONNX and run them without PyTorch.

    Start with `samdeploy segment examples/shapes.png --point 387,241 --output mask.png`
    (the embedded demo model); docs/cli.md describes every command.
    """
