"""Command line: a thin layer that parses arguments, calls the public API and prints.

Each sub-command lives in its own module and registers itself on :data:`app`. Errors a user can
cause (:class:`~samdeploy.errors.SamDeployError`) are printed as one line on stderr with exit code 2,
never as a traceback.
"""

from __future__ import annotations

import sys
from importlib import import_module

from rich.console import Console

from samdeploy.cli.app import app
from samdeploy.errors import SamDeployError

# Sub-command modules, imported for their registration side effect.
_COMMANDS = ("export", "engine", "segment", "everything", "batch", "bench", "serve")

__all__ = ["app", "main"]


def _register() -> None:
    for name in _COMMANDS:
        try:
            import_module(f"samdeploy.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"samdeploy.cli.{name}":
                raise


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``samdeploy`` command; returns the process exit code."""
    _register()
    try:
        app(args=argv, prog_name="samdeploy")
    except SamDeployError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("[bold red]interrupted[/]")
        return 130
    except SystemExit as exc:  # typer's own exit: --help, usage errors (code 2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
