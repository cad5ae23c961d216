"""Seconds per test file from a JUnit XML report, written to tests/file_durations.json for the xdist scheduling
in tests/conftest.py (the longest files are handed out first).

    .venv/bin/python -m pytest -n auto --dist loadfile --junitxml build/junit-tests.xml
    .venv/bin/python devtools/test_durations.py build/junit-tests.xml

The figures only order the files; a stale or missing entry changes how well the workers are balanced, never what runs.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "file_durations.json"


def file_seconds(junit_xml: Path) -> dict[str, float]:
    """Seconds per test file (setup + call + teardown of its tests), keyed by its path from the repository root.

    Args:
        junit_xml: a pytest `--junitxml` report.

    Returns:
        {"tests/train/test_training.py": 61.2, ...}, longest first.
    """
    totals: dict[str, float] = defaultdict(float)
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        # classname is the dotted module path plus any class: tests.train.test_training[.TestSomething]
        parts = case.get("classname", "").split(".")
        while parts and not parts[-1].startswith("test_"):
            parts.pop()
        if parts:
            totals["/".join(parts) + ".py"] += float(case.get("time", 0))
    return dict(sorted(((name, round(seconds, 1)) for name, seconds in totals.items()), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit_xml", type=Path)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    durations = {name: seconds for name, seconds in file_seconds(args.junit_xml).items()
                 if (ROOT / name).is_file()}
    args.out.write_text(json.dumps(durations, indent=1) + "\n")
    print(f"{len(durations)} files, {sum(durations.values()):.0f} s in all -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
