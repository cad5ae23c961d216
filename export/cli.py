"""`kerasport export`: a thin typer shell over `export.stage.export_bundle`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from kerasport.cli_options import takes_options
from kerasport.cli_support import console, user_errors

from .options import ExportArgs


@user_errors
@takes_options
def export_command(
    args: ExportArgs,
    json_output: Annotated[bool, typer.Option("--json", help="Print the exported variants as JSON on stdout.")] = False,
) -> None:
    """Convert the run's SavedModel to ONNX and TFLite variants and record them in the manifest."""
    from .stage import export_bundle

    out = console()
    result = export_bundle(args.options(), console=out)
    print_export_table(out, result)
    if json_output:
        typer.echo(json.dumps(result.rows))


def print_export_table(out, result) -> None:
    from rich.table import Table

    table = Table(title=f"kerasport export → {result.run_dir}/export")
    for column, justify in (("variant", "left"), ("file", "left"), ("size", "right"), ("seconds", "right")):
        table.add_column(column, justify=justify)
    for row in result.rows:
        ok = row.get("status", "ok") == "ok"  # --keep-going: a failed variant (reason printed above)
        table.add_row(row["variant"], row["file"], f"{row['bytes'] / 1e6:.2f} MB" if ok else "failed",
                      f"{row['seconds']:.2f}")
    out.print(table)
    tflm = result.manifest.artifact("tflm").entry if result.manifest.has("tflm") else None
    if tflm and tflm.get("status", "ok") == "ok" and any(row["variant"] == "tflm" for row in result.rows):
        fits = [device for device, ok in tflm["fits_flash"].items() if ok]
        out.print(f"tflm: {tflm['model_bytes'] / 1024:.0f} KiB int8 model; every op supported by TFLM: "
                  f"{tflm['all_ops_supported']}"
                  + (f" (unsupported: {', '.join(tflm['unsupported_ops'])})" if tflm["unsupported_ops"] else "")
                  + f"; fits: {', '.join(fits) if fits else 'none of the listed devices'}")
    for line in recipe_lines(result):
        out.print(line)


def recipe_lines(result) -> list[str]:
    """One line per exported int8 variant: the recipe it shipped with and how it was chosen."""
    lines = []
    for row in result.rows:
        if row.get("status", "ok") != "ok" or not result.manifest.has(row["variant"]):
            continue
        record = result.manifest.artifact(row["variant"]).get("int8_recipe")
        if isinstance(record, dict):
            search = f", search {record['search_seconds']:.1f} s" if record.get("search_seconds") is not None else ""
            lines.append(f"int8 recipe {row['variant']}: {record['summary']} ({record['mode']}{search}; "
                         f"{record.get('outcome', 'applied as given')}) → export/{record['file']}")
    return lines
