"""The recommendation and measured speed in the reports: report.md's sections, and the geometry of report.html's
inline SVG plot of accuracy Δ against batch-1 latency (point area = file size, the Pareto front marked)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kerasport.perf import best_throughput

from .performance import PlotPoint, plot_points
from .results import ParityReport, ProfileSection

TARGET_LABELS = {"server_cpu": "server CPU", "mobile_edge": "mobile / edge", "microcontroller": "microcontroller"}
PLOT_WIDTH, PLOT_HEIGHT, MARGIN = 640, 360, 56
FRONT_COLOUR, OTHER_COLOUR, RECOMMENDED_COLOUR = "#1a7f37", "#8c959f", "#cf222e"


def recommendation_markdown(report: ParityReport) -> list[str]:
    """report.md's recommendation (first section) and performance table; nothing when neither was made."""
    recommendation = report.recommendation
    if not recommendation:
        return []
    lines = ["## Recommendation", "", "| target | variant | why |", "|---|---|---|"]
    for target, choice in recommendation.items():
        lines.append(f"| {TARGET_LABELS.get(target, target)} | {choice.variant or '–'} | {choice.why} |")
    lines.append("")
    return lines + performance_markdown(report) + profile_markdown(report.profile)


def profile_markdown(profile: ProfileSection | None) -> list[str]:
    """report.md's per-op profile of the server recommendation (nothing when none was taken)."""
    if not profile:
        return []
    lines = [f"## Per-op profile (server recommendation `{profile.variant}`)", ""]
    if profile.error is not None:
        return lines + [f"The profiler failed: {profile.error}.", ""]
    if profile.unavailable is not None:
        lines += [f"Not available for `{profile.variant}`: {profile.unavailable}.", ""]
        profile = profile.onnx_instead
        if not profile:
            return lines
        lines += [f"The fastest ONNX candidate, `{profile.variant}`, instead:", ""]
    lines += [f"{profile.runtime}, {profile.runs} batch-1 runs, {profile.total_us_per_run:.1f} µs of kernel "
              f"time per run. The ten slowest nodes:", "",
              "| node | op | Keras layer | µs per run | share |", "|---|---|---|---|---|"]
    for op in profile.ops:
        lines.append(f"| `{op['node']}` | {op['op_type']} | {op['layer'] or '(added by the converter)'} | "
                     f"{op['us_per_run']:.1f} | {op['share']:.1%} |")
    layers = ", ".join(f"{name} {share:.1%}" for name, share in list(profile.layers.items())[:6])
    return lines + ["", f"By Keras layer (all nodes): {layers}.", ""]


def performance_markdown(report: ParityReport) -> list[str]:
    performance = report.performance
    if not performance:
        return ["## Performance", "", "Not measured in this run (`--no-perf`, or KERASPORT_PERF=0): the "
                "recommendation falls back to a fixed order; `kerasport bench --run DIR` measures.", ""]
    host, settings = performance.host, performance.settings
    versions = ", ".join(f"{name} {version}" for name, version in host["versions"].items() if version)
    lines = ["## Performance", "",
             f"Measured on {host['cpu_model']} ({host['cores']} cores, {host['usable_cores']} usable; "
             f"{host['system']}; "
             f"Python {host['python']}; {versions}) in {performance.seconds} s, each candidate in its own process: "
             f"batch-1 latency over {settings['latency_runs']} warm runs, throughput at batch "
             f"{', '.join(map(str, settings['throughput_batches']))} with 1..n threads.", "",
             "| candidate | p50 ms | p99 ms | load ms | peak RSS MiB (load + 1 answer) | best throughput /s | file MiB "
             "| accuracy Δ pp |", "|---|---|---|---|---|---|---|---|"]
    for name, figures in performance.candidates.items():
        delta = figures.get("accuracy_delta")
        delta_text = "–" if delta is None else f"{delta * 100:+.2f}"
        if not figures.get("measured"):
            lines.append(f"| {name} | – | – | – | – | not measured: {figures['why']} | "
                         f"{figures['file_bytes'] / 2**20:.2f} | {delta_text} |")
            continue
        latency, best = figures["latency_ms"], best_throughput(figures)
        rate = (f"{best['examples_per_second']:,.0f} (batch {best['batch']}, {best['threads']} threads)" if best
                else f"not measured: {figures.get('throughput_why')}")
        lines.append(f"| {name} | {latency['p50']:.3f} | {latency['p99']:.3f} | {figures['load_seconds'] * 1e3:.0f} "
                     f"| {figures['peak_rss_bytes_first_answer'] / 2**20:.0f} | {rate} | "
                     f"{figures['file_bytes'] / 2**20:.2f} | {delta_text} |")
    return lines + [""]


def _scale(values: list[float], low_px: float, high_px: float, log: bool):
    low, high = min(values), max(values)
    if log:
        low, high = math.log10(low), math.log10(high)
    span = (high - low) or 1.0
    pad = span * 0.08

    def position(value: float) -> float:
        value = math.log10(value) if log else value
        return low_px + (value - low + pad) / (span + 2 * pad) * (high_px - low_px)
    return position


@dataclass(frozen=True)
class PlotCircle:
    """A plot point placed on the SVG: centre, radius (area ∝ file size), colour, and whether it is recommended."""

    point: PlotPoint
    cx: float
    cy: float
    r: float
    colour: str
    recommended: bool


def accuracy_latency_plot(report: ParityReport) -> dict | None:
    """The geometry of report.html's accuracy-vs-latency SVG (templates/plot.svg.j2): accuracy Δ (pp) against
    batch-1 p50 (ms), circle area ∝ file size, the Pareto front joined and green, the server recommendation ringed
    red. None without measured candidates."""
    points = plot_points(report)
    if not points:
        return None
    server = (report.recommendation or {}).get("server_cpu")
    recommended = server.variant if server else None
    latencies = [point.p50_ms for point in points]
    log = max(latencies) / max(min(latencies), 1e-9) > 20
    x = _scale(latencies, MARGIN, PLOT_WIDTH - 16, log)
    y = _scale([point.delta_pp for point in points] + [0.0], PLOT_HEIGHT - MARGIN, 16, False)
    largest = max(point.bytes for point in points) or 1
    circles = [PlotCircle(point, round(x(point.p50_ms), 1), round(y(point.delta_pp), 1),
                          round(4 + 14 * math.sqrt(point.bytes / largest), 1),
                          FRONT_COLOUR if point.pareto else OTHER_COLOUR, point.name == recommended)
               for point in points]
    front = sorted((circle for circle in circles if circle.point.pareto), key=lambda circle: circle.point.p50_ms)
    return {"width": PLOT_WIDTH, "height": PLOT_HEIGHT, "margin": MARGIN, "log": log, "zero_y": round(y(0.0), 1),
            "ticks": [{"x": round(x(value), 1), "label": f"{value:.3g}"}
                      for value in sorted({min(latencies), max(latencies)})],
            "front": " ".join(f"{circle.cx},{circle.cy}" for circle in front) if len(front) > 1 else None,
            "circles": circles, "front_colour": FRONT_COLOUR, "recommended_colour": RECOMMENDED_COLOUR}
