"""`kerasport parity --explain` cost (issue 11's bars), measured side by side in one run on copies of one bundle.

    python bench/parity_explain.py [--run build] [--work DIR] [--json out.json]

Runs `kerasport parity --no-sweep` and `kerasport parity --no-sweep --explain` (subprocesses, as a user runs them)
on two copies of the bundle and prints both wall times, their ratio, the explain section's own seconds (per-layer
tables and int8 ranking vs the int8 fixes), the first layer beyond tolerance or the costliest int8 layer and best fix
per candidate, and the size of report.html. Bars: the explain section <= 60 s on 2 cores for the reference bundle
(`kerasport run --epochs 1 --limit 500`); report.html < 5 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KERASPORT = str(Path(sys.executable).with_name("kerasport"))
EXPLAIN_BAR_SECONDS = 60.0
HTML_BAR_BYTES = 5 * 1024 * 1024


def timed_parity(run: Path, *extra: str) -> tuple[float, int]:
    started = time.perf_counter()
    completed = subprocess.run([KERASPORT, "parity", "--run", str(run), "--no-sweep", *extra], capture_output=True,
                               text=True)
    return time.perf_counter() - started, completed.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="build", help="the bundle to measure (copied, never changed)")
    parser.add_argument("--work", default=None, help="where the copies go (default: a temporary directory)")
    parser.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    source = Path(args.run)
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        plain, explained = Path(work) / "plain", Path(work) / "explained"
        shutil.copytree(source, plain)
        shutil.copytree(source, explained)
        plain_seconds, plain_code = timed_parity(plain)
        explain_seconds, explain_code = timed_parity(explained, "--explain")
        report = json.loads((explained / "parity" / "report.json").read_text())
        html_bytes = (explained / "report.html").stat().st_size
    section = report["explain"]
    fixes = sum((result.get("fixes") or {}).get("seconds", 0.0) for result in section["candidates"].values())
    figures = {"parity_seconds": round(plain_seconds, 2), "parity_explain_seconds": round(explain_seconds, 2),
               "ratio": round(explain_seconds / plain_seconds, 2), "explain_section_seconds": section["seconds"],
               "int8_fixes_seconds": round(fixes, 2), "report_html_bytes": html_bytes,
               "exit_codes": [plain_code, explain_code], "candidates": {}}
    print(f"parity --no-sweep            {plain_seconds:7.1f} s (exit {plain_code})")
    print(f"parity --no-sweep --explain  {explain_seconds:7.1f} s (exit {explain_code}), "
          f"x{figures['ratio']} the plain gate")
    print(f"explain section              {section['seconds']:7.1f} s (int8 fixes {fixes:.1f} s); bar <= "
          f"{EXPLAIN_BAR_SECONDS:g} s: {'met' if section['seconds'] <= EXPLAIN_BAR_SECONDS else 'MISSED'}")
    print(f"report.html                  {html_bytes / 1024:7.0f} KiB; bar < 5 MB: "
          f"{'met' if html_bytes < HTML_BAR_BYTES else 'MISSED'}")
    for name, result in section["candidates"].items():
        first, costliest = result.get("first_divergent"), result.get("costliest")
        best = (result.get("fixes") or {}).get("best")
        text = (first["message"] if first else f"costliest int8 layer {costliest[0]['layer']}" if costliest
                else "within tolerance")
        figures["candidates"][name] = {"explained": text, "best_fix": best}
        print(f"  {name:<15} {text}" + (f"; best fix: {best}" if best else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
