"""int8 recipes: which Keras layers a full-integer variant keeps in float, its activation bits and calibration.

Shared by export (which searches, applies and records a recipe) and parity/report (which shows it); no TF here.

A recipe is a small JSON document (`RECIPE_SCHEMA`): `float_layers` (Keras layer names, mapped to graph nodes by
`kerasport.layer_scopes`), `activation_bits` (8, or 16 for TFLite's whole-model int16x8 mode / 16-bit QDQ
activations) and `calibration` (`method` minmax / percentile / entropy, `samples`: how many calibration examples,
None for the export's `--calibration-samples`). The full-integer model is the recipe with nothing in float.

The search (`search_float_layers`) is pure: it is given a function that builds and judges one candidate on the
tuning sample (`judge_tuning`, the gate's own int8 bounds) and returns the fewest float layers that pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .compare import accuracy_statistics, agreement_statistics, class_scores, regression_statistics
from .contract import ModelContract
from .errors import UsageError
from .tolerances import Tolerance, bound_excess

RECIPE_SCHEMA = "kerasport.int8-recipe/1"
RECIPE_SUFFIX = ".recipe.json"
# The sample the search judges candidates on (train: the validation split; import: --tuning-data).
TUNING_ARTIFACT = "tuning_sample"
TUNING_SAMPLE_FILE = "tuning_sample.npz"
AUTO, FULL = "auto", "full"
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
ACTIVATION_BITS = (8, 16)
# onnxruntime's int8 weights take 7 bits (`reduce_range`): on x86 without VNNI its u8 x s8 kernels add pairs of
# products in 16 bits (VPMADDUBSW), and 255 x 127 x 2 saturates, so an 8-bit model answers differently there than on
# the VNNI host that gated it (measured: a model whose float-layer fix reached 0.92 agreement with 7-bit weights
# stayed at 0.50 on an AVX2 host). Weights in [-64, 64]: 255 x 64 x 2 = 32640 fits, so every x86 host computes
# the integers the gate checked.
ONNX_REDUCE_RANGE = True
ONNX_WEIGHTS = "per-channel 7-bit int8 weights (reduce_range)" if ONNX_REDUCE_RANGE else "per-channel int8 weights"


def onnx_static_quantization(*, per_channel: bool = True, activation_bits: int = 8,
                             calibration_method: str = "minmax") -> dict:
    """The `onnxruntime.quantization.quantize_static` settings of every ONNX int8 model kerasport builds (export,
    its int8 recipes and explain's re-quantized trials alike): QDQ, int8 weights in 7 bits (`ONNX_REDUCE_RANGE`),
    uint8 activations (uint16 with `activation_bits=16`), the given calibration method."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    return {"quant_format": QuantFormat.QDQ, "per_channel": per_channel, "reduce_range": ONNX_REDUCE_RANGE,
            "activation_type": QuantType.QUInt16 if activation_bits == 16 else QuantType.QUInt8,
            "weight_type": QuantType.QInt8, "calibrate_method": methods[calibration_method]}
# The ladder's rungs, in the order they are climbed.
RUNG_FULL, RUNG_FLOAT_LAYERS, RUNG_INT16, RUNG_CALIBRATION = ("full", "float-layers", "16-bit-activations",
                                                              "calibration")
# Keras layers that only select or move values: in int8 they pass their input's quantized values (and scale)
# through unchanged, so keeping one in float cannot lower the error, only add (de)quantize ops; never candidates.
VALUE_PRESERVING_LAYERS = frozenset({
    "ActivityRegularization", "Cropping1D", "Cropping2D", "Cropping3D", "Dropout", "Flatten", "GaussianDropout",
    "GaussianNoise", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "MaxPooling1D",
    "MaxPooling2D", "MaxPooling3D", "Permute", "RepeatVector", "Reshape", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "ZeroPadding1D", "ZeroPadding2D",
    "ZeroPadding3D"})
# Batch-1 speed an int8 variant must keep over its fp32 twin (the bar; a 16-bit rung that loses it is
# rejected): the point of int8 on a CPU is speed and size.
MIN_SPEEDUP = 2.0


@dataclass(frozen=True)
class Int8Recipe:
    """How one full-integer variant is quantized (see the module docstring)."""

    float_layers: tuple[str, ...] = ()
    activation_bits: int = 8
    calibration_method: str = "minmax"
    calibration_samples: int | None = None

    @property
    def is_full(self) -> bool:
        """Everything quantized to int8, calibrated as the export does by default (today's behaviour)."""
        return self == Int8Recipe()

    def to_dict(self) -> dict:
        return {"schema": RECIPE_SCHEMA, "float_layers": list(self.float_layers),
                "activation_bits": self.activation_bits,
                "calibration": {"method": self.calibration_method, "samples": self.calibration_samples}}

    def to_json(self) -> bytes:
        """Canonical bytes: equal recipes give equal files."""
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    def describe(self) -> str:
        parts = [f"float: {', '.join(self.float_layers)}" if self.float_layers else "all layers int8"]
        if self.activation_bits != 8:
            parts.append(f"{self.activation_bits}-bit activations")
        if self.calibration_method != "minmax" or self.calibration_samples is not None:
            samples = f", {self.calibration_samples} examples" if self.calibration_samples is not None else ""
            parts.append(f"calibration {self.calibration_method}{samples}")
        return "; ".join(parts)

    @classmethod
    def from_dict(cls, data: object, origin: str) -> Int8Recipe:
        """Validate a recipe document.

        Raises:
            UsageError: not a recipe, or a field of the wrong type or value (the message names it).
        """
        if not isinstance(data, dict) or data.get("schema") != RECIPE_SCHEMA:
            raise UsageError(f"{origin}: not an int8 recipe; expected a JSON object with \"schema\": "
                             f"\"{RECIPE_SCHEMA}\" (export writes one beside every int8 variant)")
        layers = data.get("float_layers", [])
        if not isinstance(layers, list) or not all(isinstance(layer, str) and layer for layer in layers):
            raise UsageError(f"{origin}: float_layers = {layers!r}; expected a list of Keras layer names")
        bits = data.get("activation_bits", 8)
        if bits not in ACTIVATION_BITS:
            raise UsageError(f"{origin}: activation_bits = {bits!r}; expected one of {ACTIVATION_BITS}")
        calibration = data.get("calibration", {})
        if not isinstance(calibration, dict):
            raise UsageError(f"{origin}: calibration = {calibration!r}; expected an object with method, samples")
        method = calibration.get("method", "minmax")
        if method not in CALIBRATION_METHODS:
            raise UsageError(f"{origin}: calibration.method = {method!r}; expected one of "
                             f"{', '.join(CALIBRATION_METHODS)}")
        samples = calibration.get("samples")
        if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool) or samples < 1):
            raise UsageError(f"{origin}: calibration.samples = {samples!r}; expected a whole number >= 1 or null")
        return cls(tuple(layers), bits, method, samples)


def load_recipe(path: Path) -> Int8Recipe:
    """Read a recipe file written by export (`export/<variant>.recipe.json`) or by hand.

    Raises:
        UsageError: the file is missing, not JSON, or not a valid recipe.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"--int8-recipe {path}: no such file; expected auto, full or a recipe JSON file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--int8-recipe {path}: not a readable JSON file ({error})") from None
    return Int8Recipe.from_dict(data, str(path))


def parse_recipe_option(text: str) -> str | Int8Recipe | dict[str, Int8Recipe]:
    """`--int8-recipe`: "auto", "full", a recipe file (for every int8 variant) or a folder of
    `<variant>.recipe.json` files (a previous bundle's `export/`: each variant its own), read and validated now,
    before any conversion.

    Raises:
        UsageError: an empty value, a file that is not a valid recipe, or a folder without recipes.
    """
    value = (text or "").strip()
    if value in (AUTO, FULL):
        return value
    if not value:
        raise UsageError("--int8-recipe ''; expected auto, full, a recipe JSON file or a folder of them")
    path = Path(value)
    if path.is_dir():
        recipes = {item.name[:-len(RECIPE_SUFFIX)]: load_recipe(item)
                   for item in sorted(path.glob(f"*{RECIPE_SUFFIX}"))}
        if not recipes:
            raise UsageError(f"--int8-recipe {path}: a folder without *{RECIPE_SUFFIX} files; expected a bundle's "
                             f"export/ folder or a recipe file")
        return recipes
    return load_recipe(path)


# -- judging one candidate on the tuning sample ------------------------------------------------------------------
def judge_tuning(contract: ModelContract, tolerance: Tolerance, reference: Mapping[str, np.ndarray],
                 outputs: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray]) -> dict:
    """The gate's int8 checks on the tuning sample: agreement on decisive examples, accuracy drop, MAE increase,
    and the value bound when the tolerance sets one (a bundle's parity.toml may).

    Returns:
        {"passed": bool, "failed": [check ids], "agreement", "decisive_agreement", "accuracy_delta",
        "mae_relative_increase", "max_abs_diff"} (the figures that apply).
    """
    figures: dict = {"failed": []}
    for spec in contract.output_specs():
        expected = np.asarray(reference[spec.name], dtype=np.float64)
        received = np.asarray(outputs[spec.name], dtype=np.float64)
        difference = np.abs(received - expected)
        scale = 1.0 if spec.kind == "probabilities" else max(float(np.max(np.abs(expected))), 1e-12)
        figures["max_abs_diff"] = max(figures.get("max_abs_diff", 0.0),
                                      float(difference.max()) if expected.size else 0.0)
        # The int8 error the ranking orders layers by: mean |diff| over the output's scale (probabilities as is).
        figures["mean_error"] = figures.get("mean_error", 0.0) + (
            float(difference.mean()) / scale / len(contract.outputs) if expected.size else 0.0)
        if tolerance.atol is not None and bound_excess(tolerance, expected, received, 0.0, spec.kind) > 0:
            figures["failed"].append(f"max_abs_diff[{spec.name}]")
        target = targets.get(spec.name)
        if spec.is_classification:
            _judge_classes(spec, tolerance, expected, received, target, figures)
        elif target is not None and tolerance.max_mae_increase is not None:
            increase = regression_statistics(expected, received, target)["mae_relative_increase"]
            figures["mae_relative_increase"] = max(figures.get("mae_relative_increase", -np.inf), increase)
            if increase > tolerance.max_mae_increase + 1e-12:
                figures["failed"].append(f"mae_increase[{spec.name}]")
    figures["passed"] = not figures["failed"]
    return figures


def _judge_classes(spec, tolerance: Tolerance, expected: np.ndarray, received: np.ndarray,
                   target: np.ndarray | None, figures: dict) -> None:
    ref_scores, cand_scores = class_scores(expected, spec.kind), class_scores(received, spec.kind)
    stats = agreement_statistics(ref_scores, cand_scores, tolerance.tie_margin)
    figures["agreement"] = min(figures.get("agreement", 1.0), stats["top1_agreement"])
    figures["decisive_agreement"] = min(figures.get("decisive_agreement", 1.0), stats["decisive_agreement"])
    if stats["decisive_agreement"] < tolerance.min_agreement:
        figures["failed"].append(f"top1_agreement[{spec.name}]")
    if target is None or tolerance.max_accuracy_drop is None:
        return
    delta = accuracy_statistics(ref_scores, cand_scores, target)["accuracy_delta"]
    figures["accuracy_delta"] = min(figures.get("accuracy_delta", np.inf), delta)
    if -delta > tolerance.max_accuracy_drop + 1e-12:
        figures["failed"].append(f"accuracy_drop[{spec.name}]")


def tuning_score(figures: Mapping) -> tuple:
    """Orders judged candidates, best first when sorted descending: passing, then agreement, accuracy, MAE."""
    if "error" in figures:
        return (False, -np.inf)
    return (bool(figures.get("passed")), -len(figures.get("failed", [])), figures.get("decisive_agreement", 1.0),
            figures.get("agreement", 1.0), figures.get("accuracy_delta", 0.0),
            -figures.get("mae_relative_increase", 0.0), -figures.get("max_abs_diff", 0.0))


# -- the float-layer search (rung 1) -----------------------------------------------------------------------------
@dataclass
class FloatLayerSearch:
    """What `search_float_layers` found: the layers to keep in float (None: no set passed) and every trial."""

    float_layers: tuple[str, ...] | None
    ranking: list[str]
    trials: list[dict] = field(default_factory=list)


def search_float_layers(candidates: list[str], judge: Callable[[tuple[str, ...]], dict], max_layers: int,
                        consumers: Mapping[str, list[str]] | None = None) -> FloatLayerSearch:
    """The fewest Keras layers to keep in float so that the tuning sample passes.

    Rank the candidate layers by their int8 cost: each alone in float, in graph order (stopping at the first that
    passes alone: one layer is the fewest), ranked by the tuning figures it reaches — passing, agreement,
    accuracy, MAE — and, where a few hundred examples tie them, the mean output error (the better the model gets,
    the costlier that layer's int8 was). Add layers in rank order until the sample passes, then try dropping
    each kept layer again (the last added first) and keep every drop that still passes. A kept layer's consumers
    are added before the next layer in rank order: a float layer's output is quantized again where an int8 layer
    reads it, which is where the error is made (measured on `seed`: conv1 alone or bn1 alone in float leave the
    eval agreement at 0.9749, both together raise it to 0.9944).

    Args:
        candidates: Keras layers that own quantized nodes, in graph order (ties rank by it).
        judge: builds the candidate with these layers in float, returns `judge_tuning` figures (or {"error": ...}).
        max_layers: the most layers kept in float before the rung gives up.
        consumers: per layer, the layers that read its output.

    Returns:
        The layers found (in rank order) or None, the ranking, and one record per candidate judged.
    """
    seen: dict[tuple[str, ...], dict] = {}
    trials: list[dict] = []

    def trial(layers: tuple[str, ...], purpose: str) -> dict:
        key = tuple(sorted(layers))
        if key not in seen:
            seen[key] = judge(layers)
            trials.append({"float_layers": list(layers), "purpose": purpose, **seen[key]})
        return seen[key]

    single: dict[str, dict] = {}
    for layer in candidates:
        single[layer] = trial((layer,), "rank")
        if single[layer].get("passed"):
            break  # one layer is the fewest there can be: the rest need not be judged
    order = {layer: position for position, layer in enumerate(candidates)}
    judged = sorted(single, key=lambda layer: (*tuning_score(single[layer])[:-1],
                                               -single[layer].get("mean_error", np.inf), -order[layer]),
                    reverse=True)
    ranking = judged + [layer for layer in candidates if layer not in single]
    kept: list[str] = []
    passed = False
    queue = list(ranking)
    while queue and len(kept) < max_layers and not passed:
        layer = queue.pop(0)
        if layer in kept:
            continue
        kept.append(layer)
        followers = [name for name in (consumers or {}).get(layer, []) if name in order and name not in kept]
        queue = [*sorted(followers, key=ranking.index), *[name for name in queue if name not in followers]]
        passed = bool(trial(tuple(kept), "add in rank order").get("passed"))
    if not passed:
        return FloatLayerSearch(None, ranking, trials)
    for layer in reversed(list(kept)):
        smaller = tuple(name for name in kept if name != layer)
        if smaller and trial(smaller, f"drop {layer}").get("passed"):
            kept = list(smaller)
    return FloatLayerSearch(tuple(kept), ranking, trials)
