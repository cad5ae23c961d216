"""`takes_options`: option groups spread into one typer signature, shared names merged, conflicts refused."""

from dataclasses import dataclass
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from kerasport.cli_options import takes_options


@dataclass
class Left:
    run: Annotated[str, typer.Option("--run")] = "build"
    size: Annotated[int, typer.Option("--size")] = 1


@dataclass
class Right:
    run: Annotated[str, typer.Option("--run", help="Another help text is fine.")] = "build"
    fast: Annotated[bool, typer.Option("--fast/--slow")] = False


def invoke(command, *args):
    app = typer.Typer()
    app.command()(command)
    app.command("other")(lambda: None)  # two commands: typer keeps the command name in the argv
    return CliRunner().invoke(app, [command.__name__, *args])


def test_groups_are_rebuilt_and_a_shared_name_reaches_both():
    seen = {}

    @takes_options
    def both(left: Left, right: Right, verbose: Annotated[bool, typer.Option("--verbose")] = False) -> None:
        seen.update(left=left, right=right, verbose=verbose)

    result = invoke(both, "--run", "r", "--size", "3", "--slow", "--verbose")
    assert result.exit_code == 0, result.output
    assert seen == {"left": Left(run="r", size=3), "right": Right(run="r", fast=False), "verbose": True}
    assert invoke(both).exit_code == 0 and seen["left"] == Left() and seen["right"] == Right()


def test_a_shared_name_with_another_flag_or_default_is_refused():
    @dataclass
    class OtherDefault:
        run: Annotated[str, typer.Option("--run")] = "elsewhere"

    @dataclass
    class OtherFlag:
        size: Annotated[int, typer.Option("--count")] = 1

    with pytest.raises(TypeError, match="option 'run' of OtherDefault"):
        @takes_options
        def first(left: Left, other: OtherDefault) -> None: ...

    with pytest.raises(TypeError, match="option 'size' of OtherFlag"):
        @takes_options
        def second(left: Left, other: OtherFlag) -> None: ...


def test_one_flag_for_two_names_is_refused():
    @dataclass
    class Clash:
        speed: Annotated[bool, typer.Option("--fast")] = False

    with pytest.raises(TypeError, match="--fast is both 'fast' and 'speed'"):
        @takes_options
        def clash(right: Right, other: Clash) -> None: ...
