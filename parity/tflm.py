"""The `tflm` candidate: the C array's model run in TFLite Micro's own interpreter, the microcontroller's kernels.

The model is the one in `model_int8.cc` (parsed back, and checked to be byte-for-byte the int8 TFLite model it
was made from). It runs one example at a time (TFLM's contract: batch 1) on the same eval slice and edge inputs
as every other candidate, in an arena of the size export recommends reserving, and is judged against the
reference under the int8 tolerance. It is also compared with LiteRT on the same model: with LiteRT's built-in
kernels (the same reference int8 kernels: at most LITERT_BUILTIN_STEPS output quantization steps apart) and with
LiteRT's default XNNPACK (which requantizes differently: values are reported, a top-1 flip on a decisive example
is a finding). Where `tflite_micro` does not import, the candidate is `skipped` (never `pass`), with one line why.

By default (`--tflm sample`) TFLite Micro runs only a bounded sample: the first TFLM_SAMPLE_EVAL eval examples and
the first TFLM_SAMPLE_EDGE edge examples (every edge pattern). The same bytes run in LiteRT's built-in kernels on
everything; where TFLM's outputs are bit-identical to LiteRT's on the whole sample, LiteRT's outputs stand in for
TFLM's on the rest (both run the same reference integer kernels: integer arithmetic per example, no reduction
across examples, so what differs between them is a kernel, and a kernel that differs shows on the sample's edge
patterns and eval examples alike). Where they are not identical, every example runs in TFLM as before. `--tflm full`
always runs everything in TFLM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from kerasport.compare import agreement_statistics, class_scores, error_statistics
from kerasport.contract import ModelContract
from kerasport.devices import (
    device_fit,
    open_tflm,
    parse_c_array,
    tflm_missing,
    tflm_version,
    unmeasured_arena,
)
from kerasport.errors import ConversionError, UsageError
from kerasport.manifest import Artifact, Manifest, load_manifest
from kerasport.runtimes import RuntimeSettings, open_runtime
from kerasport.tflm_limits import tflm_limitations
from kerasport.tolerances import TolerancePolicy
from kerasport.verdict import Verdict

from .checks import Checks, judge, load_error
from .first_load import tflm_arena, tflm_first_load
from .results import CandidateResult, Check, MicrocontrollerSection, ParityReport, SampledCheck
from .runners import (
    EDGE_BATCH_SIZES,
    GATE_SETTINGS,
    CandidateOutputs,
    Outputs,
    Reference,
    run_batched,
    run_everything,
)

TFLM_FORMAT = "c-array"
TFLM_ARTIFACT = "tflm"
INT8_ARTIFACT = "tflite-int8"
SOURCE_CHECK = "c_array_source"
# TFLM and LiteRT's built-in kernels run the same reference int8 kernels: at most this many quantization steps of
# the output may separate them (measured: identical on `edge` and `seed`).
LITERT_BUILTIN_STEPS = 1.0
BUILTIN_LABEL = "builtin kernels"
XNNPACK_LABEL = "default (XNNPACK)"
# How the tflite-int8 candidate's settings sweep names the tflm check's run it reuses.
TFLM_RUN_LABEL = "LiteRT's built-in kernels (the tflm check's run)"
# One thread: the run the tflite-int8 candidate's settings sweep reuses for its "xnnpack=off, threads=1" row.
TFLM_BUILTIN = dataclasses.replace(GATE_SETTINGS, xnnpack=False, threads=1)
LITERT_SETTINGS = {BUILTIN_LABEL: TFLM_BUILTIN, XNNPACK_LABEL: GATE_SETTINGS}
TFLM_MODES = ("sample", "full")
TFLM_SAMPLE_EVAL = 32  # eval examples run in TFLite Micro when sampling (about 2 s for the 12 MB seed model)
TFLM_SAMPLE_EDGE = 8  # edge examples: every pattern of edges.py (min, max, noise, bright pixel, checkerboard)
SAMPLE_WHY = ("TFLite Micro and LiteRT's built-in kernels run the same reference integer kernels over the same "
              "bytes; each example is computed on its own in integer arithmetic, so a kernel that differs between "
              "them shows on the sample's eval examples and edge patterns alike. Bit-identical outputs on the whole "
              "sample let LiteRT's built-in kernels stand in for TFLM on the rest; any difference sends every "
              "example through TFLM. `kerasport parity --tflm full` runs them all in TFLM.")
_FLOAT_BOUND = 1e-6  # a float output (no quantization step known): the kernels should agree to float rounding


class TflmRunner:
    """A TFLite Micro interpreter behind the runner interface: named batches in, loops over examples, named out.

    Inputs are quantized and outputs dequantized with the model's own parameters where its I/O is int8.
    """

    def __init__(self, model: bytes, contract: ModelContract, arena_bytes: int):
        self._interpreter = open_tflm(model, arena_bytes)
        self._inputs, self._outputs = _io_order(model, contract)
        self._input_details = [self._interpreter.get_input_details(i) for i in range(len(self._inputs))]
        self._output_details = [self._interpreter.get_output_details(i) for i in range(len(self._outputs))]
        self.description = f"tflite-micro {tflm_version()} (batch 1, {arena_bytes}-byte arena)"

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        total = len(np.asarray(inputs[self._inputs[0]]))
        collected: dict[str, list[np.ndarray]] = {name: [] for name in self._outputs}
        for example in range(total):
            for index, (name, detail) in enumerate(zip(self._inputs, self._input_details, strict=True)):
                self._interpreter.set_input(_quantize(np.asarray(inputs[name])[example:example + 1], detail), index)
            self._interpreter.invoke()
            for index, (name, detail) in enumerate(zip(self._outputs, self._output_details, strict=True)):
                collected[name].append(_dequantize(np.array(self._interpreter.get_output(index)), detail))
        return {name: np.concatenate(parts) for name, parts in collected.items()}


def _io_order(model: bytes, contract: ModelContract) -> tuple[list[str], list[str]]:
    """The contract names of the model's inputs and outputs in the flatbuffer's order (TFLM's indices)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=model)
        signature = interpreter.get_signature_runner()
    except Exception as error:  # noqa: BLE001 - LiteRT raises ValueError for a broken flatbuffer
        raise ConversionError(f"the C array does not hold a readable TFLite model: {error}") from error
    named = {}
    for kind, details, signed in (("inputs", interpreter.get_input_details(), signature.get_input_details()),
                                  ("outputs", interpreter.get_output_details(), signature.get_output_details())):
        by_tensor = {detail["name"]: name for name, detail in signed.items()}
        named[kind] = [by_tensor.get(detail["name"]) for detail in details]
        expected = contract.input_names if kind == "inputs" else contract.output_names
        if sorted(str(name) for name in named[kind]) != sorted(expected):
            raise ConversionError(f"the C array's model has {kind} {named[kind]}; the contract names {expected}")
    return named["inputs"], named["outputs"]


def _scale(detail: dict) -> tuple[float, int] | None:
    scales, zero_points = detail["quantization_parameters"]["scales"], detail["quantization_parameters"]["zero_points"]
    return (float(scales[0]), int(zero_points[0])) if len(scales) else None


def _quantize(value: np.ndarray, detail: dict) -> np.ndarray:
    dtype, quantization = np.dtype(detail["dtype"]), _scale(detail)
    if quantization and dtype.kind in "iu":
        scale, zero_point = quantization
        limits = np.iinfo(dtype)
        quantized = np.round(np.asarray(value, dtype=np.float32) / scale + zero_point)
        return np.ascontiguousarray(np.clip(quantized, limits.min, limits.max), dtype=dtype)
    return np.ascontiguousarray(value, dtype=dtype)


def _dequantize(value: np.ndarray, detail: dict) -> np.ndarray:
    quantization = _scale(detail)
    if quantization and np.dtype(detail["dtype"]).kind in "iu":
        scale, zero_point = quantization
        return (value.astype(np.float32) - zero_point) * scale
    return value


def microcontroller_section(entry: dict, arena: dict | None = None) -> MicrocontrollerSection:
    """Flash, arena (parity's measurement when given, else export's), MACs, op resolver and fit per device."""
    arena = arena or entry.get("arena") or unmeasured_arena("not recorded by export (re-export the bundle)")
    flash = int(entry.get("flash_bytes", entry.get("model_bytes", 0)))
    return MicrocontrollerSection(flash, arena, macs=entry.get("macs"), op_resolver=entry.get("op_resolver"),
                                  fit=device_fit(flash, arena.get("reserve_bytes")))


def check_tflm(run_dir: Path, artifact: Artifact, contract: ModelContract, policy: TolerancePolicy,
               reference: Reference, data, mode: str = "sample",
               shared: CandidateOutputs | None = None) -> CandidateResult:
    """Judge the `tflm` candidate: its model in TFLite Micro against the reference, and against LiteRT.

    Args:
        mode: "sample" (TFLM on a bounded sample; LiteRT's built-in kernels stand in on the rest where they are
            bit-identical there) or "full" (every example in TFLM).
        shared: the gate's runs of the other candidates: where the C array holds the tflite-int8 artifact's exact
            bytes, LiteRT's runs of that artifact are taken from there, not run again.

    Returns:
        The candidate's result (as `stage.check_candidate`) plus `microcontroller` (flash, arena, MACs, fit),
        `vs_litert` and `findings`; verdict `skipped` (with `skipped`: why) when tflite_micro does not import,
        `error` when TFLite Micro cannot prepare or run the model.
    """
    started = time.perf_counter() if shared is None else shared.start_timing()
    manifest = load_manifest(run_dir)
    result = CandidateResult(artifact.precision, artifact.runtime, artifact.path, artifact.format,
                             microcontroller=microcontroller_section(artifact.entry), findings=[])
    missing = tflm_missing()
    if missing:
        result.verdict, result.skipped = Verdict.SKIPPED, missing
        result.checks = [Check.of("tflm_runtime", True, missing, skipped=True)]
        result.seconds = round(time.perf_counter() - started, 3)
        return result
    model = parse_c_array(artifact.resolve(run_dir).read_text())
    checks = Checks()
    twin = _check_source(manifest, artifact, model, run_dir, checks)
    twin = twin if shared is not None else None
    builtin = None if twin is None else functools.partial(shared.under, twin, TFLM_BUILTIN)
    try:
        arena = _arena(artifact, model, len(contract.inputs))
        result.microcontroller = microcontroller_section(artifact.entry, arena)
        runner = TflmRunner(model, contract, arena["reserve_bytes"])
        outputs, sampled, measured = run_tflm(runner, model, contract, data, mode, builtin)
        if twin is not None:
            with contextlib.suppress(ConversionError):  # then compare_with_litert runs it and says why not
                measured[XNNPACK_LABEL] = (shared.get(twin).eval, outputs.eval)
    except ConversionError as error:
        result.verdict, result.checks = Verdict.ERROR, checks.records + load_error(str(error))
        result.seconds = round(time.perf_counter() - started, 3)
        return result
    result.outputs, judged = judge(contract, policy.for_precision(artifact.precision), reference, outputs,
                                   data.targets)
    checks.records += judged.records
    result.verdict, result.checks = checks.verdict, checks.records
    result.description, result.tflm_sample = runner.description, sampled
    tie_margin = policy.for_precision(artifact.precision).tie_margin
    result.vs_litert = compare_with_litert(model, contract, data.inputs, outputs.eval, tie_margin, measured=measured)
    result.findings = litert_findings(result.vs_litert)
    result.seconds = round(time.perf_counter() - started if shared is None else
                           shared.own_seconds(started) + shared.spent(*([] if twin is None else [
                               shared.under_key(twin, TFLM_BUILTIN)])), 3)
    return result


def run_tflm(runner: TflmRunner, model: bytes, contract: ModelContract, data, mode: str,
             builtin: Callable[[], Outputs] | None = None) -> tuple[Outputs, dict, dict]:
    """The `tflm` candidate's outputs on every input: all from TFLM ("full"), or sampled (see the module doc).

    `builtin` gives LiteRT's built-in kernels' outputs (TFLM_BUILTIN) on every eval and edge input where they were
    computed elsewhere; None runs `model` in them here.

    Returns:
        (outputs, the sample record for the report, {LiteRT settings label: (LiteRT outputs, TFLM outputs)} of the
        sample's built-in comparison, empty when everything ran in TFLM).

    Raises:
        UsageError: an unknown mode. ConversionError: TFLM or LiteRT failed at run time.
    """
    if mode not in TFLM_MODES:
        raise UsageError(f"--tflm {mode!r}; expected one of {', '.join(TFLM_MODES)}")
    if mode == "full":
        examples = len(next(iter(data.inputs.values()))) + sum(EDGE_BATCH_SIZES)
        return run_everything(runner, data.inputs, data.edges.inputs), {
            "mode": "full", "tflm_inferences": examples, "what": "every eval and edge input ran in TFLite Micro"}, {}
    eval_count = min(TFLM_SAMPLE_EVAL, len(next(iter(data.inputs.values()))))
    edge_count = min(TFLM_SAMPLE_EDGE, len(data.edges))
    sample = {name: np.concatenate([data.inputs[name][:eval_count], data.edges.inputs[name][:edge_count]])
              for name in data.inputs}
    try:
        tflm = runner.run(sample)
    except Exception as error:  # noqa: BLE001 - the wrapper raises RuntimeError/ValueError
        raise ConversionError(f"TFLite Micro failed at run time: {type(error).__name__}: {error}") from error
    if builtin is None:
        builtin = functools.partial(_run_bytes, model, TFLM_BUILTIN, data)
    builtin = builtin()
    widest = max(EDGE_BATCH_SIZES)
    litert = {name: np.concatenate([builtin.eval[name][:eval_count], builtin.edge[widest][name][:edge_count]])
              for name in contract.output_names}
    identical = all(np.array_equal(tflm[name], litert[name]) for name in contract.output_names) and all(
        np.array_equal(tflm[name][eval_count:eval_count + min(batch, edge_count)],
                       builtin.edge[batch][name][:edge_count])
        for batch in EDGE_BATCH_SIZES if batch <= edge_count for name in contract.output_names)
    record = {"mode": "sample", "eval_examples": eval_count, "edge_examples": edge_count,
              "tflm_inferences": eval_count + edge_count, "bit_identical": identical, "why": SAMPLE_WHY}
    measured = {BUILTIN_LABEL: (litert, tflm)}
    if identical:
        record["rest_from"] = "LiteRT's built-in kernels (same bytes, bit-identical to TFLM on the whole sample)"
        return builtin, record, measured
    record["rest_from"] = "TFLite Micro: the sample was not bit-identical to LiteRT, so every example ran in TFLM"
    return run_everything(runner, data.inputs, data.edges.inputs), record, measured


def sampled_checks(results: dict[str, CandidateResult]) -> list[SampledCheck]:
    """The report's list of checks that ran on a sample: which candidate, how large, why that proves the rest."""
    rows = []
    for name, result in results.items():
        sampled = result.tflm_sample or {}
        if sampled.get("mode") != "sample":
            continue
        rows.append(SampledCheck(name, "every check of the candidate (eval and edge inputs)",
                                 {"eval_examples": sampled["eval_examples"],
                                  "edge_examples": sampled["edge_examples"]},
                                 sampled["bit_identical"], sampled["rest_from"], sampled["why"]))
    return rows


def sampled_markdown(report: ParityReport) -> list[str]:
    """report.md's section on the checks that ran on a sample (none: nothing)."""
    rows = report.sampled_checks
    if not rows:
        return []
    lines = ["## Checks run on a sample", ""]
    for row in rows:
        sample = row.sample
        lines.append(f"- `{row.candidate}`: {sample['eval_examples']} eval + {sample['edge_examples']} edge "
                     f"examples ran in TFLite Micro; "
                     + ("bit-identical to LiteRT's built-in kernels there" if row.bit_identical else
                        "**not** bit-identical to LiteRT's built-in kernels there")
                     + f"; the rest: {row.rest_from}.")
    return lines + ["", f"Why the sample proves the rest: {rows[0].why}", ""]


def _arena(artifact: Artifact, model: bytes, inputs: int) -> dict:
    """Export's measurement when this tflite-micro made it (the runner then proves the reserve), else a new one.

    TFLite Micro first loads the model in an isolated child (first_load.py), so an abort is this candidate's
    error; a known TFLM limit (kerasport.tflm_limits) is named before it loads at all.
    """
    limits = tflm_limitations(model)
    if limits:
        raise ConversionError(f"TFLite Micro limitation: {'; '.join(limits)}")
    recorded = artifact.get("arena") or {}
    if recorded.get("measured") and recorded.get("tflite_micro") == tflm_version():
        tflm_first_load(model, inputs, artifact.name)
        return recorded
    return tflm_arena(model, inputs, artifact.name)


def _check_source(manifest: Manifest, artifact: Artifact, model: bytes, run_dir: Path,
                  checks: Checks) -> Artifact | None:
    """The C array holds exactly the int8 TFLite model it was made from (its recorded sha256, and the file).

    Returns:
        The bundle's tflite-int8 artifact when the C array holds its exact bytes, else None.
    """
    digest = hashlib.sha256(model).hexdigest()
    expected = artifact.get("source_sha256")
    int8 = manifest.artifact(INT8_ARTIFACT) if manifest.has(INT8_ARTIFACT) else None
    if int8 is not None and int8.status == "ok" and int8.path.endswith(str(artifact.get("source_model", ""))):
        expected = expected or int8.sha256
        same_file = int8.resolve(run_dir).read_bytes() == model
    else:
        int8, same_file = None, True  # built in scratch and not kept: the recorded digest is the evidence
    source = artifact.get("source_model", "the int8 model")
    if expected is None:
        checks.add(SOURCE_CHECK, False, f"the manifest records no sha256 of {source} for the C array; re-export")
        return None
    same = digest == expected and same_file
    checks.add(SOURCE_CHECK, same, f"the C array's {len(model)} bytes (sha256 {digest[:12]}…) "
               + ("equal " if same else "differ from ") + f"{source} (sha256 {expected[:12]}…)")
    return int8 if same else None


def _run_bytes(model: bytes, settings: RuntimeSettings, data) -> Outputs:
    """The TFLite `model` (bytes) in LiteRT under `settings` on every eval and edge input."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model_int8.tflite"
        path.write_bytes(model)
        return run_everything(open_runtime(path, "tflite", settings), data.inputs, data.edges.inputs)


def output_steps(model_path: Path, contract: ModelContract) -> dict[str, float | None]:
    """Per output, the int8 quantization step of the value it is dequantized from (None: a float output)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path))
    tensors = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    producers = {op["outputs"][0]: op for op in interpreter._get_ops_details() if op["outputs"]}
    details = interpreter.get_signature_runner().get_output_details()
    steps = {}
    for name in contract.output_names:
        index = details[name]["index"]
        scale = float(tensors[index]["quantization"][0])
        op = producers.get(index)
        if not scale and op is not None and op["op_name"] == "DEQUANTIZE":
            scale = float(tensors[op["inputs"][0]]["quantization"][0])
        steps[name] = scale or None
    return steps


def compare_with_litert(model: bytes, contract: ModelContract, eval_inputs: Mapping[str, np.ndarray],
                        tflm_outputs: Mapping[str, np.ndarray], tie_margin: float, *,
                        measured: Mapping[str, tuple] | None = None) -> dict:
    """TFLM's eval outputs against LiteRT's on the same model, for each of LITERT_SETTINGS.

    Args:
        measured: {settings label: (LiteRT outputs, TFLM outputs)} compared already (the sample's built-in run):
            those settings are compared on those outputs (`examples` says how many), not run again.

    Returns:
        {settings: {output: {max_abs_diff, mean_abs_diff, steps, step, examples, [top1_agreement,
        decisive_agreement, label_flips], within_bound}}}; `within_bound` is None where only the top-1 is judged
        (XNNPACK).
    """
    measured = measured or {}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model_int8.tflite"
        path.write_bytes(model)
        steps = output_steps(path, contract)
        compared = {}
        for label, settings in LITERT_SETTINGS.items():
            litert, tflm = measured.get(label) or (run_batched(open_runtime(path, "tflite", settings), eval_inputs),
                                                   tflm_outputs)
            compared[label] = {spec.name: {**_litert_stats(spec, litert[spec.name], tflm[spec.name],
                                                           steps[spec.name], tie_margin, bounded=not settings.xnnpack),
                                           "examples": len(tflm[spec.name])}
                               for spec in contract.output_specs()}
    return compared


def _litert_stats(spec, litert: np.ndarray, tflm: np.ndarray, step: float | None, tie_margin: float,
                  bounded: bool) -> dict:
    stats = error_statistics(litert, tflm)
    row = {"max_abs_diff": stats["max_abs_diff"], "mean_abs_diff": stats["mean_abs_diff"], "step": step,
           "steps": None if not step else round(stats["max_abs_diff"] / step, 2)}
    if spec.is_classification:
        agreement = agreement_statistics(class_scores(litert, spec.kind), class_scores(tflm, spec.kind), tie_margin)
        row.update({key: agreement[key] for key in ("top1_agreement", "decisive_agreement", "label_flips")})
    # (dequantized values carry float32 rounding: a step measured as a difference is a step within 1e-3)
    bound = LITERT_BUILTIN_STEPS * step * (1 + 1e-3) if step else _FLOAT_BOUND
    row["within_bound"] = bool(stats["max_abs_diff"] <= bound) if bounded else None
    return row


def litert_findings(compared: dict) -> list[str]:
    """One line per output where TFLM and LiteRT disagree beyond the bound (built-in kernels) or on a decisive
    top-1 (XNNPACK), naming both."""
    lines = []
    for label, outputs in compared.items():
        for output, row in outputs.items():
            beyond = row["within_bound"] is False
            flipped = row.get("decisive_agreement", 1.0) < 1.0
            if beyond or flipped:
                steps = f" ({row['steps']:g} output steps)" if row["steps"] is not None else ""
                lines.append(f"tflm (tflite-micro) and tflite-int8 in LiteRT ({label}) disagree on {output!r}: "
                             f"max|diff| {row['max_abs_diff']:.3g}{steps}"
                             + (f", top-1 agreement {row['top1_agreement']:.4f}" if "top1_agreement" in row else "")
                             + (f"; bound {LITERT_BUILTIN_STEPS:g} step" if beyond else
                                "; a decisive example changes class"))
    return lines


def record_microcontroller(manifest: Manifest, report: ParityReport) -> None:
    """Parity's arena measurement and fit per device into the manifest's `tflm` entry (export may lack them)."""
    result = report.candidates.get(TFLM_ARTIFACT)
    if result is None or not manifest.has(TFLM_ARTIFACT):
        return
    section = result.microcontroller
    entry = dict(manifest.artifact(TFLM_ARTIFACT).entry)
    if section.arena.get("measured") or not (entry.get("arena") or {}).get("measured"):
        entry["arena"] = section.arena
    entry["fit"] = section.fit
    if report.budgets:
        entry["budgets"] = report.budgets.to_dict()
    manifest.set_artifact(TFLM_ARTIFACT, entry)


def litert_source(candidates: list[Artifact]) -> Artifact | None:
    """The tflite-int8 candidate the tflm candidate's C array was made from, as the manifest records it (its
    sha256), or None: the tflm check runs that artifact in LiteRT's built-in kernels (TFLM_BUILTIN)."""
    tflm = next((artifact for artifact in candidates if artifact.format == TFLM_FORMAT), None)
    int8 = next((artifact for artifact in candidates if artifact.name == INT8_ARTIFACT), None)
    if tflm is None or int8 is None or not int8.sha256 or tflm.get("source_sha256") != int8.sha256:
        return None
    return int8


def candidate_is_tflm(artifact: Artifact) -> bool:
    return artifact.format == TFLM_FORMAT

