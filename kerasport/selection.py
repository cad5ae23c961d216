"""Which artifact to deploy: the one selection policy every stage asks (parity's recommendation, serve, predict,
package).

A recommendation per target, from the parity verdicts and the measured `performance` block (`perf.py`):

- `server_cpu`: the lowest batch-1 p50 among the candidates that passed the gate (with `max_accuracy_drop`, only
  those whose accuracy is within that of the reference's);
- `mobile_edge`: the smallest LiteRT (`tflite`) artifact that passed;
- `microcontroller`: `tflm` when it passed and fits a listed device, or the flash/RAM budgets the gate was given.

For the first two, steady answers come first: among the candidates that qualify (measured and within the accuracy
limit for the server; any that passed for mobile), one whose answers leave its tolerance (or that does not run)
under another runtime setting of parity's sweep is left out while a steady one qualifies. Mobile counts every swept
setting: a device whose LiteRT runs the built-in kernels (no XNNPACK) is common (measured: the seed bundle's
tflite-dynamic, the smallest, answers at chance level in LiteRT's built-in hybrid kernels, 9.5 % top-1 agreement,
while tflite-int8 of nearly the same size holds). The server counts the settings `kerasport serve` can run (the
runtimes' defaults at any thread count). The choice's reason names what was left out and under which setting.

A consumer that runs only some formats (Triton: ONNX) asks `choose` for its formats: the server recommendation
when it can run it, else the lowest measured p50 among what it can run. A bundle without a `performance` block
falls back to FALLBACK_ORDER (a fixed order from one machine) and every choice says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import UsageError
from .manifest import Artifact, Manifest
from .runtimes import RuntimeSettings

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


# The settings `kerasport serve` runs: the runtimes' defaults (ORT optimization all, XNNPACK on), any thread count.
_SERVING_SETTINGS = frozenset(RuntimeSettings().describe(runtime).split(", threads=")[0]
                              for runtime in ("onnxruntime", "ai-edge-litert"))


def _serving_setting(setting: str) -> bool:
    return setting.split(", threads=")[0] in _SERVING_SETTINGS


def _any_setting(setting: str) -> bool:
    return True


def _split_steady(artifacts: list[Artifact], relevant: Callable[[str], bool]
                  ) -> tuple[list[Artifact], dict[str, list[str]]]:
    """The artifacts steady under every relevant swept setting, and {name: the relevant settings its answers left
    the tolerance under, or did not run under} for the others."""
    found = {artifact.name: [setting for setting in artifact.settings_beyond_tolerance if relevant(setting)]
             for artifact in artifacts}
    unsteady = {name: settings for name, settings in found.items() if settings}
    return [artifact for artifact in artifacts if artifact.name not in unsteady], unsteady


def _unsteady_note(unsteady: dict[str, list[str]], lead: str) -> str:
    described = "; ".join(f"{name} with {' / '.join(settings)}" for name, settings in unsteady.items())
    return f"; {lead}, beyond tolerance (or not running) under other runtime settings: {described}"


def steady_first(artifacts: list[Artifact], pick: Callable[[list[Artifact]], Choice | None],
                 relevant: Callable[[str], bool] = _any_setting) -> Choice | None:
    """`pick` among the artifacts whose answers held under every relevant runtime setting parity swept; among all of
    them when it finds nothing there (none steady, or none of the steady ones measured or within the limits), with a
    note naming the unsteady ones and under which settings."""
    steady, unsteady = _split_steady(artifacts, relevant)
    choice = pick(steady) if steady else None
    if choice is not None:
        return _with_note(choice, _unsteady_note(unsteady, "left out") if unsteady else "")
    choice = pick(artifacts)
    return _with_note(choice, _unsteady_note(unsteady, "no steady candidate qualified") if unsteady else "")


def _with_note(choice: Choice | None, note: str) -> Choice | None:
    return Choice(choice.variant, choice.why + note, choice.measured) if choice and note else choice


def _names(artifacts: list[Artifact]) -> list[str]:
    return [artifact.name for artifact in artifacts]


def _smallest_litert(artifacts: list[Artifact]) -> Choice | None:
    smallest = min(artifacts, key=lambda artifact: (artifact.bytes, artifact.name), default=None)
    return (Choice(smallest.name, f"the smallest LiteRT artifact that passed parity ({smallest.bytes:,} bytes of "
                                  f"{len(artifacts)})", True) if smallest else None)


def _unmeasured_fallback(manifest: Manifest, servable: list[Artifact], max_accuracy_drop: float | None = None
                         ) -> Choice:
    """FALLBACK_ORDER among the servable artifacts (the steady ones when there are any) when none has a measured
    speed (within the accuracy limit), saying which of the two."""
    steady = _split_steady(servable, _serving_setting)[0] or servable
    if not manifest.performance:
        reason = "no measured speed in the manifest"
    else:
        limit = (f" within {max_accuracy_drop * 100:g} pp accuracy of the reference" if max_accuracy_drop is not None
                 else "")
        reason = f"none of {', '.join(_names(steady))} was measured{limit}"
    return fallback_choice(_names(steady), reason)


def recommend(manifest: Manifest, max_accuracy_drop: float | None = None) -> dict:
    """A recommendation per target (TARGETS): {target: {"variant" or None, "why", "measured"}}.

    Args:
        manifest: a bundle whose artifacts carry parity verdicts and, ideally, a `performance` block.
        max_accuracy_drop: for server_cpu, only candidates within this accuracy drop of the reference (0.01 = 1 pp).
    """
    passed = [artifact for artifact in manifest.artifacts() if artifact.passed_parity and artifact.status == "ok"]
    servable = [artifact for artifact in passed if artifact.format in SERVABLE_FORMATS]
    server = steady_first(servable, lambda pool: server_choice(manifest, _names(pool), max_accuracy_drop),
                          relevant=_serving_setting)
    if server is None and servable:
        server = _unmeasured_fallback(manifest, servable, max_accuracy_drop)
    mobile = steady_first([artifact for artifact in passed if artifact.format == "tflite"], _smallest_litert)
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
        candidates = [manifest.artifact(name) for name in passed]
        measured = steady_first(candidates, lambda pool: server_choice(manifest, _names(pool)),
                                relevant=_serving_setting)
        if measured is not None:
            return measured
        return _unmeasured_fallback(manifest, candidates)
    if allow_unverified and runnable:
        return fallback_choice(runnable, "nothing runnable passed parity (--allow-unverified)")
    if not runnable:
        raise UsageError(f"no servable artifact ({'/'.join(formats)}) in this bundle; run `kerasport export`")
    raise UsageError("no artifact of this bundle passed parity; run `kerasport parity`, or pick one with "
                     "--variant and --allow-unverified")
