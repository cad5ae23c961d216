"""Errors a user can cause, each carrying its exit code (README, "CLI": 0 ok, 1 check failed, 2 usage, 3 runtime).

The CLI turns these into one line on stderr and the exit code; anything else is a bug and keeps its traceback.
"""

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3


class KerasportError(Exception):
    """Base class: a one-line, user-facing message plus an exit code."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(KerasportError):
    """Bad option values or a missing input: exit code 2."""

    exit_code = EXIT_USAGE


class DataError(UsageError):
    """Training data that is missing, malformed or inconsistent: exit code 2."""


class CheckFailed(KerasportError):
    """A verification (integrity, parity) ran and found a problem: exit code 1."""

    exit_code = EXIT_CHECK_FAILED


class ConversionError(KerasportError):
    """A conversion or runtime step failed on valid input: exit code 3."""

    exit_code = EXIT_RUNTIME
