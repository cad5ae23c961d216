"""`kerasport report`: (re)write a bundle's self-contained report.html from its files (parity/html.py)."""

from __future__ import annotations

from kerasport.cli_options import DEFAULT_RUN, RunOption
from kerasport.cli_support import console, user_errors


@user_errors
def report_command(
    run: RunOption = DEFAULT_RUN,
) -> None:
    """Write <run>/report.html: training, parity, explain, drift, budgets, versions and hashes on one page."""
    from .html import write_html_report

    path = write_html_report(run)
    console().print(f"report: {path} ({path.stat().st_size / 1024:.0f} KiB, self-contained)")
