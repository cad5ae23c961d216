"""Parity reports: JSON for machines, Markdown for pull requests, JUnit XML for CI, a PNG of error spreads."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np


def write_reports(directory: Path, report: dict) -> None:
    (directory / "report.json").write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    (directory / "report.md").write_text(markdown(report))
    (directory / "junit.xml").write_text(junit_xml(report))
    errors_png(report, directory / "errors.png")


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def markdown(report: dict) -> str:
    classification = report["task"] == "classification"
    lines = [f"# kerasport parity: {'PASSED' if report['passed'] else 'FAILED'}", "",
             f"Reference: {report['reference']['runtime']}. Inputs: {report['inputs']['eval_sample']['images']} "
             f"held-out images (`{report['inputs']['eval_sample']['sha256'][:12]}…`) plus "
             f"{report['inputs']['edge']['images']} edge inputs at batch sizes "
             f"{', '.join(map(str, report['inputs']['edge']['batch_sizes']))}.", "",
             f"Reference noise floor (Keras batch 1 vs batch 64): max |diff| "
             f"{report['reference']['noise_floor']['max_abs_diff']:.2e}.", ""]
    if classification:
        lines += ["| candidate | precision | runtime | max abs diff | mean abs diff | top-1 agreement | flips | "
                  "accuracy (Δ pp, 95 % CI) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| candidate | precision | runtime | max abs diff | mean abs diff | MAE (Δ) | verdict |",
                  "|---|---|---|---|---|---|---|"]
    for name, result in report["candidates"].items():
        verdict = {"pass": "✅ pass", "fail": "❌ fail", "error": "💥 error"}[result["verdict"]]
        if "eval" not in result or "mean_abs_diff" not in result.get("eval", {}):
            lines.append(f"| {name} | {result['precision']} | {result.get('runtime')} | – | – | – | – | – | {verdict} |"
                         if classification else f"| {name} | {result['precision']} | – | – | – | – | {verdict} |")
            continue
        stats = result["eval"]
        if classification:
            low, high = stats["accuracy_delta_ci95"]
            lines.append(f"| {name} | {result['precision']} | {result['runtime']} | {stats['max_abs_diff']:.2e} | "
                         f"{stats['mean_abs_diff']:.2e} | {stats['top1_agreement']:.4f} | {stats['label_flips']} | "
                         f"{stats['accuracy']:.4f} ({stats['accuracy_delta'] * 100:+.2f}, "
                         f"[{low * 100:+.2f}, {high * 100:+.2f}]) | {verdict} |")
        else:
            lines.append(f"| {name} | {result['precision']} | {result['runtime']} | {stats['max_abs_diff']:.2e} | "
                         f"{stats['mean_abs_diff']:.2e} | {stats['mae']:.4f} ({stats['mae_delta']:+.4f}) | {verdict} |")
    if report["failures"]:
        lines += ["", "## Failures", ""] + [f"- {failure}" for failure in report["failures"]]
    sweeps = {name: result["sweep"] for name, result in report["candidates"].items() if result.get("sweep")}
    if sweeps:
        lines += ["", "## Runtime settings sweep (eval slice)", "",
                  "| candidate | settings | max abs diff | top-1 agreement | seconds | within tolerance |",
                  "|---|---|---|---|---|---|"]
        for name, rows in sweeps.items():
            for row in rows:
                agreement = f"{row['top1_agreement']:.4f}" if "top1_agreement" in row else "–"
                difference = f"{row['max_abs_diff']:.2e}" if row["max_abs_diff"] is not None else row["error"]
                lines.append(f"| {name} | {row['settings']} | {difference} | {agreement} | "
                             f"{row['seconds']:.3f} | {'yes' if row['within_tolerance'] else '**no**'} |")
    lines += ["", "## Findings", ""] + ([f"- {finding}" for finding in report["findings"]] or ["- none"])
    lines += ["", "## Tolerances", "", "```json", json.dumps(report["tolerances"], indent=2), "```", ""]
    return "\n".join(lines)


def junit_xml(report: dict) -> str:
    cases = [(name, check) for name, result in report["candidates"].items() for check in result["checks"]]
    failures = sum(1 for _, check in cases if not check["passed"] and check["check"] != "loads_and_runs")
    errors = sum(1 for _, check in cases if not check["passed"] and check["check"] == "loads_and_runs")
    suites = ET.Element("testsuites", name="kerasport parity", tests=str(len(cases)), failures=str(failures),
                        errors=str(errors), time=str(report["seconds"]))
    suite = ET.SubElement(suites, "testsuite", name="parity", tests=str(len(cases)), failures=str(failures),
                          errors=str(errors), time=str(report["seconds"]), timestamp=report["finished"])
    for name, check in cases:
        case = ET.SubElement(suite, "testcase", classname=f"parity.{name}", name=check["check"],
                             time=str(report["candidates"][name].get("seconds", 0)))
        if not check["passed"]:
            tag = "error" if check["check"] == "loads_and_runs" else "failure"
            element = ET.SubElement(case, tag, message=check["message"], type=check["check"])
            element.text = check["message"]
        else:
            ET.SubElement(case, "system-out").text = check["message"]
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def errors_png(report: dict, destination: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, maxima, means, p99 = [], [], [], []
    for name, result in report["candidates"].items():
        stats = result.get("eval", {})
        if "mean_abs_diff" not in stats:
            continue
        names.append(name)
        maxima.append(max(stats["max_abs_diff"], 1e-12))
        means.append(max(stats["mean_abs_diff"], 1e-12))
        p99.append(max(stats["p99_abs_diff"], 1e-12))
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4))
    positions = np.arange(len(names))
    axis.bar(positions - 0.27, means, width=0.27, label="mean |diff|")
    axis.bar(positions, p99, width=0.27, label="p99 |diff|")
    axis.bar(positions + 0.27, maxima, width=0.27, label="max |diff|")
    floor = report["reference"]["noise_floor"]["max_abs_diff"]
    if floor > 0:
        axis.axhline(floor, color="grey", linestyle="--", label="Keras noise floor")
    axis.set_yscale("log")
    axis.set_xticks(positions, names, rotation=30, ha="right")
    axis.set(ylabel="absolute difference vs Keras (0 drawn at 1e-12)",
             title="parity: error distribution per candidate (eval slice)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(destination, dpi=110)
    plt.close(figure)
