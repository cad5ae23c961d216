"""The int8 recipes export recorded for the full-integer variants, beside the gate's verdicts (report section).

Export (`export/int8_recipe.py`) writes per variant the recipe it used, how it was chosen (`auto` / `full` /
file), every rung tried with its tuning figures and the seconds spent; here that record becomes report.json's
`int8_recipes` and report.md's "int8 recipes" section (report.html shows it as its own section).
"""

from __future__ import annotations

from kerasport.manifest import Manifest
from kerasport.verdict import Verdict

from .results import CandidateResult, ParityReport, RecipeEntry

RECIPE_KEY = "int8_recipe"


def recipe_section(manifest: Manifest, results: dict[str, CandidateResult]) -> dict[str, RecipeEntry]:
    """Per int8 variant with a recorded recipe: the recipe, its outcome, the rungs, the seconds and the verdict."""
    section = {}
    for name in results:
        if not manifest.has(name):
            continue
        record = manifest.artifact(name).get(RECIPE_KEY)
        if not isinstance(record, dict):
            continue
        section[name] = RecipeEntry(mode=record.get("mode"), summary=record.get("summary"), file=record.get("file"),
                                    outcome=record.get("outcome", "applied as given"), rungs=record.get("rungs", []),
                                    search_seconds=record.get("search_seconds"), cost=record.get("cost"),
                                    tuning=(record.get("tuning") or {}).get("source"), verdict=results[name].verdict)
    return section


def _figures(figures: dict | None) -> str:
    if not figures:
        return "–"
    if "error" in figures:
        return f"error: {figures['error']}"
    parts = []
    if "decisive_agreement" in figures:
        parts.append(f"agreement {figures['decisive_agreement']:.4f}")
    if "accuracy_delta" in figures:
        parts.append(f"accuracy Δ {figures['accuracy_delta'] * 100:+.2f} pp")
    if "mae_relative_increase" in figures:
        parts.append(f"MAE {figures['mae_relative_increase'] * 100:+.2f} %")
    if figures.get("tflm"):
        parts.append(f"TFLM {Verdict.of_checks([bool(figures['tflm'].get('passed'))])}")
    return ", ".join(parts) + (" ✅" if figures.get("passed") else " ❌")


def rung_line(variant: str, rung: dict) -> str:
    """One rung of an int8 recipe search: its recipe, figures, candidates judged and why it was rejected."""
    name = f"{variant} rung {rung.get('rung')}"
    if "not_tried" in rung:
        return f"- {name}: not tried — {rung['not_tried']}"
    text = f"- {name}: {rung.get('recipe', '')} {_figures(rung.get('figures'))}".rstrip()
    if rung.get("trials"):
        text += f" ({len(rung['trials'])} candidates judged"
        text += f"; ranking {', '.join(rung['ranking'])})" if rung.get("ranking") else ")"
    if rung.get("rejected"):
        text += f" — rejected: {rung['rejected']}"
    if rung.get("seconds") is not None:
        text += f", {rung['seconds']:.1f} s"
    return text


def recipes_markdown(report: ParityReport) -> list[str]:
    section = report.int8_recipes
    if not section:
        return []
    lines = ["## int8 recipes", "", "| variant | recipe | chosen by | search s | cost | gate |",
             "|---|---|---|---|---|---|"]
    for name, entry in section.items():
        cost = entry.cost or {}
        cost_text = (f"{cost['bytes'] / max(cost['bytes_full'], 1):.2f}× size, "
                     f"{cost['batch1_ms']:.2f} vs {cost['batch1_ms_full']:.2f} ms batch 1" if cost else "–")
        seconds = f"{entry.search_seconds:.1f}" if entry.search_seconds is not None else "–"
        lines.append(f"| {name} | {entry.summary} | {entry.mode} | {seconds} | {cost_text} | "
                     f"{entry.verdict or '–'} |")
    lines.append("")
    for name, entry in section.items():
        lines.append(f"- **{name}**: {entry.outcome}" + (f" (tuning: {entry.tuning})" if entry.tuning else ""))
        lines += [rung_line(name, rung) for rung in entry.rungs]
    return lines + [""]
