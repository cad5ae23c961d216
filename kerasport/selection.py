"""Which artifact to deploy: the one selection policy every stage asks (parity's recommendation, serve, predict,
package).

A recommendation per target, from the parity verdicts and the measured `performance` block (`perf.py`):

- `server_cpu`: the lowest batch-1 p50 among the candidates that passed the gate (with `max_accuracy_drop`, only
  those whose accuracy is within that of the reference's);
- `mobile_edge`: the smallest LiteRT (`tflite`) artifact that passed;
- `microcontroller`: `tflm` when it passed and fits a listed device, or the flash/RAM budgets the gate was given.

For the first two, a candidate whose answers leave its tolerance under another runtime setting of parity's sweep
(XNNPACK off, another thread count or ORT optimization level) is left out while a steady one remains: the gate
judges the default settings, but a device whose LiteRT runs the built-in kernels is not hypothetical (measured: the
seed bundle's tflite-dynamic, the smallest, answers at chance level in LiteRT's built-in hybrid kernels, 9.5 % top-1
agreement, while tflite-int8 of the same size holds). The choice's reason names what was left out and why.

A consumer that runs only some formats (Triton: ONNX) asks `choose` for its formats: the server recommendation
when it can run it, else the lowest measured p50 among what it can run. A bundle without a `performance` block
falls back to FALLBACK_ORDER (a fixed order from one machine) and every choice says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError
from .manifest import Artifact, Manifest

# Fastest first, from bench/export.py on the `seed` arch (batch-1 latency per image, 2 cores):
# tflite-int8 0.15 ms, tflite-dynamic 0.18, onnx-int8 0.27, tflite-fp32 0.95, tflite-fp16 1.0, onnx-fp32 1.1.
# Used only for bundles without measured performance; servable artifacts of other names come after these.
FALLBACK_ORDER = ("tflite-int8", "tflite-dynamic", "onnx-int8", "tflite-fp32", "tflite-fp16", "onnx-fp32")
SERVABLE_FORMATS = ("onnx", "tflite")
TFLM_FORMAT = "c-array"
AUTO = "auto"
TARGETS = ("server_cpu", "mobile_edge", "microcontroller")
MEASURE_HINT = "run `kerasport bench --run DIR` (or `kerasport parity`) to measure"


@dataclass(frozen=True)
class Choice:
    """A chosen artifact and the one-line reason, for the console and the manifest."""

    variant: str
    why: str
    measured: bool  # chosen on measured speed (False: requested by name, or the fixed fallback order)

    def to_dict(self) -> dict:
        return {"variant": self.variant, "why": self.why, "measured": self.measured}


def _p50(manifest: Manifest, name: str) -> float | None:
    figures = (manifest.performance.get("candidates") or {}).get(name) or {}
    return (figures.get("latency_ms") or {}).get("p50") if figures.get("measured") else None


def accuracy_delta(manifest: Manifest, name: str) -> float | None:
    """The candidate's accuracy minus the reference's on the eval sample, as parity recorded it (None: unknown)."""
    figures = (manifest.performance.get("candidates") or {}).get(name) or {}
    return figures.get("accuracy_delta")


def _host(manifest: Manifest) -> str:
    host = manifest.performance.get("host") or {}
    return f"{host.get('cpu_model', 'unknown CPU')}, {host.get('cores', '?')} cores"


def server_choice(manifest: Manifest, names: list[str], max_accuracy_drop: float | None = None) -> Choice | None:
    """The lowest measured batch-1 p50 among `names` (passed candidates); None when none of them was measured."""
    timed = [(p50, name) for name in names if (p50 := _p50(manifest, name)) is not None]
    if max_accuracy_drop is not None:
        timed = [(p50, name) for p50, name in timed
                 if (delta := accuracy_delta(manifest, name)) is not None and -delta <= max_accuracy_drop]
    if not timed:
        return None
    p50, name = min(timed)
    limit = (f" within {max_accuracy_drop * 100:g} pp accuracy of the reference" if max_accuracy_drop is not None
             else "")
    runner_up = sorted(timed)[1:2]
    beyond = f" (next: {runner_up[0][1]} {runner_up[0][0]:.3f} ms)" if runner_up else ""
    return Choice(name, f"lowest batch-1 p50 {p50:.3f} ms among {len(timed)} measured candidates that passed "
                        f"parity{limit}{beyond}, on {_host(manifest)}", True)


def _fits(artifact: Artifact) -> tuple[bool, str]:
    budgets = (artifact.get("budgets") or {}).get("budgets")
    if budgets:
        passed = all(row["passed"] for row in budgets)
        return passed, ("within the --device / --max-*-kib budgets" if passed else "over its budgets")
    fitting = [key for key, fit in (artifact.get("fit") or {}).items() if fit.get("fits")]
    return bool(fitting), (f"fits {', '.join(fitting)}" if fitting else "fits none of the listed devices")


def steady_first(artifacts: list[Artifact]) -> tuple[list[Artifact], str]:
    """The artifacts whose answers held under every runtime setting parity swept, with a note (for a Choice's reason)
    naming those left out; all of them, and a note saying so, when none held."""
    unsteady = {artifact.name: artifact.settings_beyond_tolerance for artifact in artifacts
                if artifact.settings_beyond_tolerance}
    if not unsteady:
        return artifacts, ""
    described = "; ".join(f"{name} with {' / '.join(settings)}" for name, settings in unsteady.items())
    steady = [artifact for artifact in artifacts if artifact.name not in unsteady]
    if steady:
        return steady, f"; left out, answers beyond tolerance under other runtime settings: {described}"
    return artifacts, f"; every candidate leaves its tolerance under some runtime setting: {described}"


def _with_note(choice: Choice | None, note: str) -> Choice | None:
    return Choice(choice.variant, choice.why + note, choice.measured) if choice and note else choice


def recommend(manifest: Manifest, max_accuracy_drop: float | None = None) -> dict:
    """A recommendation per target (TARGETS): {target: {"variant" or None, "why", "measured"}}.

    Args:
        manifest: a bundle whose artifacts carry parity verdicts and, ideally, a `performance` block.
        max_accuracy_drop: for server_cpu, only candidates within this accuracy drop of the reference (0.01 = 1 pp).
    """
    passed = [artifact for artifact in manifest.artifacts() if artifact.passed_parity and artifact.status == "ok"]
    servable, server_note = steady_first([artifact for artifact in passed if artifact.format in SERVABLE_FORMATS])
    server = _with_note(_server_or_fallback(manifest, [artifact.name for artifact in servable], max_accuracy_drop),
                        server_note)
    litert, mobile_note = steady_first([artifact for artifact in passed if artifact.format == "tflite"])
    smallest = min(litert, key=lambda artifact: (artifact.bytes, artifact.name), default=None)
    mobile = _with_note(Choice(smallest.name, f"the smallest LiteRT artifact that passed parity ({smallest.bytes:,} "
                                              f"bytes of {len(litert)})", True) if smallest else None, mobile_note)
    micro = None
    for artifact in passed:
        if artifact.format == TFLM_FORMAT:
            fits, how = _fits(artifact)
            micro = Choice(artifact.name, f"passed parity in TFLite Micro and {how}", True) if fits else None
            micro_missing = None if fits else f"{artifact.name} passed parity but {how}"
            break
    else:
        micro_missing = "no tflm artifact passed parity"
    missing = {"server_cpu": "no ONNX/TFLite artifact passed parity", "mobile_edge": "no LiteRT artifact passed "
               "parity", "microcontroller": micro_missing}
    return {target: (choice.to_dict() if choice else {"variant": None, "why": missing[target], "measured": False})
            for target, choice in zip(TARGETS, (server, mobile, micro), strict=True)}


def _server_or_fallback(manifest: Manifest, names: list[str], max_accuracy_drop: float | None) -> Choice | None:
    server = server_choice(manifest, names, max_accuracy_drop)
    if server is None and names:
        return fallback_choice(names, "no measured speed in the manifest")
    return server


def fallback_choice(names: list[str], reason: str) -> Choice:
    """The first of `names` in FALLBACK_ORDER (others after it, in the given order), saying why no measurement."""
    ordered = [name for name in FALLBACK_ORDER if name in names] + [name for name in names
                                                                      if name not in FALLBACK_ORDER]
    return Choice(ordered[0], f"{reason}: the fixed order {', '.join(FALLBACK_ORDER)} ({MEASURE_HINT})", False)


def choose(manifest: Manifest, *, formats: tuple[str, ...] = SERVABLE_FORMATS, requested: str | None = None,
           allow_unverified: bool = False) -> Choice:
    """The artifact a consumer that runs `formats` should use: the requested one, else the server recommendation.

    Args:
        manifest: the bundle.
        formats: the artifact formats the consumer can run (serve/predict: onnx and tflite; Triton: onnx).
        requested: an artifact name (`--variant`), or None / "auto" for the recommendation.
        allow_unverified: when nothing runnable passed parity, take the first runnable one in FALLBACK_ORDER.

    Returns:
        The Choice: variant, why, and whether it rests on measured speed.

    Raises:
        UsageError: the requested artifact is not runnable here, or nothing is (or nothing passed parity).
    """
    runnable = [artifact.name for artifact in manifest.artifacts()
                if artifact.format in formats and artifact.status == "ok"]
    if requested and requested != AUTO:
        if requested not in runnable:
            state = ""
            if manifest.has(requested) and manifest.artifact(requested).status != "ok":
                state = f" (export recorded it as {manifest.artifact(requested).status})"
            raise UsageError(f"--variant {requested!r} is not a servable artifact of this bundle{state}; expected "
                             f"one of {', '.join(runnable) or '(none: run kerasport export)'} (or {AUTO})")
        return Choice(requested, "requested with --variant", False)
    passed = [name for name in runnable if manifest.artifact(name).passed_parity]
    if passed:
        recorded = manifest.recommendation.get("server_cpu") or {}
        if recorded.get("variant") in passed and recorded.get("measured"):
            return Choice(recorded["variant"], f"the server CPU recommendation: {recorded['why']}", True)
        steady, note = steady_first([manifest.artifact(name) for name in passed])
        names = [artifact.name for artifact in steady]
        measured = server_choice(manifest, names)
        if measured is not None:
            return _with_note(measured, note)
        return _with_note(fallback_choice(names, "no measured speed in the manifest" if not manifest.performance
                                          else f"none of {', '.join(names)} was measured"), note)
    if allow_unverified and runnable:
        return fallback_choice(runnable, "nothing runnable passed parity (--allow-unverified)")
    if not runnable:
        raise UsageError(f"no servable artifact ({'/'.join(formats)}) in this bundle; run `kerasport export`")
    raise UsageError("no artifact of this bundle passed parity; run `kerasport parity`, or pick one with "
                     "--variant and --allow-unverified")
