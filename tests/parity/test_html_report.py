"""report.html: one self-contained page, checked as a user sees it — rendered in headless Chromium."""

import base64
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from kerasport.app.cli import app
from kerasport.parity.html import REPORT_NAME, SECTIONS, TRAIN_CONFUSION_PNG, TRAIN_CURVES_PNG, render_html
from kerasport.parity.stage import ParityOptions, run_parity

runner = CliRunner()
MAX_BYTES = 5 * 1024 * 1024
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CONSOLE_ERRORS = re.compile(r"Uncaught|CONSOLE\(\d+\)|net::ERR_")


@pytest.fixture(scope="module")
def reported(exported, tmp_path_factory):
    """The tiny trained bundle after `parity --explain --baseline <itself>`: every section has content."""
    root = tmp_path_factory.mktemp("html")
    run, baseline = root / "run", root / "baseline"
    shutil.copytree(exported, run)
    shutil.copytree(exported, baseline)
    result = run_parity(ParityOptions(run=str(run), explain=True, baseline=str(baseline)))
    assert (run / REPORT_NAME).is_file(), result.failures
    return run


def section_html(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, re.S)
    assert match, f"section {key} is missing"
    return match.group(1)


def test_every_section_is_present_with_its_content(reported):
    page = (reported / REPORT_NAME).read_text()
    for key, _ in SECTIONS:
        section_html(page, key)
    assert '<img alt="training curves and learning rate"' in section_html(page, "training")
    assert '<img alt="confusion matrix"' in section_html(page, "confusion")
    assert "<table>" in section_html(page, "parity") and 'class="badge pass"' in section_html(page, "parity")
    assert '<img alt="error histograms"' in section_html(page, "histograms")
    assert "optimization=disabled" in section_html(page, "sweep")
    assert '<img alt="error by layer depth"' in section_html(page, "explain")
    assert "Drift against the baseline" in section_html(page, "drift")
    assert "tensor arena" in section_html(page, "budgets")
    recipes = section_html(page, "recipes")  # the tiny model's full int8 passes its tuning sample: kept as is
    assert all(name in recipes for name in ("onnx-int8", "tflite-int8", "tflm")) and "byte-identical" in recipes
    manifest_hash = re.search(r'"sha256": "([0-9a-f]{64})"', (reported / "manifest.json").read_text()).group(1)
    assert manifest_hash in section_html(page, "versions")


def test_the_train_stages_own_figures_are_shown_and_drawn_only_where_missing(reported, tmp_path):
    page = (reported / REPORT_NAME).read_text()
    for key, name in (("training", TRAIN_CURVES_PNG), ("confusion", TRAIN_CONFUSION_PNG)):
        stored = base64.b64encode((reported / "train" / name).read_bytes()).decode()
        assert f"data:image/png;base64,{stored}" in section_html(page, key), name
    bare = tmp_path / "run"
    shutil.copytree(reported, bare)
    for name in (TRAIN_CURVES_PNG, TRAIN_CONFUSION_PNG):
        (bare / "train" / name).unlink()
    drawn = render_html(bare)  # from history.csv and metrics.json instead
    assert '<img alt="training curves and learning rate"' in section_html(drawn, "training")
    assert '<img alt="confusion matrix"' in section_html(drawn, "confusion")
    assert section_html(drawn, "training") != section_html(page, "training")


def test_the_page_is_self_contained_small_and_fits_a_phone(reported):
    page = (reported / REPORT_NAME).read_text()
    assert (reported / REPORT_NAME).stat().st_size < MAX_BYTES
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    sources = re.findall(r'(?:src|href)="([^"#][^"]*)"', page)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources), sources[:3]
    assert "<script" not in page and "@import" not in page


def test_report_command_writes_the_page_again(reported):
    page = (reported / REPORT_NAME).read_text()
    (reported / REPORT_NAME).unlink()
    result = runner.invoke(app, ["report", "--run", str(reported)])
    assert result.exit_code == 0, result.output
    again = (reported / REPORT_NAME).read_text()
    assert [section_html(again, key) for key, _ in SECTIONS][:2] == [section_html(page, key) for key, _ in SECTIONS][:2]
    missing = runner.invoke(app, ["report", "--run", str(reported / "none")])
    assert missing.exit_code == 2 and "manifest.json is missing" in missing.output


def browser() -> str | None:
    return next((name for name in BROWSERS if shutil.which(name)), None)


def render(path, *extra: str) -> subprocess.CompletedProcess:
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
               *extra, path.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(browser() is None, reason="no Chromium installed (`apt-get install chromium`; .ci/run does)")
def test_the_page_renders_in_headless_chromium_without_console_errors(reported, tmp_path):
    # the check itself: a page with a script error is caught
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>notDefined();</script></body></html>")
    assert CONSOLE_ERRORS.search(render(broken, "--dump-dom").stderr)

    dom = render(reported / REPORT_NAME, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not CONSOLE_ERRORS.search(dom.stderr), CONSOLE_ERRORS.findall(dom.stderr)
    for key, label in SECTIONS:
        assert f'<section id="{key}"><h2>{label}</h2>' in dom.stdout
    screenshot = tmp_path / "phone.png"
    shot = render(reported / REPORT_NAME, "--hide-scrollbars", "--window-size=390,2400",
                  f"--screenshot={screenshot}")
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
