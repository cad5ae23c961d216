"""The tolerance policy: per precision class, defaults overridable by `<run>/parity.toml` and then by options.

Defaults come from measurements on the `seed` arch (README, "Parity"): fp32 runtimes differ from Keras by
float rounding only (max |diff| of probabilities 2.4e-6 ORT, 3.5e-6 LiteRT; Keras' own batch-size noise 1.2e-6),
fp16 weights by 1.8e-3 on real images and 7.9e-3 on edge inputs, int8 by 0.05-0.37.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerasport.errors import UsageError

PRECISION_CLASS = {"fp32": "fp32", "fp16": "fp16", "dynamic-int8": "int8", "int8": "int8"}
TOLERANCE_FILE = "parity.toml"
NOISE_SOURCES = ("batch_order", "fp16_weights", "float32_error")


@dataclass
class Tolerance:
    # |candidate - reference| <= max(atol, noise_multiple x noise) + rtol * |reference| for every output value
    # (`allowed_difference`); atol None: values not checked
    atol: float | None = None
    rtol: float = 0.0
    # The bound is max(atol, noise_multiple x Keras' own noise on the same inputs): a runtime that sums in another
    # order should differ from Keras about as much as Keras differs from itself when batching changes its order.
    noise_multiple: float = 0.0
    # Which noise the multiple applies to: "batch_order" (the reference on the same inputs batched differently) or
    # "fp16_weights" (the reference vs itself with float16-rounded weights: fp16 storage's own error) or
    # "float32_error" (the larger of batch_order and the reference vs itself computed in float64: float32's own
    # rounding error on these inputs).
    noise_source: str = "batch_order"
    min_agreement: float = 1.0  # top-1 agreement with Keras on the real held-out images
    # Images where Keras' own top-2 margin is below this are near-ties: a flip there is within the output
    # tolerance, so agreement is judged on the decisive images (raw agreement and every flip are reported too).
    tie_margin: float = 0.0
    max_accuracy_drop: float | None = None  # absolute, 0.005 = 0.5 percentage points
    max_mae_increase: float | None = None  # regression: relative increase of the test MAE, 0.1 = +10 %
    # An extra relative term for `values`/`logits` outputs, whose scale is the model's own (a regression head may
    # answer in the hundreds, where fp16's 11-bit mantissa alone is ~0.1): probabilities stay on the absolute bound.
    values_rtol: float = 0.0


@dataclass
class TolerancePolicy:
    fp32: Tolerance = field(default_factory=lambda: Tolerance(atol=1e-5, rtol=0.0, noise_multiple=5.0,
                                                              min_agreement=1.0, max_accuracy_drop=0.0,
                                                              max_mae_increase=0.001, tie_margin=0.0,
                                                              noise_source="float32_error"))
    fp16: Tolerance = field(default_factory=lambda: Tolerance(atol=1e-2, rtol=0.0, min_agreement=0.999,
                                                              max_accuracy_drop=0.002, max_mae_increase=0.02,
                                                              tie_margin=1e-2, values_rtol=1e-2, noise_multiple=2.0,
                                                              noise_source="fp16_weights"))
    int8: Tolerance = field(default_factory=lambda: Tolerance(atol=None, min_agreement=0.99,
                                                              max_accuracy_drop=0.005, max_mae_increase=0.1,
                                                              tie_margin=0.05))
    source: list[str] = field(default_factory=lambda: ["defaults"])

    def for_precision(self, precision: str) -> Tolerance:
        return getattr(self, PRECISION_CLASS.get(precision, "fp32"))

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in ("fp32", "fp16", "int8")} | {
            "source": self.source}

    def update(self, precision_class: str, values: dict, origin: str) -> None:
        if precision_class not in ("fp32", "fp16", "int8"):
            raise UsageError(f"{origin}: unknown section [{precision_class}]; expected fp32, fp16 or int8")
        tolerance = getattr(self, precision_class)
        known = {f.name for f in dataclasses.fields(Tolerance)}
        for key, value in values.items():
            if key == "noise_source":
                if value not in NOISE_SOURCES:
                    raise UsageError(f"{origin}: [{precision_class}] noise_source = {value!r}; expected one of "
                                     f"{', '.join(NOISE_SOURCES)}")
                tolerance.noise_source = value
                continue
            if key not in known:
                raise UsageError(f"{origin}: unknown key {key!r} in [{precision_class}]; expected "
                                 f"{', '.join(sorted(known))}")
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise UsageError(f"{origin}: [{precision_class}] {key} = {value!r}; expected a number >= 0")
            setattr(tolerance, key, float(value) if value is not None else None)
        if not 0 <= tolerance.min_agreement <= 1:
            raise UsageError(f"{origin}: [{precision_class}] min_agreement = {tolerance.min_agreement}; "
                             f"expected 0..1")
        if origin not in self.source:
            self.source.append(origin)


def noise_floors(tolerance: Tolerance, noise: dict) -> tuple[float, float]:
    """The (eval, edge) noise floors this tolerance's multiple applies to, from one output's measured noise.

    fp16 weight-rounding noise is only measured for a Keras reference with an fp16 candidate; where it is absent
    the floor is 0 and the bound is `atol`. The float32 error likewise (Keras reference, fp32 candidate); where it
    is absent the floor is the batch-order noise.
    """
    if tolerance.noise_source == "fp16_weights":
        return noise.get("fp16_max_abs_diff", 0.0), noise.get("fp16_edge_max_abs_diff", 0.0)
    if tolerance.noise_source == "float32_error":
        return (max(noise["max_abs_diff"], noise.get("float32_max_abs_diff", 0.0)),
                max(noise["edge_max_abs_diff"], noise.get("float32_edge_max_abs_diff", 0.0)))
    return noise["max_abs_diff"], noise["edge_max_abs_diff"]


# Two classes whose reference scores are closer than twice the model's own error for a precision (fp16 weight
# rounding, float32 rounding) can swap places with no fault in the artifact: each may move by that error.
NEAR_TIE_NOISE_FACTOR = 2.0


def decision_margin(tolerance: Tolerance, noise_floor: float) -> float:
    """The reference top-2 margin below which an example is a near-tie for this tolerance.

    The larger of the configured `tie_margin` and NEAR_TIE_NOISE_FACTOR x the model's own error for the precision
    on the eval inputs (`noise_floors`' first value): a model whose fp16-rounded weights alone move a probability
    by 0.12 cannot be expected to keep a decision whose margin is 0.02 in an fp16 artifact, while a model whose
    fp16 error is 1e-3 keeps the configured margin. A flip on a near-tie is reported, not judged.

    Args:
        tolerance: the precision class's tolerance.
        noise_floor: the model's own error on the eval inputs for this tolerance's noise source.

    Returns:
        The margin, in the output's own units (the same units as the top-2 margin it is compared with).
    """
    return max(tolerance.tie_margin, NEAR_TIE_NOISE_FACTOR * noise_floor)


def allowed_difference(tolerance: Tolerance, reference: np.ndarray, noise_floor: float,
                       kind: str = "probabilities") -> np.ndarray | None:
    """The largest |candidate - reference| the tolerance allows for each reference value; None when not checked.

    One bound for the gate and the settings sweep: max(atol, noise_multiple x the reference's own noise on the same
    inputs) + rtol x |reference|.

    Args:
        tolerance: the precision class's tolerance.
        reference: the reference outputs (any shape).
        noise_floor: the reference's own max |diff| between batch 1 and batch 64 on these inputs, for this output.
        kind: the output's kind; `values` and `logits` add `values_rtol` to the relative term.

    Returns:
        An array shaped like `reference`, or None when the tolerance has no `atol` (values are not bounded).
    """
    if tolerance.atol is None:
        return None
    floor = max(tolerance.atol, tolerance.noise_multiple * noise_floor)
    rtol = tolerance.rtol + (tolerance.values_rtol if kind != "probabilities" else 0.0)
    return floor + rtol * np.abs(np.asarray(reference, dtype=np.float64))


def bound_excess(tolerance: Tolerance, reference: np.ndarray, candidate: np.ndarray, noise_floor: float,
                 kind: str = "probabilities") -> float:
    """max(|candidate - reference| - allowed_difference): <= 0 within the bound, NaN when values are not bounded."""
    allowed = allowed_difference(tolerance, reference, noise_floor, kind)
    if allowed is None:
        return float("nan")
    difference = np.abs(np.asarray(candidate, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    return float((difference - allowed).max()) if difference.size else 0.0


def load_policy(run_dir: Path, overrides: dict[str, dict] | None = None) -> TolerancePolicy:
    """The defaults, updated by `<run_dir>/parity.toml`, then by command-line overrides (None values ignored).

    Raises:
        UsageError: the file is not TOML, or names an unknown section or key, or a value is not a number >= 0.
    """
    policy = TolerancePolicy()
    path = run_dir / TOLERANCE_FILE
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise UsageError(f"{path}: not valid TOML ({error})") from error
        for section, values in table.items():
            if not isinstance(values, dict):
                raise UsageError(f"{path}: {section} = {values!r}; expected a table like [fp32] with atol = 1e-5")
            policy.update(section, values, str(path))
    for section, values in (overrides or {}).items():
        values = {key: value for key, value in values.items() if value is not None}
        if values:
            policy.update(section, values, "command line")
    return policy
