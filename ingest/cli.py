"""`kerasport import`: a thin typer shell over `import_stage.import_model`. Imports no TensorFlow until it runs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Annotated

import typer

from kerasport.cli_options import DEFAULT_RUN, RunOption, takes_options
from kerasport.cli_support import console, user_errors

_HELP_DATA = ("npz:FILE (one array per input name, or x; targets y or y:<output>) | images:DIR (one sub-folder "
              "per class, or a flat folder of pictures) for a model with one image input.")


@dataclass
class ImportArgs:
    run: RunOption = DEFAULT_RUN
    eval_data: Annotated[str | None, typer.Option(
        "--eval-data", help=f"Held-out inputs and targets: {_HELP_DATA} Default: generated noise, no targets.")
    ] = None
    calibration_data: Annotated[str | None, typer.Option(
        "--calibration-data", help="Representative inputs for int8, same forms. Default: the eval inputs.")] = None
    tuning_data: Annotated[str | None, typer.Option(
        "--tuning-data", help="Inputs (and targets) the int8 recipe search judges on, same forms; keep them apart "
                              "from --eval-data. Default: the calibration inputs, the model's answers as targets "
                              "(agreement only).")] = None
    labels: Annotated[str | None, typer.Option(
        "--labels", help="Class names: FILE (one per line) or a,b,c.")] = None
    task: Annotated[str, typer.Option(
        "--task", help="classification | regression | auto (from the output activation).")] = "auto"
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: from SOURCE).")] = None
    version: Annotated[str, typer.Option("--version", help="Model version.")] = "1"
    custom_objects: Annotated[str | None, typer.Option(
        "--custom-objects", help="package.module imported first, so its registered custom layers load.")] = None
    input_range: Annotated[str | None, typer.Option(
        "--input-range", help="lo,hi of every input's values (default: inferred from the data and recorded).")
    ] = None
    input_kind: Annotated[str, typer.Option(
        "--input-kind", help="image | tensor | auto (rank-4 inputs with 1 or 3 channels are images).")] = "auto"
    eval_samples: Annotated[int, typer.Option(
        "--eval-samples", help="Most held-out examples kept for parity.")] = 1000
    calibration_samples: Annotated[int, typer.Option(
        "--calibration-samples", help="Most examples kept for int8 calibration.")] = 200
    unsafe: Annotated[bool, typer.Option(
        "--unsafe", help="Load with Keras safe_mode off (Lambda layers run Python code from the file).")] = False
    seed: Annotated[int, typer.Option("--seed", help="Seed for subsampling and generated inputs.")] = 42

    def options(self, source: str):
        from .stage import ImportOptions

        return ImportOptions(source=source, **dataclasses.asdict(self))


@user_errors
@takes_options
def import_command(
    source: Annotated[str, typer.Argument(
        help="A .keras or .h5 file, a TF SavedModel directory, or package.module:function returning a model.",
        show_default=False)],
    args: ImportArgs,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Import a Keras model trained elsewhere into a bundle that export, parity and serve read."""
    from .stage import import_model

    result = import_model(args.options(source))
    print_import_summary(console(), result)
    if json_output:
        typer.echo(json.dumps(result.summary()))


def print_import_summary(out, result) -> None:
    from rich.table import Table

    table = Table(title=f"kerasport import → {result.run_dir} ({result.manifest.name} v{result.manifest.version}, "
                        f"{result.manifest.task})")
    for column in ("", "name", "kind", "dtype"):
        table.add_column(column)
    table.add_column("shape", no_wrap=True, min_width=8)
    table.add_column("range / labels", overflow="fold")
    for spec in result.contract.inputs:
        value_range = "—" if spec.value_range is None else f"{spec.value_range[0]:.4g}..{spec.value_range[1]:.4g}"
        table.add_row("input", spec.name, spec.kind, spec.dtype, _shape(spec.shape), value_range)
    for spec in result.contract.outputs:
        labels = ", ".join(spec.labels) if spec.labels else "—"
        table.add_row("output", spec.name, spec.kind, spec.dtype, _shape(spec.shape), labels)
    out.print(table)
    data = "generated (no targets: parity reports agreement only)" if result.synthetic else (
        "labelled" if result.labelled else "unlabelled")
    out.print(f"eval sample: {result.eval_examples} examples, {data}; calibration: "
              f"{result.calibration_examples} examples; {result.seconds:.1f} s")


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join("batch" if i == 0 else str(d) for i, d in enumerate(shape)) + "]"
