"""`kerasport parity --explain`: where a candidate starts to differ from Keras, layer by layer.

On a few inputs (the first EXPLAIN_EVAL eval examples and the first EXPLAIN_EDGE edge patterns) every layer of the
Keras model is compared with its counterpart in each ONNX / TFLite candidate (`match.py` says which tensor
that is). Per layer: max / mean |diff|, the relative error (max |diff| over the layer's largest |value|; the
probabilities of an output layer are compared as they are), the growth factor (relative error over the previous
compared layer's) and the local error (the Keras layer run in float on the candidate's own inputs to it, against
the candidate's output: what the layer adds by itself). A layer is within the candidate's tolerance when its
values, divided by the layer's scale, pass the gate's own bound (`tolerances.allowed_difference`) with the noise
floor measured at that layer (Keras batch-order noise, or the fp16-weight twin's error for fp16). The first layer
that is not is named in the report and on the console. int8 values are not bounded by the gate: their layers are
ranked by local error instead, and `--explain` re-quantizes with the fixes for the costliest (`int8.py`).

Runs for every ONNX/TFLite candidate with `--explain`, and for a candidate that fails the gate without it. It never
changes the gate's verdicts; when it cannot run, the report says why.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasport.contract import ModelContract
from kerasport.layer_scopes import ScopeIndex
from kerasport.manifest import Artifact, Manifest
from kerasport.tolerances import PRECISION_CLASS, Tolerance, TolerancePolicy, bound_excess

from ..results import ExplainCandidate, ExplainSection, FirstDivergence, ParityReport
from .graph import ExplainUnavailable, KerasGraph, batch_order_noise, fp16_twin
from .match import COMPARED, Match, match_layers
from .runtime import ONNX_SETTINGS, TFLITE_SETTINGS, onnx_tensors, tflite_tensors

EXPLAIN_EVAL = 8
EXPLAIN_EDGE = 4
EXPLAINED_FORMATS = ("onnx", "tflite")
PLOT_FILE = "layers.png"
RANKED_INT8_LAYERS = 5
MAX_INJECTED = 48  # layers whose cost is measured by injecting their error (the noisiest by noise-to-signal)
SCALE_FLOOR = 1e-12


@dataclass
class ExplainContext:
    """What every candidate's explanation shares: the Keras graph, its values and noise on the explain inputs."""

    graph: KerasGraph
    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    noise: dict[str, dict[str, float]]  # noise source -> node name -> max |diff|
    description: dict


def explain_inputs(eval_inputs: Mapping[str, np.ndarray], edge_inputs: Mapping[str, np.ndarray],
                   edge_kinds: Mapping[str, list[str]]) -> tuple[dict[str, np.ndarray], dict]:
    """The first EXPLAIN_EVAL eval examples plus the first EXPLAIN_EDGE edge patterns (when shapes allow)."""
    head = {name: np.asarray(array[:EXPLAIN_EVAL]) for name, array in eval_inputs.items()}
    edges = {name: np.asarray(array[:EXPLAIN_EDGE]) for name, array in edge_inputs.items()}
    if all(edges[name].shape[1:] == head[name].shape[1:] for name in head):
        kinds = sorted({kind for name in edge_kinds for kind in edge_kinds[name][:EXPLAIN_EDGE]})
        inputs = {name: np.concatenate([head[name], edges[name].astype(head[name].dtype)]) for name in head}
        return inputs, {"eval_examples": len(next(iter(head.values()))), "edge_examples": EXPLAIN_EDGE,
                        "edge_kinds": kinds}
    return head, {"eval_examples": len(next(iter(head.values()))), "edge_examples": 0}


def prepare(model, contract: ModelContract, inputs: dict[str, np.ndarray], description: dict,
            *, fp16: bool) -> ExplainContext:
    """Trace the Keras graph and measure every layer's values and noise floors on the explain inputs.

    Raises:
        ExplainUnavailable: the model is not functional (its layers' outputs cannot be read one by one).
    """
    graph = KerasGraph(model, contract, inputs)
    reference = graph.values(inputs)
    noise = {"batch_order": batch_order_noise(graph, inputs, reference)}
    # Per layer, the fp32 bound's float32-error source falls back to the batch-order noise (no float64 graph here).
    noise["float32_error"] = noise["batch_order"]
    if fp16:
        try:
            twin = KerasGraph(fp16_twin(model), contract, inputs).values(inputs)
        except Exception as error:  # noqa: BLE001 - a model Keras cannot clone: the fp16 bound falls back to atol
            description["fp16_noise"] = f"not measured ({type(error).__name__}: {error})"
        else:
            noise["fp16_weights"] = {name: float(np.max(np.abs(twin[name].astype(np.float64) - value)))
                                     if name in twin and twin[name].shape == value.shape and value.size else 0.0
                                     for name, value in reference.items()}
    return ExplainContext(graph, inputs, reference, noise, description)


def candidate_tensors(run_dir: Path, artifact: Artifact, context: ExplainContext, index: ScopeIndex):
    path = artifact.resolve(run_dir)
    reader = onnx_tensors if artifact.format == "onnx" else tflite_tensors
    return reader(path, context.inputs, context.graph.contract, index.names_a_layer)


def explain_candidate(run_dir: Path, artifact: Artifact, context: ExplainContext,
                      tolerance: Tolerance) -> tuple[ExplainCandidate, ScopeIndex]:
    """The per-layer table of one candidate, its first layer beyond tolerance (or int8 ranking), and its scopes."""
    started = time.perf_counter()
    index = ScopeIndex(context.graph.nodes, getattr(context.graph.model, "name", ""))
    tensors = candidate_tensors(run_dir, artifact, context, index)
    index.calibrate([tensor.scopes for tensor in tensors])
    matches = match_layers(context.graph, index, tensors, context.reference)
    substitutes = {match.node.name: match.aligned for match in matches if match.status == COMPARED}
    local = context.graph.local_values(context.inputs, substitutes)
    rows = _rows(matches, context, tolerance, local)
    bounded = tolerance.atol is not None
    result = ExplainCandidate(
        precision=artifact.precision, format=artifact.format, runtime=artifact.runtime,
        settings=ONNX_SETTINGS if artifact.format == "onnx" else TFLITE_SETTINGS,
        tolerance="bounded" if bounded else "int8: values not bounded by the gate (agreement only)",
        layers=rows, compared=sum(1 for row in rows if row["status"] == COMPARED),
        first_divergent=_first_divergent(rows) if bounded else None)
    if PRECISION_CLASS.get(artifact.precision) == "int8":
        result.costliest = rank_int8_layers(context, matches, local, rows)
    result.seconds = round(time.perf_counter() - started, 3)
    return result, index


def _scale(node, value: np.ndarray, contract: ModelContract) -> float:
    if node.output and contract.output(node.output).kind == "probabilities":
        return 1.0
    largest = float(np.max(np.abs(value))) if value.size else 0.0
    return largest if largest > SCALE_FLOOR else 1.0


def _rows(matches: list[Match], context: ExplainContext, tolerance: Tolerance,
          local: dict[str, np.ndarray]) -> list[dict]:
    contract = context.graph.contract
    noise = context.noise.get(tolerance.noise_source, {})
    rows, previous = [], None
    for match in matches:
        node = match.node
        row = {"layer": node.name, "type": node.kind, "depth": node.index, "status": match.status,
               "note": match.note}
        if match.fused_into:
            row["fused_into"] = match.fused_into
        if match.status != COMPARED:
            rows.append(row)
            continue
        expected = context.reference[node.name].astype(np.float64)
        received = match.aligned.astype(np.float64)
        scale = _scale(node, expected, contract)
        difference = np.abs(received - expected)
        relative = float(difference.max() / scale) if difference.size else 0.0
        row.update(tensor=match.tensor.name, layout=match.layout, scale=scale,
                   max_abs=float(difference.max()), mean_abs=float(difference.mean()), relative=relative,
                   mean_relative=float(difference.mean() / scale),
                   growth=(relative / previous) if previous else None)
        own = local.get(node.name)
        if own is not None and own.shape == received.shape:
            local_difference = np.abs(received - own.astype(np.float64))
            row.update(local_relative=float(local_difference.max() / scale),
                       local_mean_relative=float(local_difference.mean() / scale),
                       local_noise_ratio=_channel_noise_ratio(received, own.astype(np.float64)))
        kind = contract.output(node.output).kind if node.output else "values"
        layer_noise = noise.get(node.name, 0.0) / scale
        if tolerance.atol is not None:
            row["allowed"] = max(tolerance.atol, tolerance.noise_multiple * layer_noise)
            row["within"] = bool(bound_excess(tolerance, expected / scale, received / scale, layer_noise, kind) <= 0)
        previous = relative if relative > 0 else previous
        rows.append(row)
    return rows


def _first_divergent(rows: list[dict]) -> FirstDivergence | None:
    before = None
    for row in rows:
        if row["status"] != COMPARED:
            continue
        if not row["within"]:
            growth = f", ×{row['growth']:.3g} the error of {before}" if row.get("growth") and before else ""
            return FirstDivergence(row["layer"], row["type"], row["depth"], row["relative"], row["allowed"],
                                   row.get("growth"), before,
                                   f"{row['layer']} ({row['type']}, depth {row['depth']}): relative error "
                                   f"{row['relative']:.3g} (allowed {row['allowed']:.3g}){growth}")
        before = row["layer"]
    return None


def _channel_noise_ratio(received: np.ndarray, own: np.ndarray) -> float:
    """Mean over channels (last axis) of rms(candidate - float) / rms(float): the layer's own noise-to-signal."""
    difference = (received - own).reshape(-1, received.shape[-1]) if received.ndim > 1 else (received - own)[:, None]
    signal = own.reshape(difference.shape)
    floor = max(float(np.sqrt(np.mean(signal ** 2))) * 1e-3, SCALE_FLOOR)
    ratios = np.sqrt(np.mean(difference ** 2, axis=0)) / np.maximum(np.sqrt(np.mean(signal ** 2, axis=0)), floor)
    return float(ratios.mean()) if ratios.size else 0.0


def rank_int8_layers(context: ExplainContext, matches: list[Match], local: dict[str, np.ndarray],
                     rows: list[dict], top: int = RANKED_INT8_LAYERS) -> list[dict]:
    """Layers by what their own error costs at the outputs, the costliest first.

    Each compared layer's own error (candidate minus the Keras layer on the candidate's inputs: its local error) is
    added to that layer's output in the float Keras model, on the eval examples; the outputs then move by some
    amount and some top-1 decisions flip. That is the layer's cost: its error alone, everything else exact. At most
    MAX_INJECTED layers (by their channel noise-to-signal ratio) are measured.
    """
    graph, count = context.graph, context.description["eval_examples"]
    inputs = {name: array[:count] for name, array in context.inputs.items()}
    base = graph.outputs_with_error(inputs, "", np.zeros(0))
    by_name = {row["layer"]: row for row in rows}
    measured = [m for m in matches if m.status == COMPARED and m.node.name in local
                and local[m.node.name].shape == m.aligned.shape]
    measured.sort(key=lambda m: by_name[m.node.name].get("local_noise_ratio", 0.0), reverse=True)
    ranked = []
    for match in measured[:MAX_INJECTED]:
        error = (match.aligned.astype(np.float64) - local[match.node.name])[:count]
        moved = graph.outputs_with_error(inputs, match.node.name, error)
        change, flips = _output_change(graph.contract, base, moved)
        row = by_name[match.node.name]
        ranked.append({"layer": row["layer"], "type": row["type"], "depth": row["depth"], "flips": flips,
                       "output_change": change, "local_noise_ratio": row.get("local_noise_ratio"),
                       "relative": row["relative"]})
    ranked.sort(key=lambda item: (item["flips"], item["output_change"]), reverse=True)
    return ranked[:top]


def _output_change(contract: ModelContract, base: list[np.ndarray], moved: list[np.ndarray]) -> tuple[float, int]:
    """Mean |output change| (over the output's scale, averaged over outputs) and top-1 flips of classification."""
    from kerasport.compare import class_scores

    changes, flips = [], 0
    for spec, before, after in zip(contract.output_specs(), base, moved, strict=False):
        before, after = before.astype(np.float64), after.astype(np.float64)
        scale = 1.0 if spec.kind == "probabilities" else max(float(np.max(np.abs(before))), SCALE_FLOOR)
        changes.append(float(np.mean(np.abs(after - before))) / scale)
        if spec.is_classification:
            flips += int((class_scores(before, spec.kind).argmax(1) != class_scores(after, spec.kind).argmax(1)).sum())
    return (float(np.mean(changes)) if changes else 0.0), flips


def explain_candidates(run_dir: Path, manifest: Manifest, model, policy: TolerancePolicy, eval_inputs: dict,
                       edges, artifacts: list[Artifact], *, fixes=None,
                       console=None) -> tuple[ExplainSection, dict]:
    """The `explain` section of report.json and the files it adds (the per-layer plot).

    Args:
        run_dir: the bundle.
        manifest: its manifest (contract, artifacts).
        model: the loaded Keras reference model.
        policy: the tolerances the gate used.
        eval_inputs: the eval inputs by name; edges: the GeneratedInputs of the gate.
        artifacts: the candidates to explain (other formats than ONNX/TFLite are listed as skipped).
        fixes: None, or `fixes(artifact, result, scope_index) -> dict` trying int8 fixes (`explain_int8.Int8Fixer`).
        console: a rich console for one line per candidate, or None.

    Returns:
        (section, files): the report section, and {file name: bytes} to write beside report.json.
    """
    started = time.perf_counter()
    contract = manifest.contract
    inputs, description = explain_inputs(eval_inputs, edges.inputs, edges.kinds)
    section = ExplainSection(inputs=description, candidates={}, skipped={})
    explainable = [a for a in artifacts if a.format in EXPLAINED_FORMATS]
    for artifact in artifacts:
        if artifact.format not in EXPLAINED_FORMATS:
            section.skipped[artifact.name] = f"{artifact.format}: per-layer comparison covers ONNX and TFLite"
    if not explainable:
        return section, {}
    fp16 = any(policy.for_precision(a.precision).noise_source == "fp16_weights" for a in explainable)
    try:
        context = prepare(model, contract, inputs, description, fp16=fp16)
    except ExplainUnavailable as error:
        section.unavailable = str(error)
        return section, {}
    for artifact in explainable:
        try:
            result, index = explain_candidate(run_dir, artifact, context, policy.for_precision(artifact.precision))
        except Exception as error:  # noqa: BLE001 - an explanation that fails must not hide the gate's verdict
            section.candidates[artifact.name] = ExplainCandidate(error=f"{type(error).__name__}: {error}")
            continue
        if fixes is not None and result.costliest:
            result.fixes = fixes(artifact, result, index)
        section.candidates[artifact.name] = result
        if console is not None:
            console.print(explain_line(artifact.name, result))
    section.seconds = round(time.perf_counter() - started, 2)
    files = {}
    if any(result.error is None for result in section.candidates.values()):
        files[PLOT_FILE] = layers_png(section, [node.name for node in context.graph.nodes])
        section.plot = PLOT_FILE
    return section, files


def explain_line(name: str, result: ExplainCandidate) -> str:
    """One console line per explained candidate."""
    if result.error is not None:
        return f"explain {name:<15} could not run: {result.error}"
    if result.costliest:
        top = ", ".join(f"{row['layer']} ({row['flips']} flips, Δ {row['output_change']:.2g})"
                        for row in result.costliest[:3])
        line = f"explain {name:<15} costliest int8 layers (own error alone at the outputs): {top}"
        fixes = (result.fixes or {}).get("best")
        return line + (f"; best fix: {fixes}" if fixes else "")
    first = result.first_divergent
    if first:
        return f"explain {name:<15} first layer beyond tolerance: {first.message}"
    return (f"explain {name:<15} every compared layer within tolerance ({result.compared} of "
            f"{len(result.layers)} layers compared)")


def layers_png(section: ExplainSection, layer_names: list[str]) -> bytes:
    """Relative error by depth for every explained candidate on one figure (log scale), first divergence marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(7.0, min(18.0, 0.35 * len(layer_names) + 4)), 4.5))
    for name, result in section.candidates.items():
        rows = [row for row in result.layers if row["status"] == COMPARED]
        if not rows:
            continue
        depths = [row["depth"] for row in rows]
        errors = [max(row["relative"], SCALE_FLOOR) for row in rows]
        (line,) = axis.plot(depths, errors, marker="o", markersize=3, label=name)
        first = result.first_divergent
        if first:
            axis.scatter([first.depth], [max(first.relative, SCALE_FLOOR)], marker="X", s=120,
                         color=line.get_color(), edgecolors="black", zorder=4)
    step = max(1, len(layer_names) // 40)
    axis.set_xticks(range(0, len(layer_names), step), layer_names[::step], rotation=60, ha="right", fontsize=7)
    axis.set_yscale("log")
    axis.set(ylabel=f"relative error (max |diff| / layer scale; 0 drawn at {SCALE_FLOOR:g})",
             title="explain: error by layer depth (X: first layer beyond tolerance)")
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _number(value, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec)


def explain_markdown(report: ParityReport) -> list[str]:
    """report.md's explain section: per candidate, the first layer beyond tolerance, the table, int8 fixes."""
    section = report.explain
    if not section:
        return []
    inputs = section.inputs or {}
    lines = [f"## Explain: layer by layer ({section.trigger or '--explain'})", ""]
    if section.unavailable:
        return lines + [f"Not available: {section.unavailable}.", ""]
    lines += [f"Inputs: the first {inputs.get('eval_examples', 0)} eval examples and {inputs.get('edge_examples', 0)} "
              f"edge patterns ({', '.join(inputs.get('edge_kinds', [])) or 'none'}). Relative error = max |diff| / "
              f"the layer's largest |value|; growth = relative error / the previous compared layer's; local = the "
              f"error the layer adds by itself (the Keras layer run on the candidate's own inputs).", ""]
    if section.plot:
        lines += [f"![error by layer depth]({section.plot})", ""]
    for name, skipped in (section.skipped or {}).items():
        lines.append(f"- {name}: not explained ({skipped})")
    for name, result in section.candidates.items():
        lines += _candidate_markdown(name, result)
    return lines


def _candidate_markdown(name: str, result: ExplainCandidate) -> list[str]:
    if result.error is not None:
        return [f"### `{name}`", "", f"Could not explain: {result.error}", ""]
    lines = [f"### `{name}` ({result.precision}, {result.settings})", ""]
    first = result.first_divergent
    if first:
        lines.append(f"**First layer beyond tolerance: {first.message}.**")
    elif result.costliest:
        lines.append("**int8: values are not bounded by the gate; costliest layers below.**")
    else:
        lines.append(f"Every compared layer within tolerance ({result.compared} of {len(result.layers)} "
                     f"compared).")
    lines += ["", "| depth | layer | type | counterpart | layout | max abs diff | mean abs diff | relative | growth | "
                  "local | within |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result.layers:
        if row["status"] != COMPARED:
            lines.append(f"| {row['depth']} | {row['layer']} | {row['type']} | {row['status']}: {row['note']} | "
                         + " | ".join(["–"] * 7) + " |")
            continue
        within = {True: "yes", False: "**no**", None: "–"}[row.get("within")]
        lines.append(f"| {row['depth']} | {row['layer']} | {row['type']} | `{_short(row['tensor'])}` | "
                     f"{row['layout']} | {row['max_abs']:.2e} | {row['mean_abs']:.2e} | {row['relative']:.2e} | "
                     f"{_number(row.get('growth'))} | {_number(row.get('local_relative'), '.2e')} | {within} |")
    lines.append("")
    if result.costliest:
        lines += ["Costliest int8 layers (each layer's own error alone, injected into the float model, eval "
                  "examples):", "", "| layer | type | top-1 flips | mean output change | noise/signal |",
                  "|---|---|---|---|---|"]
        lines += [f"| {row['layer']} | {row['type']} | {row['flips']} | {row['output_change']:.3g} | "
                  f"{_number(row.get('local_noise_ratio'))} |" for row in result.costliest]
        lines.append("")
    return lines + _fixes_markdown(result.fixes)


def _short(name: str, limit: int = 60) -> str:
    return name if len(name) <= limit else "…" + name[-limit:]


def _fixes_markdown(fixes: dict | None) -> list[str]:
    if not fixes:
        return []
    if "trials" not in fixes:
        return [f"Fixes not tried: {fixes.get('skipped') or fixes.get('error')}", ""]
    lines = ["Fixes tried (re-quantized in a temporary directory; the bundle is unchanged):", "",
             "| fix | agreement | accuracy Δ | max abs diff | seconds |", "|---|---|---|---|---|"]
    rows = [{"fix": "shipped artifact", **fixes["shipped"]}, fixes["control"], *fixes["trials"]]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['fix']} | failed: {row['error']} | | | |")
            continue
        delta = row.get("accuracy_delta")
        lines.append(f"| {row['fix']} | {_number(row.get('agreement'), '.4f')} | "
                     f"{'–' if delta is None else f'{delta * 100:+.2f} pp'} | {row['max_abs_diff']:.3g} | "
                     f"{_number(row.get('seconds'))} |")
    lines += ["", f"Best: {fixes['best']}." if fixes.get("best") else "None of the fixes improved on the control."]
    lines += [f"Not tried: {reason}." for reason in fixes.get("not_tried", [])]
    return lines + [""]


def explain_summary(report: ParityReport) -> list[str]:
    """Console summary lines: the first layer beyond tolerance, or the costliest int8 layer and best fix."""
    section = report.explain
    if section is None:
        return []
    lines = [f"  explain: {section.unavailable}"] if section.unavailable else []
    for name, result in section.candidates.items():
        if result.first_divergent:
            lines.append(f"  explain {name}: first layer beyond tolerance: {result.first_divergent.message}")
        elif result.costliest:
            top = result.costliest[0]
            best = (result.fixes or {}).get("best")
            lines.append(f"  explain {name}: costliest int8 layer {top['layer']} ({top['flips']} flips alone)"
                         + (f"; best fix: {best}" if best else ""))
    return lines
