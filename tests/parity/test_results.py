"""The parity results as typed records: report.json read back and written again, and every renderer fed from it.

tests/parity/data/<case>/ holds report.json files written by the gate (a run with --explain and --baseline on the
tiny trained bundle with every variant, a run with flash/RAM budgets, a run with speed measured and the per-op
profile) and what the renderers made of them when they were written: report.md, junit.xml and the console summary.
data/manifest.json is the tiny trained bundle's manifest, for the page's contract and versions sections.
"""

import copy
import json
import re
from pathlib import Path

import pytest

from kerasport.manifest import Manifest
from kerasport.parity.formatting import (
    count,
    duration,
    milliseconds,
    percent,
    points,
    prose,
    scientific,
    timestamp,
    training_fact,
)
from kerasport.parity.html import SECTIONS, contract_summary, render_page
from kerasport.parity.reports import junit_xml, markdown, summary_lines
from kerasport.parity.results import Check, ParityReport
from kerasport.verdict import Verdict

DATA = Path(__file__).parent / "data"
CASES = sorted(path.name for path in DATA.iterdir() if (path / "report.json").is_file())


def saved(case: str) -> tuple[str, ParityReport]:
    text = (DATA / case / "report.json").read_text()
    return text, ParityReport.from_dict(json.loads(text))


def manifest() -> Manifest:
    return Manifest(json.loads((DATA / "manifest.json").read_text()))


def section(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}"><h2>[^<]*</h2>(.*?)</section>', page, re.S)
    assert match, f"section {key} is missing"
    return match.group(1)


def test_the_saved_reports_cover_every_section():
    sections = {key for case in CASES for key, value in json.loads((DATA / case / "report.json").read_text()).items()
                if value}
    assert {"explain", "drift", "budgets", "performance", "profile", "recommendation", "int8_recipes",
            "sampled_checks"} <= sections


@pytest.mark.parametrize("case", CASES)
def test_a_saved_report_loads_and_is_written_back_byte_for_byte(case):
    text, report = saved(case)
    assert json.dumps(report.to_dict(), indent=2) + "\n" == text  # same keys, same order, same values
    assert ParityReport.from_dict(report.to_dict()) == report
    assert all(isinstance(result.verdict, Verdict) for result in report.candidates.values())
    assert all(isinstance(check, Check) for result in report.candidates.values() for check in result.checks)


def test_records_round_trip_after_a_change():
    _, report = saved("budgets")
    changed = copy.deepcopy(report)
    changed.candidates["tflm"].checks.append(Check.of("budget_ram", False, "over by 1 KiB"))
    changed.passed = False
    assert ParityReport.from_dict(changed.to_dict()) == changed != report
    (added,) = [check for check in changed.to_dict()["candidates"]["tflm"]["checks"] if check["id"] == "budget_ram"]
    assert added == {"check": "budget_ram", "id": "budget_ram", "output": None, "passed": False,
                     "message": "over by 1 KiB"}  # `skipped` appears only on a skipped check
    skipped = Check.of("tflm_runtime", True, "not installed", skipped=True)
    assert skipped.to_dict()["skipped"] is True and Check.from_dict(skipped.to_dict()) == skipped


@pytest.mark.parametrize("case", CASES)
def test_markdown_junit_and_console_render_a_loaded_report_as_before(case):
    _, report = saved(case)
    assert markdown(report) == (DATA / case / "report.md").read_text()
    assert junit_xml(report) == (DATA / case / "junit.xml").read_text()
    assert "\n".join(summary_lines(report, "build")) + "\n" == (DATA / case / "console.txt").read_text()


@pytest.mark.parametrize("case", CASES)
def test_html_renders_a_loaded_report_with_every_section(case):
    _, report = saved(case)
    page = render_page(manifest(), report)
    for key, _ in SECTIONS:
        section(page, key)
    parity = section(page, "parity")
    assert 'class="badge pass"' in parity and "<table>" in parity
    for name, result in report.candidates.items():
        assert f"<td>{name}</td>" in parity
        for output in report.outputs:
            stats = result.eval_stats(output)
            if stats is not None:
                assert f"<td>{scientific(stats['max_abs_diff'])}</td>" in parity
                assert f"<td>{percent(stats['top1_agreement'], 2)}</td>" in parity
    assert "0.98607" not in page and not re.search(r"\d\.\d{9,}", re.sub(r'"data:[^"]*"', "", page))
    assert f"{duration(report.seconds)};" in section(page, "summary")


def test_html_sections_show_what_each_saved_report_holds():
    _, explained = saved("explained")
    page = render_page(manifest(), explained)
    drift = section(page, "drift")
    assert "Drift against the baseline" in drift and explained.drift.baseline.name in drift
    explain = section(page, "explain")
    assert all(f"<code>{name}</code>" in explain for name in explained.explain.candidates)
    assert "tensor arena" in section(page, "budgets")
    assert "byte-identical" in section(page, "recipes")
    assert "optimization=disabled" in section(page, "sweep")

    _, measured = saved("measured")
    speed = section(render_page(manifest(), measured), "recommendation")
    assert "<svg" in speed and 'class="recommended"' in speed
    for name, figures in measured.performance.candidates.items():
        if figures.get("measured"):
            assert f"<td>{milliseconds(figures['latency_ms']['p50'])}</td>" in speed, name
    assert f"Per-op profile (server recommendation <code>{measured.profile.variant}</code>)" in speed

    _, budgeted = saved("budgets")
    budgets = section(render_page(manifest(), budgeted), "budgets")
    for row in budgeted.budgets.budgets:
        assert row.message in budgets
    assert 'class="badge fail">over' in budgets  # the flash budget below the model's size


def test_html_escapes_what_the_report_quotes():
    _, report = saved("budgets")
    report.failures.append('<script>alert("x")</script> & more')
    page = render_page(manifest(), report)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; more" in section(page, "summary")


def test_a_bundle_without_parity_says_so_in_every_parity_section():
    page = render_page(manifest(), None)
    assert "NOT CHECKED" in section(page, "summary")
    for key in ("parity", "histograms", "explain", "drift", "budgets", "recommendation", "recipes", "sweep"):
        assert 'class="muted"' in section(page, key), key


def test_numbers_and_labels_are_written_for_people():
    assert training_fact("test_accuracy", 0.9860724233983287) == "98.6 %" == percent(0.9860724233983287)
    assert training_fact("parameters", 12038154) == "12,038,154" == count(12038154)
    assert training_fact("fit_seconds", 754.2) == "12 min 34 s"
    assert points(-0.0012) == "-0.12 pp" and points(None) == "–"
    assert timestamp("2026-12-04T18:25:52+00:00") == "2026-12-04 18:25:52 UTC"
    assert str(prose("run `kerasport bench --run <DIR>` & see")) == (
        "run <code>kerasport bench --run &lt;DIR&gt;</code> &amp; see")
    assert str(prose("an unpaired ` <stays> text")) == "an unpaired ` &lt;stays&gt; text"
    described = contract_summary(manifest().contract)
    (output,) = described["outputs"]
    assert output == "probabilities: batch × 3"  # the kind is the name: said once
    (image,) = described["inputs"]
    assert image.startswith("image: batch × 28 × 28 × 1")
