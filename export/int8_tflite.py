"""The TFLite side of int8 recipes: full-integer, float layers (QuantizationDebugger), int16x8, and TFLM's view.

Layers kept in float go through the public `tf.lite.experimental.QuantizationDebugger`: one calibration per
calibration sample, then `QuantizationDebugOptions.denylisted_nodes` (the float layers' op output tensors) and
`get_nondebug_quantized_model()` for each candidate. Its mixed models keep float inputs and outputs.

When `tflm` is requested the same bytes become the C array, so a candidate must also pass as TFLite Micro runs it:
only ops TFLite Micro has kernels for, and the tuning figures measured with LiteRT's built-in kernels where those
are bit-identical to TFLite Micro's on `TFLM_IDENTITY_EXAMPLES` tuning inputs (checked per candidate: they differ
on some models), otherwise in TFLite Micro itself.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from kerasport.contract import ModelContract
from kerasport.devices import open_tflm, tflm_missing
from kerasport.errors import ConversionError
from kerasport.int8_recipe import Int8Recipe, judge_tuning
from kerasport.isolation import run_isolated
from kerasport.runtimes import RuntimeSettings, dequantize_output, quantize_input
from kerasport.samples import Samples
from kerasport.tflm_limits import tflm_limitations

from .int8_recipe import TFLM_IDENTITY_EXAMPLES, RecipeBackend, RecipeRequest, judge_file, run_tuning
from .tflm import TFLM_OPS
from .to_tflite import SIGNATURE, representative_dataset, tflite_io_details
from .tuning import TuningSet
from .variant import BuildContext

TFLM_VARIANT = "tflm"
FP32_TWIN = "tflite-fp32"


class TfliteRecipes(RecipeBackend):
    """Builds and judges tflite-int8 candidates for one export (see the module docstring)."""

    format = "tflite"
    calibration_methods: tuple[str, ...] = ()  # the TFLite calibrator records min/max only

    def __init__(self, context: BuildContext, request: RecipeRequest, scratch: Path):
        super().__init__(context, request, scratch)
        self._debuggers: dict[int, object] = {}
        self.for_tflm = TFLM_VARIANT in request.formats

    # -- building ----------------------------------------------------------------------------------------------
    def write(self, recipe: Int8Recipe, destination: Path) -> dict:
        """Write the model the recipe describes; returns the converter details the manifest records."""
        context, calibration = self.context, self.calibration(recipe)
        if recipe.activation_bits == 16:
            return _convert_int16x8(context, calibration, destination)
        if not recipe.float_layers:
            # The full-integer model climbs the same isolated conversion ladder as every other TFLite variant: a
            # converter that aborts costs this variant, and a recurrent model gets its batch-1 rung.
            from .tflite_ladder import build_tflite_ladder

            return build_tflite_ladder(context.saved_model, context.keras_model, destination, precision="int8",
                                       contract=context.contract, calibration=calibration,
                                       eval_sample=context.eval_sample, int8_io=context.int8_io,
                                       allow_select_tf_ops=context.allow_select_tf_ops)
        debugger = self._debugger(calibration)
        nodes = self._nodes_of(debugger.calibrated_model, set(recipe.float_layers))
        debugger.options.denylisted_nodes = nodes
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore")
            destination.write_bytes(debugger.get_nondebug_quantized_model())
        return {"ops_set": ["TFLITE_BUILTINS_INT8", "TFLITE_BUILTINS"], "calibration_samples": len(calibration),
                "io_dtype": "float32", "float_nodes": len(nodes),
                "quantizer": "tf.lite.experimental.QuantizationDebugger (denylisted_nodes)"}

    def _debugger(self, calibration: Samples):
        """One calibration per sample size; every float-layer candidate re-quantizes from it."""
        if len(calibration) not in self._debuggers:
            import tensorflow as tf

            contract = self.context.contract
            converter = tf.lite.TFLiteConverter.from_saved_model(str(self.context.saved_model),
                                                                 signature_keys=[SIGNATURE])
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: representative_dataset(calibration, contract)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
            ordered = [np.asarray(calibration.inputs[spec.name], dtype=spec.dtype) for spec in contract.inputs]
            options = tf.lite.experimental.QuantizationDebugOptions()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore")
                self._debuggers[len(calibration)] = tf.lite.experimental.QuantizationDebugger(
                    converter=converter, debug_options=options,
                    debug_dataset=lambda: ([array[i:i + 1] for array in ordered] for i in range(1)))
        return self._debuggers[len(calibration)]

    def _nodes_of(self, model: bytes, layers: set[str]) -> list[str]:
        """Every tensor name (and each `;`-joined part) the float layers own in the calibrated model."""
        names = []
        for name, owner in self._owners(model).items():
            if owner in layers:
                names += [name, *[part for part in name.split(";") if part]]
        return list(dict.fromkeys(names))

    def _owners(self, model: bytes) -> dict[str, str | None]:
        """Each tensor's Keras layer: by its name scopes, and a signature output by the layer producing it (the
        converter names the model's outputs after the signature, not after a scope)."""
        index = self.request.layers
        outputs = _signature_outputs(model)
        return {name: (index.output_layer(outputs[name]) if name in outputs
                       else index.owner([part for part in name.split(";") if part])) for name in _tensor_names(model)}

    # -- what the ladder asks ------------------------------------------------------------------------------------
    def layer_candidates(self) -> tuple[list[str], str]:
        if self.request.layers is None:
            return [], self.request.layers_missing
        if self.context.int8_io:
            return [], ("--int8-io: the QuantizationDebugger's mixed models keep float inputs and outputs, so "
                        "int8 edges allow no float layers")
        model = self._debugger(self.context.calibration).calibrated_model
        index = self.request.layers
        index.calibrate([[part for part in name.split(";") if part] for name in _tensor_names(model)])
        owners = set(self._owners(model).values()) - {None}
        return [node.name for node in index.nodes if node.name in owners], ""

    def int16_unavailable(self) -> str:
        if self.context.int8_io:
            return "--int8-io: int16x8 models have int16 inputs and outputs"
        return ""

    def fp32_twin(self) -> Path | None:
        built = self.context.built.get(FP32_TWIN)
        return built.path if built is not None else None

    def judge(self, path: Path) -> dict:
        figures = judge_file(path, "tflite", self.tuning, self.context.contract)
        if not self.for_tflm or not figures.get("passed"):
            return figures
        micro = self.tflm_figures(path)
        return {**figures, "tflm": micro, "passed": bool(micro.get("passed"))}

    def tflm_figures(self, path: Path) -> dict:
        """The tuning figures as TFLite Micro computes them (see the module docstring)."""
        ops = tflite_io_details(path, self.context.contract)["ops"]
        unsupported = sorted(set(ops) - TFLM_OPS)
        if unsupported:
            return {"passed": False, "error": f"ops without a TFLite Micro kernel: {', '.join(unsupported)}"}
        builtin = RuntimeSettings(xnnpack=False)
        missing = tflm_missing()
        if missing:
            figures = judge_file(path, "tflite", self.tuning, self.context.contract, builtin)
            return {**figures, "measured_with": f"LiteRT built-in kernels (TFLite Micro unavailable: {missing})"}
        limits = tflm_limitations(path.read_bytes())
        if limits:
            return {"passed": False, "error": f"TFLite Micro limitation: {'; '.join(limits)}"}
        head = Samples({name: array[:TFLM_IDENTITY_EXAMPLES] for name, array in self.tuning.samples.inputs.items()})
        try:  # TFLite Micro aborts (not raises) on some models: it runs in a child, a crash costs this recipe
            micro = run_isolated("TFLite Micro (int8 recipe)", tflm_outputs, path.read_bytes(), self.context.contract,
                                 head.inputs)
        except ConversionError as error:
            return {"passed": False, "error": str(error)}
        litert = run_tuning(path, "tflite", _head_tuning(self.tuning, head), builtin)
        if all(np.array_equal(micro[name], litert[name]) for name in micro):
            figures = judge_file(path, "tflite", self.tuning, self.context.contract, builtin)
            return {**figures, "measured_with": f"LiteRT built-in kernels (bit-identical to TFLite Micro on "
                                                f"{len(head)} tuning examples)"}
        try:
            outputs = run_isolated("TFLite Micro (int8 recipe)", tflm_outputs, path.read_bytes(),
                                   self.context.contract, self.tuning.samples.inputs)
        except ConversionError as error:
            return {"passed": False, "error": str(error)}
        figures = judge_tuning(self.context.contract, self.tuning.tolerance, self.tuning.reference, outputs,
                               self.tuning.samples.targets)
        return {**figures, "measured_with": "TFLite Micro (LiteRT's built-in kernels differ from it here)"}


def _head_tuning(tuning: TuningSet, head: Samples) -> TuningSet:
    return replace(tuning, samples=head)


def _tensor_names(model: bytes) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        interpreter = Interpreter(model_content=model)
    return [detail["name"] for detail in interpreter.get_tensor_details() if detail["name"]]


def _signature_outputs(model: bytes) -> dict[str, str]:
    """The signature's output tensor names -> contract output names."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model).get_signature_runner(SIGNATURE)
    return {detail["name"]: name for name, detail in runner.get_output_details().items()}


def tflm_outputs(model: bytes, contract: ModelContract, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run TFLite Micro one example at a time; inputs quantized and outputs dequantized as LiteRT describes them."""
    from ai_edge_litert.interpreter import Interpreter

    described = Interpreter(model_content=model)
    signature = described.get_signature_runner(SIGNATURE)
    by_tensor_in = {detail["name"]: name for name, detail in signature.get_input_details().items()}
    by_tensor_out = {detail["name"]: name for name, detail in signature.get_output_details().items()}
    input_details = [(by_tensor_in[detail["name"]], detail) for detail in described.get_input_details()]
    output_details = [(by_tensor_out[detail["name"]], detail) for detail in described.get_output_details()]
    interpreter = open_tflm(model)
    count = len(next(iter(inputs.values())))
    collected: dict[str, list[np.ndarray]] = {name: [] for name, _ in output_details}
    for example in range(count):
        for index, (name, detail) in enumerate(input_details):
            interpreter.set_input(quantize_input(np.asarray(inputs[name][example:example + 1]), detail), index)
        interpreter.invoke()
        for index, (name, detail) in enumerate(output_details):
            collected[name].append(dequantize_output(np.array(interpreter.get_output(index)), detail))
    return {name: np.concatenate(parts) for name, parts in collected.items() if name in contract.output_names}


def _convert_int16x8(context: BuildContext, calibration: Samples, destination: Path) -> dict:
    """TFLite's whole-model 16-bit activation / 8-bit weight mode (EXPERIMENTAL_..._INT16_WEIGHTS_INT8)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(context.saved_model), signature_keys=[SIGNATURE])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: representative_dataset(calibration, context.contract)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        destination.write_bytes(converter.convert())
    return {"ops_set": ["EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8"],
            "calibration_samples": len(calibration), "io_dtype": "float32"}
