"""A conversion ladder: rungs tried in order until one builds an artifact that loads and runs; every attempt kept.

Each rung is a name and a function that builds the artifact (and proves it runs) or raises ConversionError. The
first rung that works wins; its details carry `ladder` (every attempt: the rung and `ok` or its one-line error)
and `rung`. When no rung works, LadderFailed carries the same list, which the export stage records in the
manifest's entry for the failed variant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kerasport.errors import ConversionError

from .messages import first_line

RUNG_OK = "ok"
_REASON_CHARACTERS = 300


class LadderFailed(ConversionError):
    """No rung of a ladder built a working artifact; `attempts` says what each one did."""

    def __init__(self, message: str, attempts: list[dict]):
        super().__init__(message)
        self.attempts = attempts


def climb(what: str, rungs: Sequence[tuple[str, Callable[[], dict]]]) -> dict:
    """Try `rungs` in order; the details of the first that works, with `ladder` and `rung` added.

    Args:
        what: the conversion, for the message when every rung fails ("TFLite fp16").
        rungs: (name, build) pairs; `build()` returns the artifact's details or raises ConversionError.

    Returns:
        The working rung's details plus `rung` (its name) and `ladder` (every attempt, in order).

    Raises:
        LadderFailed: every rung raised; the message names the first rung's reason and how many were tried.
    """
    attempts: list[dict] = []
    for name, build in rungs:
        try:
            details = build()
        except ConversionError as error:
            attempts.append({"rung": name, "result": f"failed: {first_line(error, _REASON_CHARACTERS)}"})
            continue
        attempts.append({"rung": name, "result": RUNG_OK})
        return {**details, "rung": name, "ladder": attempts}
    if not attempts:
        raise LadderFailed(f"{what}: no rung to try", attempts)
    reasons = [f"{attempt['rung']}: {attempt['result'].removeprefix('failed: ')}" for attempt in attempts]
    tried = f" (also tried: {'; '.join(reasons[1:])})" if len(reasons) > 1 else ""
    raise LadderFailed(f"{what}, {reasons[0]}{tried}", attempts)
