"""The command line's face: ``--version``, the command list, and help texts a person can read."""

from __future__ import annotations

import re

import pytest

from samdeploy import __version__
from samdeploy.cli import _register, main
from samdeploy.cli.app import COMMAND_ORDER, app, readable_default


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def commands() -> list[str]:
    import typer

    _register()
    return list(typer.main.get_command(app).list_commands(None))


def test_version(capsys) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"samdeploy {__version__}"


def test_commands_are_listed_in_the_documented_order(capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    listed = re.findall(r"^  ([a-z-]+)  ", out.split("Commands:")[1], flags=re.MULTILINE)
    assert listed == commands()
    known = [name for name in COMMAND_ORDER if name in listed]
    assert listed[: len(known)] == known  # the named ones first, in that order
    assert listed[:2] == ["segment", "everything"]


@pytest.mark.parametrize("command", ["", *COMMAND_ORDER])
def test_help_has_no_type_labels_cut_names_or_long_floats(capsys, command) -> None:
    if command and command not in commands():
        pytest.skip(f"{command} is not part of this installation")
    code, out, err = run(capsys, *([command] if command else []), "--help")
    assert code == 0, err
    assert not re.search(r"<(list\[|bool|int|float|str|path|Path)[^>]*>", out), out
    assert "…" not in out  # no option name cut short
    assert not re.search(r"\d\.\d{6,}", out), out  # 0.3413, not 0.3413333333333333
    for option in re.findall(r"--[a-z][a-z-]+", out):
        assert not option.endswith("-"), option


def test_everything_help_names_every_option_whole(capsys) -> None:
    code, out, _ = run(capsys, "everything", "--help")
    assert code == 0
    for option in ("--crop-n-points-downscale-factor", "--stability-score-thresh", "--min-mask-region-area"):
        assert option in out
    assert "512/1500 = 0.3413" in out
    assert "Usage: samdeploy everything [OPTIONS] IMAGE..." in out


def test_readable_default() -> None:
    assert readable_default(512 / 1500) == "0.3413"
    assert readable_default(1.0) == "1"
    assert readable_default(100_000_000) == "100000000"
    assert readable_default(None) is None and readable_default(False) is None
    assert readable_default(["a", "b"]) == "a, b"
