"""The one spelling of a parity verdict, shared by the gate that decides it and every stage that reads it."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """A candidate's parity verdict, as the manifest, report.json and the renderers spell it.

    `PASS`, `FAIL`, `ERROR` (the candidate did not load or run) and `SKIPPED` (a check could not run here, e.g. TFLite
    Micro's interpreter is not installed) are what the gate decides. `REFERENCE` and `UNCHECKED` describe an artifact
    that is not a candidate: the one parity compared against, and one parity never saw.
    """

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    SKIPPED = "skipped"
    REFERENCE = "reference"
    UNCHECKED = "unchecked"

    @property
    def shippable(self) -> bool:
        """Whether an artifact in this state may be packaged or served without `--allow-unverified`."""
        return self in (Verdict.PASS, Verdict.REFERENCE)

    @property
    def headline(self) -> str:
        """The word a report's title and console summary use for a whole gate or section: PASSED or FAILED."""
        return "PASSED" if self is Verdict.PASS else "FAILED"

    @classmethod
    def of_checks(cls, passed: list[bool]) -> Verdict:
        """PASS when every check passed, else FAIL."""
        return cls.PASS if all(passed) else cls.FAIL
