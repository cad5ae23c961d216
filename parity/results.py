"""The parity gate's results as typed records: what report.json holds, read back and handed to every renderer.

`ParityReport` is the whole report; `CandidateResult` one candidate's verdict, checks and per-output statistics;
`Check` one judged check (also the budget and drift checks); the sections (`ExplainSection`, `DriftSection`,
`BudgetsSection`, `MicrocontrollerSection`, `PerformanceSection`, ...) are what `--explain`, `--baseline`, the tflm
candidate, flash/RAM budgets and the speed measurement add. Like the model contract (kerasport/contract.py), every
record has `to_dict()` — exactly the report.json / manifest shape other stages and existing bundles read, keys in
report.json's order — and `from_dict()`, which reads a report.json back (`ParityReport.from_dict(json.loads(...))`).

Measurements whose keys follow the code that takes them (the statistics of `kerasport.compare`, the sweep rows, the
per-layer rows, a device's fit, the performance figures of `kerasport.perf`) stay plain mappings inside the records:
they are serialised as measured. No TensorFlow import here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from kerasport.verdict import Verdict

# A field's metadata: how its value is read back (`record`: a Record class; `each`: "list" or "dict" of them) and
# whether an absent value is left out of report.json (`omit`: the key appears only when the value is not None).
_RECORD, _EACH, _OMIT = "record", "each", "omit"


def _nested(record: type, each: str | None = None, *, omit: bool = False, default: Any = None):
    metadata = {_RECORD: record, _EACH: each, _OMIT: omit}
    if each == "list" and not omit:
        return field(default_factory=list, metadata=metadata)
    if each == "dict" and not omit:
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


def _optional(default: Any = None):
    """A key report.json carries only when it has a value."""
    return field(default=default, metadata={_OMIT: True})


def _dump(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_dump(item) for item in value]
    if isinstance(value, dict):
        return {key: _dump(item) for key, item in value.items()}
    return value


def _load(record: type, each: str | None, value: Any) -> Any:
    if value is None:
        return None
    if each == "list":
        return [record.from_dict(item) for item in value]
    if each == "dict":
        return {key: record.from_dict(item) for key, item in value.items()}
    return record.from_dict(value)


class Record:
    """A dataclass serialised field by field, in declaration order (report.json's key order)."""

    VERDICT_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        """The record as report.json writes it (see the module docstring)."""
        out = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.metadata.get(_OMIT) and value is None:
                continue
            out[spec.name] = _dump(value)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping):
        """The record of a report.json mapping (keys it does not carry take their defaults).

        Raises:
            TypeError: `raw` is not a mapping.
        """
        if not isinstance(raw, Mapping):
            raise TypeError(f"{cls.__name__}: {type(raw).__name__} {raw!r}; expected a mapping")
        values = {}
        for spec in fields(cls):
            if spec.name not in raw:
                continue
            value = raw[spec.name]
            record = spec.metadata.get(_RECORD)
            if record is not None:
                value = _load(record, spec.metadata.get(_EACH), value)
            elif spec.name in cls.VERDICT_FIELDS and value is not None:
                value = Verdict(value)
            values[spec.name] = value
        return cls(**values)


# -- checks and candidates ----------------------------------------------------------------------------------------
@dataclass
class Check(Record):
    """One judged check: `<check>[<output>]` (a candidate's, a budget's or a drift check), and whether it passed.

    `skipped` marks a check that could not run here (TFLite Micro not installed); report.json carries it only then.
    """

    check: str
    id: str
    output: str | None
    passed: bool
    message: str
    skipped: bool | None = _optional()

    @classmethod
    def of(cls, check: str, passed: bool, message: str, output: str | None = None, *,
           skipped: bool = False) -> Check:
        """A check identified as `<check>[<output>]` (or `<check>` for a per-candidate check)."""
        return cls(check, f"{check}[{output}]" if output else check, output, bool(passed), message,
                   True if skipped else None)


@dataclass
class OutputResult(Record):
    """One output of a candidate: its kind, which metrics it gets, and its statistics on the eval and edge inputs.

    `eval` is `kerasport.compare`'s statistics (error, agreement, accuracy or MAE) on the eval inputs; `edge` the
    error statistics per edge batch size. Both are absent when the shapes did not match.
    """

    kind: str
    metrics: str
    labelled: bool
    eval: dict | None = _optional()
    edge: dict[str, dict] | None = _optional()


@dataclass
class MicrocontrollerSection(Record):
    """The tflm candidate's flash, tensor arena, MACs, op resolver and fit per device (`kerasport.devices`)."""

    flash_bytes: int
    arena: dict
    macs: dict | None = None
    op_resolver: dict | None = None
    fit: dict[str, dict] = field(default_factory=dict)


@dataclass
class CandidateResult(Record):
    """One candidate's verdict, its checks and per-output statistics, and what its format adds.

    The tflm candidate adds `microcontroller`, `findings` (TFLM vs LiteRT), `description`, `tflm_sample` and
    `vs_litert`, and `skipped` (why) when TFLite Micro is not installed; ONNX/TFLite candidates add the error
    `histograms` and the runtime-settings `sweep` rows. A candidate that would not load has no `outputs`.
    """

    VERDICT_FIELDS: ClassVar[tuple[str, ...]] = ("verdict",)

    precision: str
    runtime: str | None
    path: str
    format: str
    microcontroller: MicrocontrollerSection | None = _nested(MicrocontrollerSection, omit=True)
    findings: list[str] | None = _optional()
    verdict: Verdict = Verdict.ERROR
    skipped: str | None = _optional()
    checks: list[Check] = _nested(Check, "list")
    outputs: dict[str, OutputResult] | None = _nested(OutputResult, "dict", omit=True)
    description: str | None = _optional()
    tflm_sample: dict | None = _optional()
    vs_litert: dict[str, dict] | None = _optional()
    histograms: dict[str, list[int]] | None = _optional()
    sweep: list[dict] | None = _optional()
    # fp16 candidates: the fp16 rounding error their bound follows, where it was measured and why (fp16_error.py)
    fp16_error: dict | None = _optional()
    seconds: float = 0.0

    def failed_checks(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def eval_stats(self, output: str) -> dict | None:
        """The output's statistics on the eval inputs (None: no such output, or its shapes did not match)."""
        measured = (self.outputs or {}).get(output)
        return None if measured is None else measured.eval


# -- the report's header -------------------------------------------------------------------------------------------
@dataclass
class NoiseFloor(Record):
    """The reference's own noise: batch 1 against a batch of EVAL_BATCH on the same inputs, per output."""

    what: str
    examples: int
    max_abs_diff: float
    edge_max_abs_diff: float
    outputs: dict[str, dict] = field(default_factory=dict)


@dataclass
class ReferenceInfo(Record):
    """The model every candidate is compared with, its runtime and its noise floor."""

    artifact: str
    runtime: str
    path: str
    noise_floor: NoiseFloor = _nested(NoiseFloor)
    float32_error: dict | None = _optional()


@dataclass
class LabelledData(Record):
    """Whether the eval sample has targets (per output), and the plain notes on what cannot be measured."""

    given: bool
    outputs: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class OutputDescription(Record):
    """One contract output as the report describes it: kind, metrics family, and whether it has targets."""

    kind: str
    metrics: str
    labelled: bool


@dataclass
class EvalSampleInfo(Record):
    """Where the eval inputs came from: the bundle's pinned sample (path, hash) or seeded noise (`generated`)."""

    path: str | None
    sha256: str
    examples: int
    labelled_outputs: list[str] = field(default_factory=list)
    generated: bool = False
    what: str | None = _optional()


@dataclass
class EdgeInputsInfo(Record):
    """The generated edge inputs: how many, the batch sizes they run at, their seed, hash and per-input kinds."""

    examples: int
    batch_sizes: list[int]
    seed: int
    sha256: str
    inputs: dict[str, dict] = field(default_factory=dict)


@dataclass
class InputsInfo(Record):
    eval_sample: EvalSampleInfo = _nested(EvalSampleInfo)
    edge: EdgeInputsInfo = _nested(EdgeInputsInfo)


@dataclass
class ArtifactRef(Record):
    path: str
    sha256: str | None


# -- sections -------------------------------------------------------------------------------------------------------
@dataclass
class RecipeEntry(Record):
    """The int8 recipe export recorded for a variant (`recipes.py`), beside the gate's verdict."""

    VERDICT_FIELDS: ClassVar[tuple[str, ...]] = ("verdict",)

    mode: str | None = None
    summary: str | None = None
    file: str | None = None
    outcome: str | None = None
    rungs: list[dict] = field(default_factory=list)
    search_seconds: float | None = None
    cost: dict | None = None
    tuning: str | None = None
    verdict: Verdict | None = None


@dataclass
class SampledCheck(Record):
    """A candidate whose checks ran on a sample in TFLite Micro, and why the sample proves the rest (tflm.py)."""

    candidate: str
    checks: str
    sample: dict[str, int]
    bit_identical: bool
    rest_from: str
    why: str


@dataclass
class BudgetRow(Record):
    """One flash or RAM budget of the tflm artifact, what it uses, and the judgement (budgets.py)."""

    kind: str
    limit_bytes: int
    origin: str
    used_bytes: int | None
    passed: bool
    message: str


@dataclass
class BudgetsSection(Record):
    device: str | None
    budgets: list[BudgetRow] = _nested(BudgetRow, "list")
    checks: list[Check] = _nested(Check, "list")


@dataclass
class FirstDivergence(Record):
    """The first layer of a candidate beyond its tolerance (explain/layers.py)."""

    layer: str
    type: str
    depth: int
    relative: float
    allowed: float
    growth: float | None
    after: str | None
    message: str


@dataclass
class ExplainCandidate(Record):
    """One candidate compared layer by layer: the rows, the first divergence (bounded precisions), the costliest
    int8 layers and the fixes tried; or only `error` when the explanation could not run."""

    error: str | None = _optional()
    precision: str | None = None
    format: str | None = None
    runtime: str | None = None
    settings: str | None = None
    tolerance: str | None = None
    layers: list[dict] = field(default_factory=list)
    compared: int = 0
    first_divergent: FirstDivergence | None = _nested(FirstDivergence)
    costliest: list[dict] | None = _optional()
    seconds: float | None = None
    fixes: dict | None = _optional()  # added after the rows were timed

    def to_dict(self) -> dict:
        return {"error": self.error} if self.error is not None else super().to_dict()


@dataclass
class ExplainSection(Record):
    """`--explain` (or a failing candidate): every explained candidate, those skipped, and the plot's file."""

    inputs: dict | None = _optional()
    candidates: dict[str, ExplainCandidate] = _nested(ExplainCandidate, "dict")
    skipped: dict[str, str] | None = _optional()
    unavailable: str | None = _optional()
    seconds: float | None = _optional()
    plot: str | None = _optional()
    trigger: str | None = _optional()


@dataclass
class ReleaseRef(Record):
    run: str
    name: str
    version: str


@dataclass
class DriftPolicyRecord(Record):
    max_accuracy_drop: float | None = None
    max_flips: int | None = None


@dataclass
class DriftSection(Record):
    """`--baseline`: both releases on the baseline's pinned eval slice (drift.py).

    `models` holds per compared model its outputs' statistics (flips, accuracy / MAE deltas, distribution shift)
    and, for an image model with flips, `contact_sheet`: the PNG beside report.json.
    """

    baseline: ReleaseRef = _nested(ReleaseRef)
    current: ReleaseRef = _nested(ReleaseRef)
    inputs: dict = field(default_factory=dict)
    policy: DriftPolicyRecord = _nested(DriftPolicyRecord)
    models: dict[str, dict] = field(default_factory=dict)
    checks: list[Check] = _nested(Check, "list")
    failures: list[str] = field(default_factory=list)
    passed: bool = True
    seconds: float = 0.0


@dataclass
class PerformanceSection(Record):
    """Measured speed per candidate (`kerasport.perf`: figures per candidate as measured) with its host."""

    host: dict = field(default_factory=dict)
    measured: str | None = None
    seconds: float | None = None
    settings: dict = field(default_factory=dict)
    candidates: dict[str, dict] = field(default_factory=dict)


@dataclass
class TargetChoice(Record):
    """The variant recommended for one deployment target (None: none qualifies) and why (`kerasport.selection`)."""

    variant: str | None
    why: str
    measured: bool = False


@dataclass
class RecommendationPolicy(Record):
    max_accuracy_drop: float | None = None
    measured: bool = False


@dataclass
class ProfileSection(Record):
    """The server recommendation's per-op profile (onnxruntime's profiler), or why there is none; for a TFLite
    recommendation, the fastest ONNX candidate's profile as `onnx_instead`."""

    variant: str
    error: str | None = _optional()
    unavailable: str | None = _optional()
    onnx_instead: ProfileSection | None = _optional()
    runtime: str | None = _optional()
    runs: int | None = _optional()
    total_us_per_run: float | None = _optional()
    ops: list[dict] | None = _optional()
    layers: dict[str, float] | None = _optional()

    @classmethod
    def from_dict(cls, raw: Mapping) -> ProfileSection:
        profile = super().from_dict(raw)
        if isinstance(profile.onnx_instead, Mapping):
            profile.onnx_instead = cls.from_dict(profile.onnx_instead)
        return profile


# -- the whole report -----------------------------------------------------------------------------------------------
@dataclass
class ParityReport(Record):
    """report.json: the gate's verdict, its inputs and reference, every candidate, and the optional sections.

    `passed` is the gate (every candidate check and every budget); drift against a baseline has its own `passed`
    in its section, and `all_failures` joins both.
    """

    passed: bool
    finished: str
    seconds: float
    task: str
    reference: ReferenceInfo = _nested(ReferenceInfo)
    labelled_data: LabelledData = _nested(LabelledData)
    outputs: dict[str, OutputDescription] = _nested(OutputDescription, "dict")
    tolerances: dict = field(default_factory=dict)
    inputs: InputsInfo = _nested(InputsInfo)
    artifacts: dict[str, ArtifactRef] = _nested(ArtifactRef, "dict")
    not_built: dict[str, str] = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    candidates: dict[str, CandidateResult] = _nested(CandidateResult, "dict")
    findings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    int8_recipes: dict[str, RecipeEntry] = _nested(RecipeEntry, "dict")
    sampled_checks: list[SampledCheck] = _nested(SampledCheck, "list")
    explain: ExplainSection | None = _nested(ExplainSection, omit=True)
    drift: DriftSection | None = _nested(DriftSection, omit=True)
    budgets: BudgetsSection | None = _nested(BudgetsSection, omit=True)
    performance: PerformanceSection | None = _nested(PerformanceSection, omit=True)
    recommendation: dict[str, TargetChoice] | None = _nested(TargetChoice, "dict", omit=True)
    recommendation_policy: RecommendationPolicy | None = _nested(RecommendationPolicy, omit=True)
    profile: ProfileSection | None = _nested(ProfileSection, omit=True)

    @property
    def verdict(self) -> Verdict:
        """PASS when every check of the gate passed (drift aside), else FAIL."""
        return Verdict.of_checks([self.passed])

    @property
    def all_failures(self) -> list[str]:
        """The gate's failing checks, then the drift policy's breaches."""
        return self.failures + (self.drift.failures if self.drift else [])

    @property
    def all_passed(self) -> bool:
        """The gate passed and, with a baseline, so did the drift policy."""
        return self.passed and (self.drift is None or self.drift.passed)
