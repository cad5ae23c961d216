"""The CLI reference page, generated from the typer app so it cannot drift from `--help`.

`mkdocs build` calls `render()` through docs/hooks/cli_reference.py and serves the result as reference/cli.md;
`python devtools/cli_reference.py [--out FILE]` prints or writes the same page. tests/test_docs.py walks the same
click tree and checks every command, argument and option appears in it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROGRAM = "kerasport"
# What the page shows for a default that is computed when the command runs rather than declared.
NO_DEFAULT = ""

# typer (0.29+) builds its commands on a copy of click it keeps in a private module, so the objects here are
# handled by their public click attributes (`commands`, `params`, `opts`, `param_type_name`, ...), not by class.
Command = Any
Parameter = Any


@dataclass(frozen=True)
class CommandEntry:
    """One command of the tree: its words after the program name (`("bundle", "diff")`) and the click object."""

    path: tuple[str, ...]
    command: Command

    @property
    def title(self) -> str:
        return " ".join((PROGRAM, *self.path))


def kerasport_command() -> Command:
    """The click command typer builds from kerasport's app (the one `kerasport` runs).

    Returns:
        The root click group; its `commands` are the stage commands and the sub-apps (`bundle`).
    """
    import typer.main

    from kerasport.app.cli import app

    return typer.main.get_command(app)


def walk(command: Command, path: tuple[str, ...] = ()) -> Iterator[CommandEntry]:
    """Every command of the tree, depth first, in the order the help lists them (the root included).

    Args:
        command: a click command or group.
        path: the words that lead to it from the program name.

    Returns:
        An iterator of CommandEntry, parents before their subcommands.
    """
    yield CommandEntry(path, command)
    for name, subcommand in subcommands(command).items():
        yield from walk(subcommand, (*path, name))


def subcommands(command: Command) -> dict[str, Command]:
    """A group's commands in the order they were registered (the order `--help` lists them); {} for a command."""
    return dict(getattr(command, "commands", None) or {})


def is_option(param: Parameter) -> bool:
    """Whether a click parameter is an option (else an argument)."""
    return param.param_type_name == "option"


# typer appends what it knows about a parameter to its help in one bracket: "  [default: 15; x>=1]".
_EXTRAS = re.compile(r"(?:^|\s{2})\[([^\[\]]*)\]$")


@dataclass(frozen=True)
class ParameterRow:
    """One parameter as `--help` shows it: its names, the kind of value, its default and its help."""

    names: str
    value: str
    default: str
    help: str


def parameter_row(param: Parameter, context) -> ParameterRow:
    """What `--help` prints for one parameter, split into the reference table's columns.

    Args:
        param: a click option or argument of a typer command.
        context: the command's click context (the help record depends on it).

    Returns:
        A ParameterRow; `default` is empty when the default is computed at run time (the help then says how).
    """
    declaration, help_text = param.get_help_record(context) or (param.name, "")
    names = ", ".join(f"`{name}`" for name in (*param.opts, *param.secondary_opts)) if is_option(param) \
        else f"`{param.name.upper()}`"
    if is_option(param) and param.is_flag:
        value = "flag"
    else:  # what follows the names: "<int range>", or a metavar such as OTHER_RUN
        last_name = (*param.opts, *param.secondary_opts)[-1] if is_option(param) else declaration.split(" ", 1)[0]
        value = declaration[declaration.rfind(last_name) + len(last_name):].strip().removeprefix("<").removesuffix(">")
    default, notes = NO_DEFAULT, []
    extras = _EXTRAS.search(help_text)
    if extras:
        help_text = help_text[:extras.start()]
        for part in extras.group(1).split("; "):
            if part.startswith("default: "):
                default = part.removeprefix("default: ")
                # an on/off pair's default is printed as the switch's name without dashes ("plateau")
                default = f"`--{default}`" if f"--{default}" in param.opts + param.secondary_opts else f"`{default}`"
            elif part == "required":
                default = "required"
            else:
                notes.append(part)
    if is_option(param) and param.is_flag and not param.secondary_opts and default == NO_DEFAULT:
        default = "off" if not param.default else "on"
    help_text = " ".join([help_text.strip(), *(f"[{note}]" for note in notes)]).strip()
    return ParameterRow(names, value, default, help_text)


def _cell(text: str) -> str:
    """Text that stays in one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _usage(entry: CommandEntry) -> str:
    context = entry.command.context_class(entry.command, info_name=entry.title)
    pieces = " ".join(entry.command.collect_usage_pieces(context))
    # typer writes a required argument as {name} and an optional one as [name] in usage pieces, NAME in its help.
    pieces = re.sub(r"\{(\w+)\}", lambda match: match.group(1).upper(), pieces)
    return re.sub(r"\[(\w+)\]", lambda match: f"[{match.group(1).upper()}]", pieces)


def _command_section(entry: CommandEntry) -> list[str]:
    command = entry.command
    heading = "#" * min(2 + max(len(entry.path) - 1, 0), 4)
    lines = [f"{heading} {entry.title}", "", "```text", f"{entry.title} {_usage(entry)}".rstrip(), "```", ""]
    if command.help:
        lines += [command.help.strip(), ""]
    if subcommands(command):
        lines += ["| command | what it does |", "|---|---|"]
        for name, sub in subcommands(command).items():
            anchor = "-".join((PROGRAM, *entry.path, name))
            lines.append(f"| [`{name}`](#{anchor}) | {_cell(sub.get_short_help_str(limit=200))} |")
        lines.append("")
    context = command.context_class(command, info_name=entry.title)
    for kind, params in (("argument", [param for param in command.params if not is_option(param)]),
                         ("option", [param for param in command.params if is_option(param) and not param.hidden])):
        if not params:
            continue
        lines += [f"| {kind} | value | default | help |", "|---|---|---|---|"]
        for param in params:
            row = parameter_row(param, context)
            lines.append(f"| {row.names} | {_cell(row.value)} | {_cell(row.default)} | {_cell(row.help)} |")
        lines.append("")
    if command.context_settings.get("ignore_unknown_options"):
        lines += ["Options it does not declare itself are passed on unchanged (see its help above).", ""]
    return lines


def render(root: Command | None = None) -> str:
    """The whole reference page as Markdown: every command, argument and option with its default and help.

    Args:
        root: the click command to document; default: kerasport's own app.

    Returns:
        The page's Markdown text.
    """
    root = root if root is not None else kerasport_command()
    lines = ["# CLI reference", "",
             "Generated from the typer app by `devtools/cli_reference.py` every time the site is built, so it is "
             "what `kerasport <command> --help` prints. Exit codes everywhere: 0 success, 1 a check failed, "
             "2 usage or missing input, 3 a conversion or runtime error.", ""]
    for entry in walk(root):
        lines += _command_section(entry)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the page here instead of printing it")
    args = parser.parse_args(argv)
    page = render()
    if args.out is None:
        sys.stdout.write(page)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
