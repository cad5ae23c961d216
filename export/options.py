"""`kerasport export`'s options, declared once: `kerasport export` and `kerasport run` both take `ExportArgs`.

Each field is one command-line option (see `kerasport.cli_options`); its name is the `ExportOptions` field it sets,
so an option added here reaches the export stage from both commands. No TensorFlow import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from kerasport.cli_options import DEFAULT_RUN, RunOption

from .variants import DEFAULT_FORMATS, DEFAULT_OPSET, parse_formats

if TYPE_CHECKING:
    from .stage import ExportOptions


@dataclass
class ExportArgs:
    run: RunOption = DEFAULT_RUN
    formats: Annotated[str, typer.Option("--formats", help="Comma list of variants.")] = ",".join(DEFAULT_FORMATS)
    opset: Annotated[int, typer.Option(
        "--opset", help=f"ONNX opset ({DEFAULT_OPSET}: the newest tf2onnx 1.17 emits; onnxruntime runs it).")
    ] = DEFAULT_OPSET
    calibration_samples: Annotated[int, typer.Option(
        "--calibration-samples", help="Training images used to calibrate int8 (ONNX and TFLite).")] = 200
    int8_io: Annotated[bool, typer.Option(
        "--int8-io", help="tflite-int8/tflm take and return int8 tensors (microcontrollers).")] = False
    allow_select_tf_ops: Annotated[bool, typer.Option(
        "--allow-select-tf-ops", help="Allow TensorFlow ops outside the TFLite built-ins.")] = False
    int8_recipe: Annotated[str, typer.Option(
        "--int8-recipe", help="onnx-int8/tflite-int8/tflm: auto (full int8, or the fewest float layers that pass "
                              "the gate's int8 bounds on the tuning sample), full, or a recipe JSON file "
                              "(export writes export/<variant>.recipe.json).")] = "auto"
    keep_going: Annotated[bool, typer.Option(
        "--keep-going", help="Keep the variants that convert; record the others as failed in the manifest.")] = False

    def options(self) -> ExportOptions:
        """The `ExportOptions` these options ask for (unknown --formats raise UsageError: exit 2)."""
        from .stage import ExportOptions

        return ExportOptions(**{**dataclasses.asdict(self), "formats": parse_formats(self.formats)})
