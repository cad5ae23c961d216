"""Parity reports: JSON for machines, Markdown for pull requests, JUnit XML for CI, a PNG of error spreads."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from kerasport.verdict import Verdict

from .budgets import BUDGET_CLASS, fit_lines, fit_markdown
from .checks import LOAD_CHECK
from .drift import DRIFT_CLASS, drift_markdown, drift_summary
from .explain.layers import explain_markdown, explain_summary
from .formatting import SWEEP_SAMPLE_NOTE, sweep_ran
from .perf_report import recommendation_markdown
from .recipes import recipes_markdown
from .results import CandidateResult, Check, OutputDescription, ParityReport
from .tflm import sampled_markdown

VERDICT_MARKS = {Verdict.PASS: "✅ pass", Verdict.FAIL: "❌ fail", Verdict.ERROR: "💥 error",
                 Verdict.SKIPPED: "⏭ skipped"}


def write_reports(directory: Path, report: ParityReport) -> None:
    """report.json (the records, serialised once), report.md, junit.xml and errors.png into `directory`."""
    (directory / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=_plain) + "\n")
    (directory / "report.md").write_text(markdown(report))
    (directory / "junit.xml").write_text(junit_xml(report))
    errors_png(report, directory / "errors.png")


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def output_verdict(result: CandidateResult, output: str) -> Verdict:
    """A candidate's verdict on one output: its checks of that output and its per-candidate checks."""
    if result.verdict in (Verdict.ERROR, Verdict.SKIPPED):
        return result.verdict
    return Verdict.of_checks([check.passed for check in result.checks if check.output in (output, None)])


def _classification_cells(stats: dict) -> list[str]:
    if "accuracy" in stats:
        low, high = stats["accuracy_delta_ci95"]
        accuracy = (f"{stats['accuracy']:.4f} ({stats['accuracy_delta'] * 100:+.2f}, "
                    f"[{low * 100:+.2f}, {high * 100:+.2f}])")
    else:
        accuracy = "– (no targets)"
    return [f"{stats['top1_agreement']:.4f}", str(stats["label_flips"]), accuracy]


def _regression_cells(stats: dict) -> list[str]:
    if "mae" not in stats:
        return ["– (no targets)"]
    low, high = stats["mae_delta_ci95"]
    return [f"{stats['mae']:.4g} ({stats['mae_delta']:+.3g}, [{low:+.3g}, {high:+.3g}])"]


def _output_table(report: ParityReport, output: str, described: OutputDescription) -> list[str]:
    classification = described.metrics == "classification"
    headers = ["candidate", "precision", "runtime", "max abs diff", "mean abs diff"]
    headers += ["top-1 agreement", "flips", "accuracy (Δ pp, 95 % CI)"] if classification else [
        "MAE (Δ, 95 % CI)"]
    headers.append("verdict")
    lines = [f"## Output `{output}` ({described.kind}: {described.metrics} metrics)", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, result in report.candidates.items():
        stats = result.eval_stats(output)
        cells = [name, result.precision, str(result.runtime)]
        if stats is None:
            cells += ["–"] * (len(headers) - 4)
        else:
            cells += [f"{stats['max_abs_diff']:.2e}", f"{stats['mean_abs_diff']:.2e}"]
            cells += _classification_cells(stats) if classification else _regression_cells(stats)
        cells.append(VERDICT_MARKS[output_verdict(result, output)])
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _sweep_table(report: ParityReport) -> list[str]:
    sweeps = {name: result.sweep for name, result in report.candidates.items() if result.sweep}
    if not sweeps:
        return []
    # Reports written before the sweep sampled its batches have no `ran`: they render as they did.
    sampled = any("ran" in row for rows in sweeps.values() for row in rows)
    lines = ["## Runtime settings sweep (eval inputs, every output)", "",
             "| candidate | settings | max abs diff | top-1 agreement | seconds | within tolerance |"
             + (" ran on |" if sampled else ""), "|---|---|---|---|---|---|" + ("---|" if sampled else "")]
    for name, rows in sweeps.items():
        for row in rows:
            agreement = f"{row['top1_agreement']:.4f}" if "top1_agreement" in row else "–"
            difference = f"{row['max_abs_diff']:.2e}" if row["max_abs_diff"] is not None else row.get("error", "–")
            lines.append(f"| {name} | {row['settings']} | {difference} | {agreement} | "
                         f"{row['seconds']:.3f} | {'yes' if row['within_tolerance'] else '**no**'} |"
                         + (f" {sweep_ran(row)} |" if sampled else ""))
    return lines + ["", SWEEP_SAMPLE_NOTE, ""] if sampled else lines + [""]


def markdown(report: ParityReport) -> str:
    """report.md: the verdict, inputs and noise floor, the recommendation, a table per output, then the sections."""
    inputs, reference = report.inputs, report.reference
    sample, edge = inputs.eval_sample, inputs.edge
    origin = "generated (no eval sample in the bundle)" if sample.generated else f"`{sample.path}`"
    lines = [f"# kerasport parity: {report.verdict.headline}", "",
             f"Reference: {reference.runtime} (`{reference.artifact}`). Inputs: {sample.examples} eval "
             f"examples, {origin} (`{sample.sha256[:12]}…`), plus {edge.examples} edge examples "
             f"per input at batch sizes {', '.join(map(str, edge.batch_sizes))} "
             f"(seed {edge.seed}).", ""]
    lines += [f"> **{note[0].upper() + note[1:]}.**" for note in report.labelled_data.notes]
    if report.labelled_data.notes:
        lines.append("")
    floor = reference.noise_floor
    lines += [f"Reference noise floor ({floor.what}), max |diff| per output: "
              + ", ".join(f"`{name}` {stats['max_abs_diff']:.2e} (edge {stats['edge_max_abs_diff']:.2e})"
                          for name, stats in floor.outputs.items()) + ".", ""]
    lines += recommendation_markdown(report)  # first of the sections: what to deploy, then the evidence
    for output, described in report.outputs.items():
        lines += _output_table(report, output, described)
    if report.not_built:
        lines += ["## Not built (recorded as failed by export)", ""]
        lines += [f"- {name}: {status}" for name, status in report.not_built.items()] + [""]
    if report.failures:
        lines += ["## Failures", ""] + [f"- {failure}" for failure in report.failures] + [""]
    lines += _sweep_table(report)
    lines += recipes_markdown(report)
    lines += fit_markdown(report)
    lines += sampled_markdown(report)
    lines += explain_markdown(report) + drift_markdown(report)
    lines += ["## Findings", ""] + ([f"- {finding}" for finding in report.findings] or ["- none"])
    lines += ["", "## Tolerances", "", "```json", json.dumps(report.tolerances, indent=2), "```", ""]
    return "\n".join(lines)


def summary_lines(report: ParityReport, run_dir: Path | str) -> list[str]:
    """The console summary after a parity run: the verdict, then failures, unbuilt variants and findings."""
    sample = report.inputs.eval_sample
    labelled = "labelled" if report.labelled_data.given else "unlabelled: agreement only, no accuracy"
    lines = [f"parity {report.verdict.headline}: {len(report.candidates)} candidates, "
             f"{len(report.outputs)} outputs, {sample.examples} eval examples ({labelled}), "
             f"{report.seconds:.1f} s; reference {report.reference.artifact}, noise floor "
             f"{report.reference.noise_floor.max_abs_diff:.1e}; reports in {run_dir}/parity/"]
    lines += [f"  FAIL {failure}" for failure in report.failures]
    lines += [f"  not built: {name} ({status})" for name, status in report.not_built.items()]
    lines += [f"  finding: {finding}" for finding in report.findings]
    lines += [f"  recommend {target}: {choice.variant or '–'} ({choice.why})"
              for target, choice in (report.recommendation or {}).items()]
    lines += [f"  sampled: {row.candidate} ran {row.sample['eval_examples']} eval + "
              f"{row.sample['edge_examples']} edge examples in TFLite Micro; the rest from {row.rest_from}"
              for row in report.sampled_checks]
    return lines + fit_lines(report) + explain_summary(report) + drift_summary(report)


def junit_cases(report: ParityReport) -> list[tuple[str, Check]]:
    """(class, check) of every JUnit testcase: each candidate's checks, then the budgets', then the drift policy's."""
    cases = [(name, check) for name, result in report.candidates.items() for check in result.checks]
    cases += [(BUDGET_CLASS, check) for check in (report.budgets.checks if report.budgets else [])]
    cases += [(DRIFT_CLASS, check) for check in (report.drift.checks if report.drift else [])]
    return cases


def junit_xml(report: ParityReport) -> str:
    """One testcase per candidate x check (`<check>[<output>]`); a load/run error is an <error>, the rest <failure>."""
    cases = junit_cases(report)
    skipped = str(sum(1 for _, check in cases if check.skipped))
    failures = sum(1 for _, check in cases if not check.passed and check.check != LOAD_CHECK)
    errors = sum(1 for _, check in cases if not check.passed and check.check == LOAD_CHECK)
    suites = ET.Element("testsuites", name="kerasport parity", tests=str(len(cases)), failures=str(failures),
                        errors=str(errors), skipped=skipped, time=str(report.seconds))
    suite = ET.SubElement(suites, "testsuite", name="parity", tests=str(len(cases)), failures=str(failures),
                          errors=str(errors), skipped=skipped, time=str(report.seconds),
                          timestamp=report.finished)
    for name, check in cases:
        candidate = report.candidates.get(name)
        case = ET.SubElement(suite, "testcase", classname=f"parity.{name}", name=check.id,
                             time=str(candidate.seconds if candidate else 0))
        if check.skipped:
            ET.SubElement(case, "skipped", message=check.message)
        elif not check.passed:
            element = ET.SubElement(case, "error" if check.check == LOAD_CHECK else "failure",
                                    message=check.message, type=check.check)
            element.text = check.message
        else:
            ET.SubElement(case, "system-out").text = check.message
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def errors_png(report: ParityReport, destination: Path) -> None:
    """Mean / p99 / max |diff| on the eval inputs per candidate and output, with the reference's noise floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len(report.outputs) > 1
    names, maxima, means, p99, floors = [], [], [], [], []
    noise = report.reference.noise_floor.outputs
    for name, result in report.candidates.items():
        for output, measured in (result.outputs or {}).items():
            stats = measured.eval
            if stats is None:
                continue
            names.append(f"{name}\n{output}" if several else name)
            maxima.append(max(stats["max_abs_diff"], 1e-12))
            means.append(max(stats["mean_abs_diff"], 1e-12))
            p99.append(max(stats["p99_abs_diff"], 1e-12))
            floors.append(noise[output]["max_abs_diff"])
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4))
    positions = np.arange(len(names))
    axis.bar(positions - 0.27, means, width=0.27, label="mean |diff|")
    axis.bar(positions, p99, width=0.27, label="p99 |diff|")
    axis.bar(positions + 0.27, maxima, width=0.27, label="max |diff|")
    if any(floor > 0 for floor in floors):
        axis.scatter(positions, [max(floor, 1e-12) for floor in floors], marker="_", s=400, color="grey",
                     label="reference noise floor", zorder=3)
    axis.set_yscale("log")
    axis.set_xticks(positions, names, rotation=30, ha="right")
    axis.set(ylabel="absolute difference vs reference (0 drawn at 1e-12)",
             title="parity: error distribution per candidate and output (eval inputs)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(destination, dpi=110)
    plt.close(figure)
