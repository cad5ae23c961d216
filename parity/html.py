"""`<run>/report.html`: the whole release candidate on one self-contained page.

Sections (each always present, saying so when its data is missing): summary, training curves and learning rate
(`train/history.csv`), confusion matrix (`train/metrics.json`), the parity tables with verdicts, error histograms,
the runtime-settings sweep, the per-layer explanation, drift against a baseline, the microcontroller budgets, and
versions and hashes. The parity, sweep, explain, drift and budget sections are report.md's own sections rendered to
HTML (one source for both); the charts are drawn here with matplotlib (Agg). Every image is embedded as a `data:`
URI, the CSS is inline and there is no script: the page needs no network and shows the same offline, and a
viewport meta tag with fluid tables and images keeps it readable on a phone. Written by `kerasport parity` at the
end of a run; `kerasport report --run DIR` writes it again from the bundle's files.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from pathlib import Path

import numpy as np

from kerasport.bundle import Stage
from kerasport.fsutil import atomic_path
from kerasport.manifest import Manifest, load_manifest
from kerasport.verdict import Verdict

REPORT_NAME = "report.html"
PARITY_DIR = Stage.PARITY.folder
TRAIN_DIR = Stage.TRAIN.folder
HISTOGRAM_LOG10_EDGES = tuple(np.arange(-12.0, 1.5, 0.5).round(1))  # |diff| from 1e-12 to 10, half decades
HISTOGRAM_FLOOR = 1e-12
SECTIONS = (("summary", "Summary"), ("recommendation", "Recommendation and speed"),
            ("training", "Training"), ("confusion", "Confusion matrix"),
            ("parity", "Parity"), ("recipes", "int8 recipes"), ("histograms", "Error histograms"),
            ("sweep", "Runtime settings sweep"),
            ("explain", "Layer by layer"), ("drift", "Drift against the last release"),
            ("budgets", "Microcontroller budgets"), ("versions", "Versions and hashes"))
# report.md's level-2 headings, by the page section they belong to
MARKDOWN_SECTIONS = (("Runtime settings sweep", "sweep"), ("Microcontroller", "budgets"), ("Explain", "explain"),
                     ("Drift", "drift"), ("int8 recipes", "recipes"), ("Recommendation", "recommendation"),
                     ("Performance", "recommendation"), ("Per-op profile", "recommendation"))

CSS = """
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg:#fff;--soft:#f6f8fa;--ok:#1a7f37;--bad:#cf222e}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:12px 16px 48px}
h1{font-size:1.5em;margin:.4em 0}
h2{font-size:1.25em;border-bottom:1px solid var(--line);padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
h4{font-size:1em;margin:1em 0 .3em}
nav{display:flex;flex-wrap:wrap;gap:6px;margin:8px 0}
nav a{padding:2px 8px;border:1px solid var(--line);border-radius:12px;text-decoration:none;color:var(--fg);
font-size:.85em;background:var(--soft)}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:.5em 0}
table{border-collapse:collapse;font-size:.85em;min-width:60%}
th,td{border:1px solid var(--line);padding:3px 7px;text-align:left;min-width:4.5em;max-width:28em;vertical-align:top}
th{background:var(--soft)}
td code{word-break:break-all}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
pre{background:var(--soft);padding:8px;overflow-x:auto;font-size:.8em}
code{font-size:.9em}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600}
.pass{background:var(--ok)}
.fail{background:var(--bad)}
.muted{color:var(--muted)}
blockquote{margin:.5em 0;padding:4px 12px;border-left:4px solid var(--line);color:var(--muted)}
@media (max-width:600px){body{font-size:14px}main{padding:8px}table{font-size:.78em}}
"""


def error_histogram(reference: np.ndarray, candidate: np.ndarray) -> list[int]:
    """Counts of |candidate - reference| per half decade (HISTOGRAM_LOG10_EDGES; 0 counted in the first bin)."""
    difference = np.abs(np.asarray(candidate, np.float64) - np.asarray(reference, np.float64)).ravel()
    logs = np.log10(np.maximum(difference, HISTOGRAM_FLOOR))
    edges = np.asarray(HISTOGRAM_LOG10_EDGES)
    counts, _ = np.histogram(np.clip(logs, edges[0], edges[-1]), bins=edges)
    return [int(count) for count in counts]


def write_html_report(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.html` from the manifest, the training files and the parity reports.

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


def render_html(run_dir: Path) -> str:
    """The page as a string (see the module docstring)."""
    manifest = load_manifest(run_dir)
    parity_dir = run_dir / PARITY_DIR
    report = _read_json(parity_dir / "report.json")
    markdown_parts = _split_markdown((parity_dir / "report.md").read_text(encoding="utf-8")
                                     if (parity_dir / "report.md").is_file() else "")
    body = {key: [] for key, _ in SECTIONS}
    body["summary"] = _summary(manifest, report)
    body["training"] = _training(run_dir)
    body["confusion"] = _confusion(run_dir, manifest)
    body["parity"] = ([_markdown_html(part, parity_dir) for part in markdown_parts.get("parity", [])]
                      or [_missing("parity has not run on this bundle (`kerasport parity --run DIR`)")])
    body["histograms"] = _histograms(report, parity_dir)
    defaults = {"sweep": "no sweep in this parity run (`--sweep` is the default)",
                "explain": "not run: `kerasport parity --explain` compares every candidate layer by layer (a "
                           "failing candidate is explained automatically)",
                "drift": "no baseline compared: `kerasport parity --baseline OTHER_RUN`",
                "budgets": "no tflm artifact in this bundle",
                "recipes": "no int8 recipe recorded (re-export the bundle: `kerasport export --int8-recipe auto`)"}
    for key, missing in defaults.items():
        body[key] = [_markdown_html(part, parity_dir) for part in markdown_parts.get(key, [])] or [_missing(missing)]
    body["recommendation"] = _recommendation(markdown_parts.get("recommendation", []), report, parity_dir)
    body["versions"] = _versions(manifest, report)
    title = f"{manifest.name} {manifest.version} — kerasport report"
    nav = "".join(f'<a href="#{key}">{html.escape(label)}</a>' for key, label in SECTIONS)
    sections = "".join(f'<section id="{key}"><h2>{html.escape(label)}</h2>{"".join(body[key])}</section>'
                       for key, label in SECTIONS)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{html.escape(title)}</h1><nav>{nav}</nav>{sections}</main></body></html>\n")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _missing(text: str) -> str:
    return f'<p class="muted">{html.escape(text)}.</p>'


def _image(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


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


# -- summary and versions -----------------------------------------------------------------------------------------
def _summary(manifest: Manifest, report: dict | None) -> list[str]:
    contract = manifest.contract
    parts = []
    if report is None:
        parts.append('<p><span class="badge fail">NOT CHECKED</span> parity has not run on this bundle.</p>')
    else:
        drift = report.get("drift")
        passed = report["passed"] and (drift is None or drift["passed"])
        verdict = Verdict.of_checks([passed])
        parts.append(f'<p><span class="badge {verdict}">{verdict.headline}'
                     f'</span> parity finished {html.escape(report["finished"])} in {report["seconds"]} s; '
                     f'{len(report["candidates"])} candidates against {html.escape(report["reference"]["artifact"])}'
                     f'.</p>')
        failures = report["failures"] + (drift["failures"] if drift else [])
        if failures:
            parts.append("<ul>" + "".join(f"<li>{html.escape(failure)}</li>" for failure in failures) + "</ul>")
        for name, result in (report.get("explain") or {}).get("candidates", {}).items():
            first = result.get("first_divergent")
            if first:
                parts.append(f"<p>Explain <code>{html.escape(name)}</code>: first layer beyond tolerance "
                             f"<b>{html.escape(first['message'])}</b>.</p>")
    inputs = ", ".join(f"{spec.name} {spec.kind} {list(spec.shape)} {spec.dtype}" for spec in contract.input_specs())
    outputs = ", ".join(f"{spec.name} {spec.kind} {list(spec.shape)}" for spec in contract.output_specs())
    parts.append(f"<p>Task: {html.escape(contract.task)}. Inputs: {html.escape(inputs)}. Outputs: "
                 f"{html.escape(outputs)}. Source: {html.escape(str(manifest.source.get('kind')))}.</p>")
    return parts


def _recommendation(parts: list[str], report: dict | None, parity_dir: Path) -> list[str]:
    """The recommendation per target and the speed table (report.md's sections), with the accuracy-vs-latency SVG
    inline after the recommendation."""
    from .perf_report import accuracy_latency_svg

    rendered = [_markdown_html(part, parity_dir) for part in parts]
    plot = accuracy_latency_svg(report) if report else None
    if plot:
        rendered.insert(1 if rendered else 0, f'<div class="scroll">{plot}</div>')
    return rendered or [_missing("no recommendation: parity has not run on this bundle, or ran before kerasport "
                                 "measured speed (`kerasport bench --run DIR`)")]


def _versions(manifest: Manifest, report: dict | None) -> list[str]:
    rows = [[name, f"<code>{html.escape(str(version))}</code>"] for name, version in sorted(manifest.versions.items())]
    parts = [_table(["package", "version"], rows, escape=False) if rows else _missing("no versions recorded")]
    artifacts = []
    for artifact in manifest.artifacts():
        verdict = artifact.verdict or "–"
        artifacts.append([artifact.name, f"<code>{html.escape(artifact.path)}</code>", html.escape(artifact.format),
                          html.escape(str(artifact.precision)), f"{artifact.bytes or 0:,}",
                          f"<code>{html.escape(str(artifact.sha256))}</code>", html.escape(verdict)])
    parts.append("<h3>Artifacts</h3>")
    parts.append(_table(["artifact", "path", "format", "precision", "bytes", "sha256", "parity"], artifacts,
                        escape=False))
    if report is not None:
        sample = report["inputs"]["eval_sample"]
        parts.append(f"<p>Eval inputs: {sample['examples']} examples, sha256 <code>{html.escape(sample['sha256'])}"
                     f"</code>; edge inputs sha256 <code>{html.escape(report['inputs']['edge']['sha256'])}</code>."
                     f"</p>")
    return parts


def _table(headers: list[str], rows: list[list[str]], *, escape: bool = True) -> str:
    cell = html.escape if escape else str
    head = "".join(f"<th>{html.escape(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(str(value))}</td>" for value in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


# -- training ----------------------------------------------------------------------------------------------------
def _training(run_dir: Path) -> list[str]:
    path = run_dir / TRAIN_DIR / "history.csv"
    if not path.is_file():
        return [_missing("no training history in this bundle (an imported model, or trained elsewhere)")]
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return [_missing("train/history.csv is empty")]
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
    parts = [_image(_figure_png(figure), "training curves and learning rate")]
    metrics_json = _read_json(run_dir / TRAIN_DIR / "metrics.json") or {}
    facts = [f"{key.replace('_', ' ')}: {metrics_json[key]}" for key in
             ("epochs_run", "best_epoch", "test_accuracy", "test_loss", "parameters", "fit_seconds")
             if key in metrics_json]
    if facts:
        parts.append(f"<p>{html.escape('; '.join(facts))}.</p>")
    return parts


def _float(value, default: float = float("nan")) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _confusion(run_dir: Path, manifest: Manifest) -> list[str]:
    metrics = _read_json(run_dir / TRAIN_DIR / "metrics.json") or {}
    matrix = metrics.get("confusion_matrix")
    if not matrix:
        return [_missing("no confusion matrix in this bundle (train/metrics.json has none)")]
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
    return [_image(_figure_png(figure), "confusion matrix")]


# -- parity -----------------------------------------------------------------------------------------------------
def _histograms(report: dict | None, parity_dir: Path) -> list[str]:
    if report is None:
        return [_missing("parity has not run on this bundle")]
    parts = []
    histograms = {name: result["histograms"] for name, result in report["candidates"].items()
                  if result.get("histograms")}
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
        parts.append(_image(_figure_png(figure), "error histograms"))
    errors = parity_dir / "errors.png"
    if errors.is_file():
        parts.append(_image(errors.read_bytes(), "mean, p99 and max |diff| per candidate"))
    return parts or [_missing("no error distributions recorded")]


# -- report.md rendered to HTML ------------------------------------------------------------------------------------
def _split_markdown(text: str) -> dict[str, list[str]]:
    """report.md's level-2 sections, grouped by page section (everything unclaimed belongs to parity)."""
    groups: dict[str, list[str]] = {}
    chunks = re.split(r"(?m)^(?=## )", text)
    for chunk in chunks:
        if not chunk.strip():
            continue
        heading = chunk.splitlines()[0][3:] if chunk.startswith("## ") else ""
        key = next((key for prefix, key in MARKDOWN_SECTIONS if heading.startswith(prefix)), "parity")
        groups.setdefault(key, []).append(chunk)
    return groups


_INLINE = (
    (re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)"), None),  # images are handled separately
    (re.compile(r"\*\*(.+?)\*\*"), r"<b>\1</b>"),
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
)


# report.md's verdict marks (reports.VERDICT_MARKS, budgets): emoji need a colour-emoji font the phone may lack
_MARKS = (("✅ pass", '<span class="badge pass">pass</span>'), ("❌ fail", '<span class="badge fail">fail</span>'),
          ("💥 error", '<span class="badge fail">error</span>'), ("⏭ skipped", '<span class="muted">skipped</span>'),
          ("✅", '<span class="badge pass">ok</span>'), ("❌", '<span class="badge fail">over</span>'))
_SEPARATOR = re.compile(r"^\|[-:| ]+\|?$")


def _inline(text: str) -> str:
    escaped = html.escape(text, quote=False)
    for pattern, replacement in _INLINE[1:]:
        escaped = pattern.sub(replacement, escaped)
    for mark, replacement in _MARKS:
        escaped = escaped.replace(mark, replacement)
    return escaped


def _markdown_html(text: str, folder: Path) -> str:
    """The little Markdown report.md uses: headings, tables, lists, quotes, code fences, images, bold, code."""
    out, lines, index = [], text.splitlines(), 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("```"):
            end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), len(lines))
            out.append(f"<details><summary>details</summary><pre>{html.escape(chr(10).join(lines[index + 1:end]))}"
                       f"</pre></details>")
            index = end + 1
            continue
        if line.startswith("|"):
            end = index
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            out.append(_markdown_table(lines[index:end]))
            index = end
            continue
        if line.startswith("- "):
            end = index
            while end < len(lines) and lines[end].startswith("- "):
                end += 1
            out.append("<ul>" + "".join(f"<li>{_inline(item[2:])}</li>" for item in lines[index:end]) + "</ul>")
            index = end
            continue
        image = _INLINE[0][0].fullmatch(line.strip())
        if image:
            path = folder / image.group(2)
            if path.is_file() and path.resolve().is_relative_to(folder.resolve()):
                out.append(_image(path.read_bytes(), image.group(1)))
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)  # report.md's # is this page's h2
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("> "):
            out.append(f"<blockquote>{_inline(line[2:])}</blockquote>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        index += 1
    return "".join(out)


def _markdown_table(rows: list[str]) -> str:
    cells = [[cell.strip() for cell in row.strip().strip("|").split(" | ")] for row in rows
             if not _SEPARATOR.match(row.strip())]
    header, body = cells[0], cells[1:]
    head = "".join(f"<th>{_inline(cell)}</th>" for cell in header)
    rows_html = "".join("<tr>" + "".join(f"<td>{_inline(cell)}</td>" for cell in row) + "</tr>" for row in body)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table></div>'
