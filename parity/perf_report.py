"""The recommendation and measured speed in the reports: report.md's sections and report.html's inline SVG plot of
accuracy Δ against batch-1 latency (point area = file size, the Pareto front marked)."""

from __future__ import annotations

import html
import math

from kerasport.perf import best_throughput

from .performance import plot_points
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


def accuracy_latency_svg(report: ParityReport) -> str | None:
    """An inline SVG: accuracy Δ (pp) against batch-1 p50 (ms), circle area ∝ file size, Pareto front joined and
    green, the server recommendation ringed red. None without measured candidates."""
    points = plot_points(report)
    if not points:
        return None
    server = (report.recommendation or {}).get("server_cpu")
    recommended = server.variant if server else None
    latencies = [point["p50_ms"] for point in points]
    log = max(latencies) / max(min(latencies), 1e-9) > 20
    x = _scale(latencies, MARGIN, PLOT_WIDTH - 16, log)
    y = _scale([point["delta_pp"] for point in points] + [0.0], PLOT_HEIGHT - MARGIN, 16, False)
    largest = max(point["bytes"] for point in points) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {PLOT_WIDTH} {PLOT_HEIGHT}" role="img" '
             f'aria-label="accuracy delta against batch-1 latency" style="max-width:100%;height:auto" '
             f'font-family="system-ui,sans-serif" font-size="11">',
             f'<rect x="{MARGIN}" y="16" width="{PLOT_WIDTH - MARGIN - 16}" height="{PLOT_HEIGHT - MARGIN - 16}" '
             f'fill="none" stroke="#d0d7de"/>',
             f'<line x1="{MARGIN}" x2="{PLOT_WIDTH - 16}" y1="{y(0.0):.1f}" y2="{y(0.0):.1f}" stroke="#d0d7de" '
             f'stroke-dasharray="4 3"/>',
             f'<text x="{(PLOT_WIDTH + MARGIN) / 2:.0f}" y="{PLOT_HEIGHT - 12}" text-anchor="middle">batch-1 latency '
             f'p50, ms{" (log scale)" if log else ""}</text>',
             f'<text x="14" y="{(PLOT_HEIGHT - MARGIN) / 2:.0f}" text-anchor="middle" transform="rotate(-90 14 '
             f'{(PLOT_HEIGHT - MARGIN) / 2:.0f})">accuracy Δ vs reference, pp</text>']
    for value in sorted({min(latencies), max(latencies)}):
        parts.append(f'<text x="{x(value):.1f}" y="{PLOT_HEIGHT - MARGIN + 14}" text-anchor="middle">'
                     f'{value:.3g}</text>')
    front = sorted((point for point in points if point["pareto"]), key=lambda point: point["p50_ms"])
    if len(front) > 1:
        path = " ".join(f"{x(point['p50_ms']):.1f},{y(point['delta_pp']):.1f}" for point in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{FRONT_COLOUR}" stroke-width="1.5"/>')
    for point in points:
        radius = 4 + 14 * math.sqrt(point["bytes"] / largest)
        colour = FRONT_COLOUR if point["pareto"] else OTHER_COLOUR
        cx, cy = x(point["p50_ms"]), y(point["delta_pp"])
        parts.append(f'<circle class="{"pareto" if point["pareto"] else "point"}" cx="{cx:.1f}" cy="{cy:.1f}" '
                     f'r="{radius:.1f}" fill="{colour}" fill-opacity="0.45" stroke="{colour}"><title>'
                     f'{html.escape(point["name"])}: {point["p50_ms"]:.3f} ms, {point["delta_pp"]:+.2f} pp, '
                     f'{point["bytes"]:,} bytes</title></circle>')
        if point["name"] == recommended:
            parts.append(f'<circle class="recommended" cx="{cx:.1f}" cy="{cy:.1f}" r="{radius + 4:.1f}" '
                         f'fill="none" stroke="{RECOMMENDED_COLOUR}" stroke-width="2"/>')
        parts.append(f'<text x="{cx + radius + 3:.1f}" y="{cy - 3:.1f}">{html.escape(point["name"])}</text>')
    parts.append("</svg>")
    legend = (f'<p class="muted">Circle area ∝ file size; <span style="color:{FRONT_COLOUR}">green, joined: the '
              f'Pareto front</span> (no other candidate is both faster and more accurate); '
              f'<span style="color:{RECOMMENDED_COLOUR}">ringed: the server CPU recommendation</span>.</p>')
    return "".join(parts) + legend
