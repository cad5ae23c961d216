"""The onnxruntime side of int8 recipes: static QDQ quantization with `nodes_to_exclude`, 16-bit activations and
other calibration methods, all through `onnxruntime.quantization.quantize_static`.

The full-integer recipe is exactly what `to_onnx.quantize_onnx_static` writes (today's onnx-int8); every other
recipe quantizes the same pre-processed float graph with the recipe's switches, so a saved recipe reproduces its
bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasport.contract import ModelContract
from kerasport.errors import ConversionError
from kerasport.int8_recipe import ONNX_WEIGHTS, Int8Recipe, onnx_static_quantization
from kerasport.samples import Samples

from .int8_recipe import RecipeBackend, RecipeRequest, judge_file
from .messages import first_line
from .to_onnx import quantize_onnx_static
from .variant import BuildContext

FP32_TWIN = "onnx-fp32"
CALIBRATION_BATCH = 16


class CalibrationBatches:
    """Feeds a calibration sample to onnxruntime.quantization: one dict of every input per step."""

    def __init__(self, calibration: Samples, contract: ModelContract, batch_size: int = CALIBRATION_BATCH):
        inputs = {spec.name: np.asarray(calibration.inputs[spec.name], dtype=spec.dtype) for spec in contract.inputs}
        self._batches = iter([{name: array[start:start + batch_size] for name, array in inputs.items()}
                              for start in range(0, len(calibration), batch_size)])

    def get_next(self):
        return next(self._batches, None)


class OnnxRecipes(RecipeBackend):
    """Builds and judges onnx-int8 candidates for one export."""

    format = "onnx"
    calibration_methods = ("percentile", "entropy")

    def __init__(self, context: BuildContext, request: RecipeRequest, scratch: Path):
        super().__init__(context, request, scratch)
        self.fp32 = context.prerequisite(FP32_TWIN).path
        self._prepared: Path | None = None

    def prepared(self) -> Path:
        """The float graph after onnxruntime's quantization pre-processing (shape inference, folding), once."""
        if self._prepared is None:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            self._prepared = self.scratch / "prepared.onnx"
            quant_pre_process(str(self.fp32), str(self._prepared), skip_symbolic_shape=True)
        return self._prepared

    def write(self, recipe: Int8Recipe, destination: Path) -> dict:
        """Write the model the recipe describes; returns the quantizer details the manifest records.

        Raises:
            ConversionError: onnxruntime's quantizer fails.
        """
        calibration = self.calibration(recipe)
        if recipe.is_full:
            return quantize_onnx_static(self.fp32, destination, calibration, contract=self.context.contract,
                                        scratch=self.scratch)
        from onnxruntime.quantization import quantize_static

        nodes = self.nodes_of(set(recipe.float_layers))
        try:
            # The histogram calibrators stack every batch's tensors into one array: batches of one example keep
            # them equal-shaped (a short last batch makes onnxruntime's stacking fail).
            batch = CALIBRATION_BATCH if recipe.calibration_method == "minmax" else 1
            quantize_static(str(self.prepared()), str(destination),
                            CalibrationBatches(calibration, self.context.contract, batch),
                            nodes_to_exclude=nodes,
                            **onnx_static_quantization(activation_bits=recipe.activation_bits,
                                                       calibration_method=recipe.calibration_method))
        except Exception as error:  # noqa: BLE001 - the quantizer raises many types
            raise ConversionError(f"onnxruntime static quantization with recipe ({recipe.describe()}) failed: "
                                  f"{first_line(error)}") from error
        bits = "uint16" if recipe.activation_bits == 16 else "uint8"
        method = recipe.calibration_method
        return {"quantization": f"static QDQ, {ONNX_WEIGHTS}, {bits} activations, {method}",
                "calibration_samples": len(calibration), "float_nodes": len(nodes)}

    def _graph_scopes(self) -> list[tuple[str, list[str]]]:
        import onnx

        graph = onnx.load(str(self.prepared()), load_external_data=False).graph
        return [(node.name, [node.name, *node.output]) for node in graph.node if node.name]

    def nodes_of(self, layers: set[str]) -> list[str]:
        """The pre-processed graph's nodes the float layers own (`nodes_to_exclude`)."""
        if not layers:
            return []
        return [name for name, scopes in self._graph_scopes() if self.request.layers.owner(scopes) in layers]

    def layer_candidates(self) -> tuple[list[str], str]:
        if self.request.layers is None:
            return [], self.request.layers_missing
        scopes = [scope for _, scope in self._graph_scopes()]
        index = self.request.layers
        index.calibrate(scopes)
        owners = {index.owner(scope) for scope in scopes} - {None}
        return [node.name for node in index.nodes if node.name in owners], ""

    def int16_unavailable(self) -> str:
        return ""

    def fp32_twin(self) -> Path | None:
        return self.fp32

    def judge(self, path: Path) -> dict:
        return judge_file(path, "onnx", self.tuning, self.context.contract)
