"""Numbers for people, and the Jinja2 environment report.html is rendered in (templates/, autoescaped).

The filters turn report.json's raw figures into what a reader expects: a share as "98.6 %", an accuracy change as
"+0.12 pp", a count with thousands separators, a size in KiB/MiB, a difference in scientific notation. A missing
value (None) prints as "–" everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

from kerasport.verdict import Verdict

MISSING = "–"
KIB = 1024


def _guard(format_value: Callable) -> Callable:
    """The filter, printing MISSING for None (and for NaN, which report.json can hold for an unmeasured mean)."""
    def filtered(value, *args, **kwargs) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return MISSING
        return format_value(value, *args, **kwargs)
    filtered.__name__ = format_value.__name__
    filtered.__doc__ = format_value.__doc__
    return filtered


@_guard
def percent(value: float, digits: int = 1) -> str:
    """A share 0..1 as a percentage: 0.98607 -> "98.6 %"."""
    return f"{value * 100:.{digits}f} %"


@_guard
def points(value: float, digits: int = 2) -> str:
    """A change of a share as signed percentage points: -0.0012 -> "-0.12 pp"."""
    return f"{value * 100:+.{digits}f} pp"


@_guard
def scientific(value: float, digits: int = 2) -> str:
    """A difference spanning decades: 3.4e-07 -> "3.40e-07"."""
    return f"{value:.{digits}e}"


@_guard
def number(value: float, digits: int = 3) -> str:
    """A measured figure to `digits` significant digits: 0.0421345 -> "0.0421"; 12345.6 -> "1.23e+04"."""
    return f"{value:.{digits}g}"


@_guard
def signed(value: float, digits: int = 3) -> str:
    """A signed change to `digits` significant digits: 0.0123 -> "+0.0123"."""
    return f"{value:+.{digits}g}"


@_guard
def fixed(value: float, digits: int = 4) -> str:
    """A figure with a fixed number of decimals: 0.99871 -> "0.9987"."""
    return f"{value:.{digits}f}"


@_guard
def count(value: float) -> str:
    """A count with thousands separators: 12038154 -> "12,038,154"."""
    return f"{value:,.0f}"


@_guard
def size(value: float) -> str:
    """Bytes in the unit a person reads: 35840 -> "35.0 KiB"; 48152616 -> "45.9 MiB"."""
    if abs(value) < KIB:
        return f"{value:,.0f} bytes"
    if abs(value) < KIB ** 2:
        return f"{value / KIB:.1f} KiB"
    if abs(value) < KIB ** 3:
        return f"{value / KIB ** 2:.1f} MiB"
    return f"{value / KIB ** 3:.2f} GiB"


@_guard
def duration(value: float) -> str:
    """Seconds in the unit a person reads: 0.0123 -> "12.3 ms"; 4.567 -> "4.57 s"; 754 -> "12 min 34 s"."""
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    if value < 60:
        return f"{value:.3g} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds} s"


@_guard
def milliseconds(value: float) -> str:
    """A latency already in milliseconds: 0.12345 -> "0.123 ms"."""
    return f"{value:.3g} ms"


def prose(text):
    """A message as HTML: escaped, with its `command` spans (the code's own convention in messages) as <code>."""
    from markupsafe import Markup, escape

    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: nothing to mark up
        return escape(text)
    return Markup("").join(escape(part) if index % 2 == 0 else Markup("<code>%s</code>") % part
                           for index, part in enumerate(parts))


def timestamp(value: str) -> str:
    """An ISO 8601 UTC time as people read it: "2026-12-04T18:25:52+00:00" -> "2026-12-04 18:25:52 UTC"."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return str(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def training_fact(key: str, value) -> str:
    """One figure of train/metrics.json for people: accuracies as %, counts grouped, the fit time as a duration."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if key.endswith("accuracy"):
        return percent(value)
    if key == "fit_seconds":
        return duration(value)
    if isinstance(value, int):
        return count(value)
    return number(value, 4)


def verdict_style(value) -> str:
    """The page's CSS class for a verdict: shippable (pass, reference) green, fail / error red, the rest muted."""
    try:
        verdict = Verdict(value)
    except ValueError:  # a word an older manifest may hold: shown, not coloured
        return "muted"
    if verdict.shippable:
        return str(Verdict.PASS)
    return str(Verdict.FAIL) if verdict in (Verdict.FAIL, Verdict.ERROR) else "muted"


def verdict_of(passed: bool | None) -> Verdict:
    """PASS for a check that passed, else FAIL (a missing figure did not pass)."""
    return Verdict.of_checks([bool(passed)])


FILTERS = {"percent": percent, "points": points, "scientific": scientific, "number": number, "signed": signed,
           "fixed": fixed, "count": count, "size": size, "duration": duration, "milliseconds": milliseconds,
           "prose": prose, "timestamp": timestamp}


SWEEP_SAMPLE_NOTE = ("A setting first runs the eval batches of each shape the full run uses (the first and the last); "
                     "where its outputs there are bit-identical to outputs already computed on every example (the "
                     "default settings' or another setting's), it performs the same arithmetic, and those outputs "
                     "stand for the remaining batches.")


def sweep_ran(row: dict) -> str:
    """Which examples a sweep row ran: all of them, or the sampled batches plus whose outputs stood for the rest."""
    ran = row.get("ran")
    if not ran:
        return "–"
    if ran["same_as"] is None:
        return f"all {ran['of']}"
    if ran.get("same_settings"):
        return f"none: on this host, the same configuration as {ran['same_as']}"
    return f"{ran['examples']} of {ran['of']}; bit-identical there to {ran['same_as']}, which stands for the rest"


@cache
def template_environment():
    """The Jinja2 environment of report.html: templates shipped in this package, HTML autoescaped, strict undefined.

    Raises:
        ImportError: jinja2 is not installed (it comes with the `train` extra).
    """
    import jinja2

    environment = jinja2.Environment(loader=jinja2.PackageLoader("kerasport.parity", "templates"),
                                     extensions=["jinja2.ext.do"],
                                     autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(FILTERS)
    environment.globals.update(training_fact=training_fact, verdict_style=verdict_style, verdict_of=verdict_of,
                               sweep_ran=sweep_ran, SWEEP_SAMPLE_NOTE=SWEEP_SAMPLE_NOTE, MISSING=MISSING)
    return environment
