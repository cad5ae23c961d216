"""Helpers every stage's CLI shares: one-line errors with the exit codes of kerasport.errors, and the console."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from .errors import KerasportError

EXIT_INTERRUPTED = 130


def console() -> Console:
    # Progress and tables go to stderr so that stdout stays clean for machine-readable output.
    return Console(stderr=True)


def fail(message: str, exit_code: int) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code=exit_code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn KerasportError into `error: <one line>` plus its exit code, with no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KerasportError as error:
            raise fail(str(error).splitlines()[0] if str(error) else type(error).__name__,
                       error.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted; completed outputs are untouched (train: continue with --resume)",
                       EXIT_INTERRUPTED) from None

    return wrapper
