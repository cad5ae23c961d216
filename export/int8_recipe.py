"""int8 recipes for the full-integer variants (onnx-int8, tflite-int8 and, through it, tflm): apply, search, record.

`--int8-recipe full` quantizes everything (the converters' defaults, as before). `auto` (the default) builds the
full-integer model, judges it on the bundle's tuning sample with the gate's own int8 bounds (the bundle's
parity.toml included) and, only when it misses them, climbs a ladder and stops at the first rung that passes:

1. keep the fewest Keras layers in float (`kerasport.int8_recipe.search_float_layers`): TFLite through the public
   `tf.lite.experimental.QuantizationDebugger` (`QuantizationDebugOptions.denylisted_nodes`, one calibration for
   every candidate), onnxruntime through `quantize_static(nodes_to_exclude=...)`; layers map to graph nodes by the
   TF name scopes in their names (`kerasport.layer_scopes`, as `parity --explain` maps them);
2. 16-bit activations (TFLite's whole-model int16x8 mode; 16-bit QDQ activations for onnxruntime), kept only when
   the candidate stays `MIN_SPEEDUP` times faster than its fp32 twin at batch 1;
3. another calibration: all of the bundle's calibration examples, and percentile / entropy for onnxruntime.

A variant no rung fixes ships full-integer (it fails the gate as before) with every rung's figures recorded. A
recipe file (`--int8-recipe FILE`) is applied as written; the recipe used is written beside the variant
(`export/<variant>.recipe.json`) and recorded in the manifest. The search reads the tuning sample only, never the
eval sample the gate judges on.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kerasport.contract import ModelContract
from kerasport.errors import UsageError
from kerasport.fsutil import atomic_path, sha256_file
from kerasport.int8_recipe import (
    FULL,
    MIN_SPEEDUP,
    RECIPE_SUFFIX,
    RUNG_CALIBRATION,
    RUNG_FLOAT_LAYERS,
    RUNG_FULL,
    RUNG_INT16,
    VALUE_PRESERVING_LAYERS,
    Int8Recipe,
    judge_tuning,
    search_float_layers,
)
from kerasport.layer_scopes import ScopeIndex, keras_archive_layers
from kerasport.manifest import Manifest
from kerasport.runtimes import RuntimeSettings, open_runtime
from kerasport.samples import Samples, load_samples

from .tuning import TuningSet, load_tuning

# The most layers rung 1 keeps in float: beyond three the model loses the size and speed int8 is for.
MAX_FLOAT_LAYERS = 3
TUNING_BATCH = 64
SPEED_REPEATS = 20
TFLM_IDENTITY_EXAMPLES = 4  # examples on which LiteRT's built-in kernels must equal TFLite Micro's bit for bit
KERAS_ARTIFACT = "keras"


class RecipeRequest:
    """What the build functions need to apply or search a recipe (one per export); the tuning set, the Keras
    layer names and the whole calibration sample are loaded on first use."""

    def __init__(self, mode: str | Int8Recipe | dict[str, Int8Recipe], *, run_dir: Path, manifest: Manifest,
                 saved_model: Path, formats: tuple[str, ...] = ()):
        self.mode, self.run_dir, self.manifest, self.saved_model = mode, run_dir, manifest, saved_model
        self.formats = formats
        self._tuning: TuningSet | None = None
        self._calibration: Samples | None = None
        self._layers: tuple[ScopeIndex | None, str] | None = None

    @property
    def calibration(self) -> Samples:
        """The bundle's whole calibration sample (the export uses its first `--calibration-samples`)."""
        if self._calibration is None:
            artifact = self.manifest.artifact("calibration_sample")
            self._calibration = load_samples(artifact.resolve(self.run_dir), self.manifest.contract)
        return self._calibration

    @property
    def tuning(self) -> TuningSet:
        if self._tuning is None:
            self._tuning = load_tuning(self.run_dir, self.manifest, self.saved_model, self.calibration)
        return self._tuning

    @property
    def layers(self) -> ScopeIndex | None:
        """The Keras layers by name (from the bundle's `.keras` archive), or None with `layers_missing` saying why."""
        return self._keras_layers()[0]

    @property
    def layers_missing(self) -> str:
        return self._keras_layers()[1]

    def _keras_layers(self) -> tuple[ScopeIndex | None, str]:
        if self._layers is None:
            if not self.manifest.has(KERAS_ARTIFACT):
                self._layers = (None, "the bundle has no Keras model (.keras) to name layers by")
            else:
                try:
                    nodes, model_name = keras_archive_layers(self.manifest.artifact(KERAS_ARTIFACT).resolve(
                        self.run_dir), self.manifest.contract.output_names)
                    self._layers = (ScopeIndex(nodes, model_name), "")
                except UsageError as error:
                    self._layers = (None, str(error))
        return self._layers


class RecipeBackend:
    """What the ONNX and TFLite recipe backends share: where candidates go, which calibration sample a recipe asks
    for, the tuning sample, and `build` (a numbered candidate file written by the backend's `write`)."""

    format = ""  # the artifact format, also the candidates' file suffix

    def __init__(self, context, request: RecipeRequest, scratch: Path):
        self.context, self.request = context, request
        self.scratch = scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.details: dict[Path, dict] = {}

    def calibration(self, recipe: Int8Recipe) -> Samples:
        if recipe.calibration_samples is None:
            return self.context.calibration
        return self.request.calibration.take(recipe.calibration_samples)

    @property
    def tuning(self) -> TuningSet:
        return self.request.tuning

    def build(self, recipe: Int8Recipe) -> Path:
        self.count += 1
        destination = self.scratch / f"candidate_{self.count}.{self.format}"
        self.details[destination] = self.write(recipe, destination)
        return destination

    def write(self, recipe: Int8Recipe, destination: Path) -> dict:
        raise NotImplementedError


@dataclass
class Candidate:
    """One quantized model a rung built: its recipe, file and tuning figures."""

    recipe: Int8Recipe
    path: Path
    figures: dict = field(default_factory=dict)


def mode_name(mode: str | Int8Recipe | dict) -> str:
    return mode if isinstance(mode, str) else "file"


# -- the recipe record ---------------------------------------------------------------------------------------
def record_recipe(path: Path, variant_name: str, recipe: Int8Recipe, mode: str | Int8Recipe,
                  search: dict | None = None) -> dict:
    """Write `<variant>.recipe.json` beside the artifact and return the manifest's `int8_recipe` entry."""
    recipe_path = path.with_name(f"{variant_name}{RECIPE_SUFFIX}")
    recipe_path.unlink(missing_ok=True)  # never write through a hard link into the previous export
    with atomic_path(recipe_path) as temp:
        temp.write_bytes(recipe.to_json())
    entry = {"mode": mode_name(mode), "recipe": recipe.to_dict(), "summary": recipe.describe(),
             "file": recipe_path.name, "sha256": sha256_file(recipe_path)}
    return {**entry, **(search or {})}


# -- judging candidates on the tuning sample ---------------------------------------------------------------------
def run_tuning(path: Path, artifact_format: str, tuning: TuningSet, settings: RuntimeSettings) -> dict:
    runtime = open_runtime(path, artifact_format, settings)
    inputs = tuning.samples.inputs
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(tuning.samples), TUNING_BATCH):
        outputs = runtime.run({name: array[start:start + TUNING_BATCH] for name, array in inputs.items()})
        for name, value in outputs.items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(values) for name, values in parts.items()}


def judge_file(path: Path, artifact_format: str, tuning: TuningSet, contract: ModelContract,
               settings: RuntimeSettings | None = None) -> dict:
    """The tuning figures of one built model (`{"error": ...}` when it does not run)."""
    settings = settings or RuntimeSettings()
    try:
        outputs = run_tuning(path, artifact_format, tuning, settings)
    except Exception as error:  # noqa: BLE001 - a candidate that does not run is a failed trial, not a crash
        return {"passed": False, "error": _error_line(error)}
    return _rounded(judge_tuning(contract, tuning.tolerance, tuning.reference, outputs, tuning.samples.targets))


def _error_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def _rounded(figures: dict) -> dict:
    return {key: round(value, 6) if isinstance(value, float) else value for key, value in figures.items()}


def batch1_seconds(path: Path, artifact_format: str, tuning: TuningSet) -> float:
    """Median seconds of one batch-1 inference (the first tuning example), after a warm-up run."""
    runtime = open_runtime(path, artifact_format, RuntimeSettings())
    example = {name: array[:1] for name, array in tuning.samples.inputs.items()}
    runtime.run(example)
    times = []
    for _ in range(SPEED_REPEATS):
        started = time.perf_counter()
        runtime.run(example)
        times.append(time.perf_counter() - started)
    return float(np.median(times))


# -- the ladder --------------------------------------------------------------------------------------------------
class Ladder:
    """Climbs the rungs for one variant; a backend supplies `build(recipe) -> Path`, `layer_candidates()`,
    `judge(path) -> figures`, the fp32 twin for the speed bar and the calibration alternatives."""

    def __init__(self, backend, variant_name: str, calibration_count: int, total_calibration: int):
        self.backend, self.variant_name = backend, variant_name
        self.calibration_count, self.total_calibration = calibration_count, total_calibration
        self.rungs: list[dict] = []

    def climb(self, full: Candidate) -> Candidate:
        """The first rung's candidate that passes, or `full` when none does (every rung recorded)."""
        self.rungs.append({"rung": RUNG_FULL, "recipe": full.recipe.describe(), "passed": full.figures.get("passed"),
                           "figures": full.figures})
        if full.figures.get("passed"):
            return full
        for rung in (self._float_layers, self._int16, self._calibration):
            started = time.perf_counter()
            record, found = rung()
            self.rungs.append({**record, "seconds": round(time.perf_counter() - started, 2)})
            if found is not None:
                return found
        return full

    def _float_layers(self) -> tuple[dict, Candidate | None]:
        record = {"rung": RUNG_FLOAT_LAYERS}
        candidates, why_not = self.backend.layer_candidates()
        if why_not:
            return {**record, "not_tried": why_not}, None
        kinds = {node.name: node.kind for node in self.backend.request.layers.nodes}
        record["skipped_layers"] = [layer for layer in candidates if kinds.get(layer) in VALUE_PRESERVING_LAYERS]
        candidates = [layer for layer in candidates if layer not in record["skipped_layers"]]
        built: dict[tuple[str, ...], Candidate] = {}

        def judge(layers: tuple[str, ...]) -> dict:
            recipe = Int8Recipe(float_layers=tuple(layers))
            try:
                path = self.backend.build(recipe)
            except Exception as error:  # noqa: BLE001 - one candidate that fails to build is one failed trial
                return {"passed": False, "error": _error_line(error)}
            figures = self.backend.judge(path)
            built[tuple(sorted(layers))] = Candidate(recipe, path, figures)
            return figures

        index = self.backend.request.layers
        consumers = {node.name: index.consumers(node.name) for node in index.nodes}
        search = search_float_layers(candidates, judge, MAX_FLOAT_LAYERS, consumers)
        record.update(ranking=search.ranking, trials=search.trials, passed=search.float_layers is not None)
        if search.float_layers is None:
            return record, None
        final = built[tuple(sorted(search.float_layers))]
        # The recipe lists the layers in rank order, which is also how the file reads best.
        recipe = Int8Recipe(float_layers=tuple(layer for layer in search.ranking if layer in search.float_layers))
        record.update(recipe=recipe.describe(), figures=final.figures)
        return record, replace(final, recipe=recipe)

    def _int16(self) -> tuple[dict, Candidate | None]:
        record = {"rung": RUNG_INT16}
        why_not = self.backend.int16_unavailable()
        if why_not:
            return {**record, "not_tried": why_not}, None
        recipe = Int8Recipe(activation_bits=16)
        try:
            path = self.backend.build(recipe)
        except Exception as error:  # noqa: BLE001
            return {**record, "passed": False, "error": _error_line(error)}, None
        record["recipe"] = recipe.describe()
        # The speed bar first: it is cheap, and a model that loses it is not judged at all.
        twin = self.backend.fp32_twin()
        if twin is None:
            return {**record, "passed": False, "rejected": "no fp32 twin was built to hold the speed bar against"}, None
        speedup = batch1_seconds(twin, self.backend.format, self.backend.tuning) / max(
            batch1_seconds(path, self.backend.format, self.backend.tuning), 1e-9)
        record["speedup_vs_fp32"] = round(speedup, 2)
        if speedup < MIN_SPEEDUP:
            return {**record, "passed": False, "rejected": f"batch-1 speed-up over fp32 {speedup:.2f}x < "
                                                           f"{MIN_SPEEDUP:g}x"}, None
        figures = self.backend.judge(path)
        record["figures"] = figures
        if not figures.get("passed"):
            return {**record, "passed": False}, None
        return {**record, "passed": True}, Candidate(recipe, path, figures)

    def _calibration(self) -> tuple[dict, Candidate | None]:
        record: dict = {"rung": RUNG_CALIBRATION, "trials": []}
        recipes = []
        if self.total_calibration > self.calibration_count:
            recipes.append(Int8Recipe(calibration_samples=self.total_calibration))
        samples = self.total_calibration if self.total_calibration > self.calibration_count else None
        recipes += [Int8Recipe(calibration_method=method, calibration_samples=samples)
                    for method in self.backend.calibration_methods]
        if not recipes:
            return {**record, "not_tried": f"the export already calibrates on all {self.total_calibration} "
                                           f"examples and {self.backend.format} offers one calibration method"}, None
        for recipe in recipes:
            try:
                path = self.backend.build(recipe)
            except Exception as error:  # noqa: BLE001
                record["trials"].append({"recipe": recipe.describe(), "passed": False,
                                         "error": _error_line(error)})
                continue
            figures = self.backend.judge(path)
            record["trials"].append({"recipe": recipe.describe(), **figures})
            if figures.get("passed"):
                return {**record, "passed": True, "recipe": recipe.describe()}, Candidate(recipe, path, figures)
        return {**record, "passed": False}, None


def search_summary(chosen: Candidate, full: Candidate, rungs: list[dict], tuning: TuningSet, seconds: float) -> dict:
    """The manifest's account of an `auto` search: outcome, tuning data, every rung, seconds."""
    if chosen is full and full.figures.get("passed"):
        outcome = ("the full-integer model passes the int8 bounds on the tuning sample: kept as is (byte-identical "
                   "to --int8-recipe full)")
    elif chosen is full:
        outcome = "no rung passes the int8 bounds on the tuning sample: shipped full-integer (the gate judges it)"
    else:
        outcome = f"fixed by rung {rungs[-1]['rung']}: {chosen.recipe.describe()}"
    return {"outcome": outcome, "identical_to_full": chosen is full, "tuning": tuning.describe(),
            "rungs": rungs, "search_seconds": round(seconds, 2)}


def resolve_layers(recipe: Int8Recipe, request: RecipeRequest) -> None:
    """A recipe file may only name layers the model has.

    Raises:
        UsageError: a float layer the bundle's Keras model does not have, or no Keras model to name layers by.
    """
    if not recipe.float_layers:
        return
    if request.layers is None:
        raise UsageError(f"--int8-recipe keeps {list(recipe.float_layers)} in float, but {request.layers_missing}")
    known = [node.name for node in request.layers.nodes]
    unknown = [layer for layer in recipe.float_layers if layer not in known]
    if unknown:
        raise UsageError(f"--int8-recipe names layers {unknown} the model does not have; its layers: "
                         f"{', '.join(known)}")


def apply_recipe(backend, variant_name: str, path: Path, request: RecipeRequest) -> dict:
    """Build the variant at `path` as `request.mode` says; returns its details with the `int8_recipe` record.

    `full` and a recipe file are applied as given; `auto` judges the full-integer model on the tuning sample and
    climbs the ladder (`Ladder`) only when it misses the gate's int8 bounds.

    Raises:
        UsageError: a recipe file names layers the model does not have.
        ConversionError: the converter fails on the full-integer model or the recipe's.
    """
    mode = request.mode
    if isinstance(mode, dict):
        if variant_name not in mode:
            raise UsageError(f"--int8-recipe: the folder has recipes for {', '.join(mode)} but none for "
                             f"{variant_name} ({variant_name}{RECIPE_SUFFIX}); expected one per int8 variant")
        mode = mode[variant_name]
    if isinstance(mode, Int8Recipe):
        resolve_layers(mode, request)
        return {**backend.write(mode, path), "int8_recipe": record_recipe(path, variant_name, mode, mode)}
    details = backend.write(Int8Recipe(), path)
    if mode == FULL:
        return {**details, "int8_recipe": record_recipe(path, variant_name, Int8Recipe(), mode)}
    started = time.perf_counter()
    full = Candidate(Int8Recipe(), path, backend.judge(path))
    ladder = Ladder(backend, variant_name, len(backend.calibration(Int8Recipe())), len(request.calibration))
    chosen = ladder.climb(full)
    cost = None
    if chosen is not full:
        cost = recipe_cost(path, chosen.path, backend.format, request.tuning)
        path.unlink(missing_ok=True)
        shutil.copyfile(chosen.path, path)
        details = backend.details[chosen.path]
    search = search_summary(chosen, full, ladder.rungs, request.tuning, time.perf_counter() - started)
    return {**details, "int8_recipe": record_recipe(path, variant_name, chosen.recipe, mode,
                                                    {**search, "cost": cost})}


def recipe_cost(full: Path, chosen: Path, artifact_format: str, tuning: TuningSet) -> dict:
    """What the recipe costs against the full-integer model: bytes and batch-1 milliseconds, measured side by side
    on this machine (the gate's performance section measures the shipped variants properly)."""
    return {"bytes_full": full.stat().st_size, "bytes": chosen.stat().st_size,
            "batch1_ms_full": round(batch1_seconds(full, artifact_format, tuning) * 1e3, 3),
            "batch1_ms": round(batch1_seconds(chosen, artifact_format, tuning) * 1e3, 3)}


def tflm_recipe(int8_record: dict, int8_path: Path, c_array: Path, variant_name: str) -> dict:
    """The tflm C array holds the tflite-int8 model's bytes, so its recipe is that one's: written again as
    `<variant>.recipe.json` (the tflite-int8 file may live in scratch when only tflm was asked for)."""
    recipe = Int8Recipe.from_dict(int8_record["recipe"], str(int8_path))
    written = record_recipe(c_array, variant_name, recipe, int8_record["mode"])
    return {**int8_record, **written, "from_variant_model": int8_path.name}
