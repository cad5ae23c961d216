"""Command-line options declared once, as groups, so every command that takes them shares one definition.

A stage declares its options as one dataclass, an *option group* (`train.config.TrainConfig`,
`export.options.ExportArgs`): each field is an option, typed `Annotated[type, typer.Option(...)]`, and its default
is the option's default. A command names the groups it takes as parameters and `@takes_options` does the rest:
it shows typer one keyword option per field, then rebuilds each group from the parsed values before calling the
command:

    @takes_options
    def export_command(args: ExportArgs, json_output: Annotated[bool, typer.Option("--json")] = False): ...

`kerasport run` takes `TrainConfig` and `ExportArgs` the same way, so an option added to a group appears in the
stage's command and in `run`, and reaches the stage inside the same object. A name that is in two groups
(`--run`, `--calibration-samples`) is one option whose value goes to both; the two declarations must agree on
the flag, the type and the default, or the command fails when it is defined.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from typer.models import OptionInfo

DEFAULT_RUN = "build"
RUN_HELP = "Run directory: one release bundle (manifest.json and each stage's folder)."
# `--run`, declared once for every command that takes a bundle.
RunOption = Annotated[str, typer.Option("--run", help=RUN_HELP)]


def option_fields(group: type) -> list[inspect.Parameter]:
    """The keyword parameters typer sees for an option group, in field order."""
    hints = typing.get_type_hints(group, include_extras=True)
    return [inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                              annotation=hints[field.name])
            for field in dataclasses.fields(group)]


def takes_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Spread the option groups among `command`'s parameters into typer options; other parameters stay as they are."""
    signature = inspect.signature(command, eval_str=True)
    groups = {name: param.annotation for name, param in signature.parameters.items()
              if dataclasses.is_dataclass(param.annotation)}
    options: dict[str, inspect.Parameter] = {}
    flags: dict[str, str] = {}
    for name, param in signature.parameters.items():
        declared = option_fields(groups[name]) if name in groups else [param.replace(kind=param.KEYWORD_ONLY)]
        owner = groups[name].__name__ if name in groups else command.__name__
        for option in declared:
            _add_option(options, flags, option, owner)

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        arguments = {name: values[name] for name in signature.parameters if name not in groups}
        for name, group in groups.items():
            arguments[name] = group(**{field.name: values[field.name] for field in dataclasses.fields(group)})
        return command(**arguments)

    wrapper.__signature__ = inspect.Signature(list(options.values()))
    wrapper.__annotations__ = {name: option.annotation for name, option in options.items()}
    return wrapper


def _declaration(option: inspect.Parameter) -> tuple:
    base, *metadata = typing.get_args(option.annotation) or (option.annotation,)
    info = next((item for item in metadata if isinstance(item, OptionInfo)), None)
    # In `Annotated[..., typer.Option("--flag")]` typer keeps the first flag in `default`.
    names = () if info is None else tuple(str(name) for name in (info.default, *(info.param_decls or ())))
    return base, names, option.default


def _add_option(options: dict[str, inspect.Parameter], flags: dict[str, str], option: inspect.Parameter,
                owner: str) -> None:
    existing = options.get(option.name)
    if existing is not None:
        if _declaration(existing) != _declaration(option):
            raise TypeError(f"option {option.name!r} of {owner} is declared as {_declaration(option)}, but another "
                            f"group of the same command declares it as {_declaration(existing)}")
        return  # one option; its value goes to every group that has the field
    for flag in _declaration(option)[1]:
        for name in flag.split("/"):
            if name.startswith("-") and flags.setdefault(name, option.name) != option.name:
                raise TypeError(f"{owner}: {name} is both {flags[name]!r} and {option.name!r}")
    options[option.name] = option
