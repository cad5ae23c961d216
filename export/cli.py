"""`kerasport export`: a thin typer shell over `export.stage.export_bundle`."""

from __future__ import annotations

import json

import typer

from kerasport.cli_support import console, user_errors

from .variants import DEFAULT_FORMATS, DEFAULT_OPSET, parse_formats


@user_errors
def export_command(
    run: str = typer.Option("build", "--run", help="Run directory written by `kerasport train`."),
    formats: str = typer.Option(",".join(DEFAULT_FORMATS), "--formats", help="Comma list of variants."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset",
                              help="ONNX opset (18: the newest tf2onnx 1.17 emits; onnxruntime runs it)."),
    calibration_samples: int = typer.Option(200, "--calibration-samples",
                                            help="Training images used to calibrate int8 (ONNX and TFLite)."),
    int8_io: bool = typer.Option(False, "--int8-io",
                                 help="tflite-int8/tflm take and return int8 tensors (microcontrollers)."),
    allow_select_tf_ops: bool = typer.Option(False, "--allow-select-tf-ops",
                                             help="Allow TensorFlow ops outside the TFLite built-ins."),
    json_output: bool = typer.Option(False, "--json", help="Print the exported variants as JSON on stdout."),
) -> None:
    """Convert the run's SavedModel to ONNX and TFLite variants and record them in the manifest."""
    from .stage import ExportOptions, export_bundle

    options = ExportOptions(run=run, formats=parse_formats(formats), opset=opset,
                            calibration_samples=calibration_samples, int8_io=int8_io,
                            allow_select_tf_ops=allow_select_tf_ops)
    out = console()
    result = export_bundle(options, console=out)
    print_export_table(out, result)
    if json_output:
        typer.echo(json.dumps(result.rows))


def print_export_table(out, result) -> None:
    from rich.table import Table

    table = Table(title=f"kerasport export → {result.run_dir}/export")
    for column, justify in (("variant", "left"), ("file", "left"), ("size", "right"), ("seconds", "right")):
        table.add_column(column, justify=justify)
    for row in result.rows:
        table.add_row(row["variant"], row["file"], f"{row['bytes'] / 1e6:.2f} MB", f"{row['seconds']:.2f}")
    out.print(table)
    tflm = result.manifest["artifacts"].get("tflm")
    if tflm and any(row["variant"] == "tflm" for row in result.rows):
        fits = [device for device, ok in tflm["fits_flash"].items() if ok]
        out.print(f"tflm: {tflm['model_bytes'] / 1024:.0f} KiB int8 model; every op supported by TFLM: "
                  f"{tflm['all_ops_supported']}"
                  + (f" (unsupported: {', '.join(tflm['unsupported_ops'])})" if tflm["unsupported_ops"] else "")
                  + f"; fits: {', '.join(fits) if fits else 'none of the listed devices'}")
