"""tests/file_durations.json orders the files handed to the pytest-xdist workers (tests/conftest.py): longest first.

A recorded path that no longer exists (a file moved to another folder) silently counts as a short file, so the
longest file could start last and run alone at the end; these checks catch that when a test file is moved.
"""

from __future__ import annotations

import json
from pathlib import Path

from devtools.test_durations import OUT, ROOT, file_seconds


def test_every_recorded_file_exists_and_the_record_covers_most_test_files():
    recorded = json.loads(OUT.read_text())
    missing = [name for name in recorded if not (ROOT / name).is_file()]
    assert missing == [], f"re-run devtools/test_durations.py: {missing} moved or were removed"
    test_files = {path.relative_to(ROOT).as_posix() for path in (ROOT / "tests").rglob("test_*.py")}
    assert len(set(recorded) & test_files) >= len(test_files) // 2, "the record misses most test files"


def test_file_seconds_sums_a_files_tests_from_a_junit_report(tmp_path: Path):
    report = tmp_path / "junit.xml"
    report.write_text('<testsuites><testsuite name="pytest">'
                      '<testcase classname="tests.train.test_a" name="t1" time="1.5"/>'
                      '<testcase classname="tests.train.test_a.TestGroup" name="t2" time="2.0"/>'
                      '<testcase classname="tests.serve.test_b" name="t3" time="4.0"/>'
                      '</testsuite></testsuites>')
    assert file_seconds(report) == {"tests/serve/test_b.py": 4.0, "tests/train/test_a.py": 3.5}
