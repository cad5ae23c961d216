"""`<run>/report.html`: the whole release candidate on one self-contained page, rendered from Jinja2 templates.

Sections (each always present, saying so when its data is missing): summary, recommendation and speed, training
curves and learning rate (`train/history.csv`), confusion matrix (`train/metrics.json`), the parity tables with
verdicts, the int8 recipes, error histograms, the runtime-settings sweep, the per-layer explanation, drift against
a baseline, the microcontroller budgets, and versions and hashes. Every parity section is rendered from the
`ParityReport` records of report.json (`results.py`) by the templates in `templates/` (autoescaped), with numbers
formatted for people (`formatting.py`); the charts are drawn here with matplotlib (Agg). Every image is embedded as
a `data:` URI, the CSS is inline and there is no script: the page needs no network and shows the same offline, and
a viewport meta tag with fluid tables and images keeps it readable on a phone. Written by `kerasport parity` at the
end of a run; `kerasport report --run DIR` writes it again from the bundle's files.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport.bundle import Stage
from kerasport.contract import ModelContract
from kerasport.fsutil import atomic_path
from kerasport.manifest import Manifest, load_manifest

from .results import ParityReport

REPORT_NAME = "report.html"
PARITY_DIR = Stage.PARITY.folder
TRAIN_DIR = Stage.TRAIN.folder
TEMPLATE = "report.html.j2"
ERRORS_PNG = "errors.png"
HISTOGRAM_LOG10_EDGES = tuple(np.arange(-12.0, 1.5, 0.5).round(1))  # |diff| from 1e-12 to 10, half decades
HISTOGRAM_FLOOR = 1e-12
SECTIONS = (("summary", "Summary"), ("recommendation", "Recommendation and speed"),
            ("training", "Training"), ("confusion", "Confusion matrix"),
            ("parity", "Parity"), ("recipes", "int8 recipes"), ("histograms", "Error histograms"),
            ("sweep", "Runtime settings sweep"),
            ("explain", "Layer by layer"), ("drift", "Drift against the last release"),
            ("budgets", "Microcontroller budgets"), ("versions", "Versions and hashes"))
# train/metrics.json's figures shown under the training curves, in this order
TRAINING_FACTS = {"epochs_run": "epochs run", "best_epoch": "best epoch", "test_accuracy": "test accuracy",
                  "test_loss": "test loss", "test_mae": "test MAE", "test_mse": "test MSE", "parameters": "parameters",
                  "fit_seconds": "fit time"}


@dataclass(frozen=True)
class Image:
    """A PNG embedded in the page as a `data:` URI."""

    alt: str
    src: str

    @classmethod
    def of(cls, data: bytes, alt: str) -> Image:
        return cls(alt, f"data:image/png;base64,{base64.b64encode(data).decode()}")


def error_histogram(reference: np.ndarray, candidate: np.ndarray) -> list[int]:
    """Counts of |candidate - reference| per half decade (HISTOGRAM_LOG10_EDGES; 0 counted in the first bin)."""
    difference = np.abs(np.asarray(candidate, np.float64) - np.asarray(reference, np.float64)).ravel()
    logs = np.log10(np.maximum(difference, HISTOGRAM_FLOOR))
    edges = np.asarray(HISTOGRAM_LOG10_EDGES)
    counts, _ = np.histogram(np.clip(logs, edges[0], edges[-1]), bins=edges)
    return [int(count) for count in counts]


def write_html_report(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.html` from the manifest, the training files and the parity report.

    Returns:
        The page's path.

    Raises:
        UsageError: there is no bundle at `run_dir`.
    """
    run_dir = Path(run_dir)
    page = render_html(run_dir)
    destination = run_dir / REPORT_NAME
    with atomic_path(destination) as staging:
        staging.write_text(page, encoding="utf-8")
    return destination


def load_report(parity_dir: Path) -> ParityReport | None:
    """The parity report of a bundle (None: parity has not run, or report.json is unreadable)."""
    raw = _read_json(parity_dir / "report.json")
    if not isinstance(raw, dict):
        return None
    try:
        return ParityReport.from_dict(raw)
    except (TypeError, ValueError, KeyError):
        return None


def render_html(run_dir: Path) -> str:
    """The page as a string (see the module docstring).

    Raises:
        UsageError: there is no bundle at `run_dir`.
    """
    manifest = load_manifest(run_dir)
    parity_dir = run_dir / PARITY_DIR
    return render_page(manifest, load_report(parity_dir), parity_dir=parity_dir, train_dir=run_dir / TRAIN_DIR)


def render_page(manifest: Manifest, report: ParityReport | None, *, parity_dir: Path | None = None,
                train_dir: Path | None = None) -> str:
    """The page of a bundle's manifest and parity report; the folders (when given) supply the images.

    Args:
        manifest: the bundle's manifest (contract, artifacts, versions).
        report: its parity report, or None when parity has not run.
        parity_dir: `<run>/parity/` for errors.png, the explain plot and the drift contact sheets.
        train_dir: `<run>/train/` for the training curves and the confusion matrix.

    Returns:
        The HTML page.
    """
    from kerasport.perf import best_throughput

    from .budgets import TFLM_ARTIFACT, microcontroller_facts
    from .explain.match import COMPARED
    from .formatting import template_environment
    from .perf_report import TARGET_LABELS, accuracy_latency_plot
    from .reports import output_verdict

    metrics = (_read_json(train_dir / "metrics.json") if train_dir else None) or {}
    helpers = {"output_verdict": output_verdict, "microcontroller_facts": microcontroller_facts,
               "best_throughput": best_throughput, "target_labels": TARGET_LABELS, "tflm_artifact": TFLM_ARTIFACT,
               "COMPARED": COMPARED}
    context = {**helpers,
        "title": f"{manifest.name} {manifest.version} — kerasport report", "sections": SECTIONS,
        "manifest": manifest, "report": report, "contract": contract_summary(manifest.contract),
        "source": manifest.source.get("kind"),
        "training": training_images(train_dir) if train_dir else None,
        "training_facts": [(label, key, metrics[key]) for key, label in TRAINING_FACTS.items() if key in metrics],
        "confusion": confusion_image(metrics, manifest, train_dir),
        "histograms": histogram_images(report, parity_dir) if report else [],
        "plot": accuracy_latency_plot(report) if report else None,
        "files": parity_images(report, parity_dir) if report and parity_dir else {},
    }
    return template_environment().get_template(TEMPLATE).render(context)


def contract_summary(contract: ModelContract) -> dict[str, list[str]]:
    """One phrase per input and output: the name, its kind where the name does not say it, shape and dtype."""
    def phrase(spec, dtype: bool) -> str:
        kind = "" if spec.kind == spec.name else f" ({spec.kind})"
        shape = " × ".join("batch" if index == 0 and size == -1 else ("any" if size == -1 else str(size))
                           for index, size in enumerate(spec.shape))
        return f"{spec.name}{kind}: {shape}" + (f", {spec.dtype}" if dtype else "")

    return {"inputs": [phrase(spec, True) for spec in contract.input_specs()],
            "outputs": [phrase(spec, False) for spec in contract.output_specs()]}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _figure_png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def parity_images(report: ParityReport, parity_dir: Path) -> dict[str, Image]:
    """The PNGs report.json names beside itself (the explain plot, drift contact sheets), by file name."""
    described = {}
    if report.explain and report.explain.plot:
        described[report.explain.plot] = "error by layer depth"
    for model, outputs in (report.drift.models if report.drift else {}).items():
        if isinstance(outputs.get("contact_sheet"), str):
            described[outputs["contact_sheet"]] = f"{model}: flipped examples"
    images = {}
    for name, alt in described.items():
        path = parity_dir / name
        if path.is_file() and path.resolve().is_relative_to(parity_dir.resolve()):
            images[name] = Image.of(path.read_bytes(), alt)
    return images


# -- training ----------------------------------------------------------------------------------------------------
# The train stage's own figures: the page shows them as they are rather than drawing them again (about 0.45 s of
# matplotlib per gate); drawn from history.csv / metrics.json only where a bundle lacks them.
TRAIN_CURVES_PNG, TRAIN_CONFUSION_PNG = "curves.png", "confusion.png"


def _stored_figure(path: Path | None, alt: str) -> Image | None:
    return Image.of(path.read_bytes(), alt) if path is not None and path.is_file() else None


def training_images(train_dir: Path) -> Image | str:
    """The training curves and learning rate: the train stage's curves.png, else drawn from history.csv, or why
    there are none."""
    stored = _stored_figure(train_dir / TRAIN_CURVES_PNG, "training curves and learning rate")
    if stored is not None:
        return stored
    path = train_dir / "history.csv"
    if not path.is_file():
        return "no training history in this bundle (an imported model, or trained elsewhere)"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return "train/history.csv is empty"
    columns = {name: [_float(row.get(name)) for row in rows] for name in rows[0] if name != "epoch"}
    epochs = [int(_float(row.get("epoch"), index)) + 1 for index, row in enumerate(rows)]
    metrics = [name for name in columns if not name.startswith("val_") and name != "learning_rate"]
    plt = _pyplot()
    panels = len(metrics) + (1 if "learning_rate" in columns else 0)
    figure, axes = plt.subplots(1, max(panels, 1), figsize=(4.2 * max(panels, 1), 3.2), squeeze=False)
    for axis, name in zip(axes[0], metrics, strict=False):
        axis.plot(epochs, columns[name], marker="o", label=name)
        if f"val_{name}" in columns:
            axis.plot(epochs, columns[f"val_{name}"], marker="o", label=f"val_{name}")
        axis.set(title=name, xlabel="epoch")
        axis.legend(fontsize=8)
    if "learning_rate" in columns:
        axis = axes[0][len(metrics)]
        axis.plot(epochs, columns["learning_rate"], marker="o", color="tab:green")
        axis.set(title="learning rate", xlabel="epoch", yscale="log")
    return Image.of(_figure_png(figure), "training curves and learning rate")


def _float(value, default: float = float("nan")) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def confusion_image(metrics: dict, manifest: Manifest, train_dir: Path | None = None) -> Image | None:
    """The test split's confusion matrix: the train stage's confusion.png, else drawn from train/metrics.json
    (None: none recorded)."""
    matrix = metrics.get("confusion_matrix")
    if not matrix:
        return None
    stored = _stored_figure(train_dir / TRAIN_CONFUSION_PNG if train_dir else None, "confusion matrix")
    if stored is not None:
        return stored
    matrix = np.asarray(matrix, dtype=np.float64)
    output = manifest.contract.classification_output
    labels = [output.label(index) if output is not None else str(index) for index in range(len(matrix))]
    plt = _pyplot()
    size = min(9.0, 2.5 + 0.45 * len(matrix))
    figure, axis = plt.subplots(figsize=(size, size * 0.85))
    image = axis.imshow(matrix, cmap="Blues")
    if len(matrix) <= 20:
        for (row, column), value in np.ndenumerate(matrix):
            axis.text(column, row, f"{value:g}", ha="center", va="center", fontsize=7,
                      color="white" if value > matrix.max() / 2 else "black")
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.set(xlabel="predicted", ylabel="true", title="confusion matrix (test split)")
    figure.colorbar(image, ax=axis, fraction=0.046)
    return Image.of(_figure_png(figure), "confusion matrix")


# -- parity -----------------------------------------------------------------------------------------------------
def histogram_images(report: ParityReport, parity_dir: Path | None) -> list[Image]:
    """The |diff| histograms per output (from report.json) and errors.png (beside it)."""
    images = []
    histograms = {name: result.histograms for name, result in report.candidates.items() if result.histograms}
    if histograms:
        outputs = sorted({output for counts in histograms.values() for output in counts})
        plt = _pyplot()
        figure, axes = plt.subplots(len(outputs), 1, figsize=(8, 3.2 * len(outputs)), squeeze=False)
        edges = np.asarray(HISTOGRAM_LOG10_EDGES)
        centres = (edges[:-1] + edges[1:]) / 2
        for axis, output in zip(axes[:, 0], outputs, strict=True):
            for name, counts in histograms.items():
                if output in counts:
                    axis.step(centres, counts[output], where="mid", label=name)
            axis.set(title=f"|candidate − reference| on the eval inputs, output {output}",
                     xlabel=f"log10 |diff| (0 counted at {edges[0]:g})", ylabel="values")
            axis.legend(fontsize=7)
        images.append(Image.of(_figure_png(figure), "error histograms"))
    errors = parity_dir / ERRORS_PNG if parity_dir else None
    if errors is not None and errors.is_file():
        images.append(Image.of(errors.read_bytes(), "mean, p99 and max |diff| per candidate"))
    return images
