"""`kerasport parity`: a thin typer shell over `parity.stage.run_parity` — the release gate."""

from __future__ import annotations

import json

import typer

from kerasport.cli_options import DEFAULT_RUN, RunOption
from kerasport.cli_support import console, fail, user_errors


@user_errors
def parity_command(
    run: RunOption = DEFAULT_RUN,
    sweep: bool = typer.Option(True, "--sweep/--no-sweep",
                               help="Also run ORT optimization levels, LiteRT with/without XNNPACK, 1 and 2 threads."),
    fp32_atol: float = typer.Option(None, "--fp32-atol", help="Override the fp32 max |diff| tolerance."),
    fp16_atol: float = typer.Option(None, "--fp16-atol", help="Override the fp16 max |diff| tolerance."),
    int8_min_agreement: float = typer.Option(None, "--int8-min-agreement", help="Override int8 top-1 agreement."),
    int8_max_accuracy_drop: float = typer.Option(None, "--int8-max-accuracy-drop",
                                                 help="Override the int8 accuracy drop (0.005 = 0.5 pp)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated edge inputs (recorded in the report)."),
    device: str = typer.Option(None, "--device", help="Budget the tflm artifact to a device's flash and SRAM "
                               "(rp2040, nrf52840, stm32f746, ...; an unknown name lists them)."),
    max_flash_kib: float = typer.Option(None, "--max-flash-kib", help="Flash budget of the tflm model, KiB."),
    max_ram_kib: float = typer.Option(None, "--max-ram-kib",
                                      help="RAM budget of the tflm tensor arena (reserve incl. margin), KiB."),
    explain: bool = typer.Option(False, "--explain", help="Compare every ONNX/TFLite candidate with Keras layer by "
                                 "layer and name the first layer beyond tolerance; for int8, rank the costliest layers "
                                 "and try fixes (a failing candidate is explained even without it)."),
    baseline: str = typer.Option(None, "--baseline", metavar="OTHER_RUN",
                                 help="A previous release's run directory: compare both on its pinned eval slice "
                                      "(flips, accuracy Δ with CI, output shift)."),
    max_accuracy_drop: float = typer.Option(None, "--max-accuracy-drop",
                                            help="With --baseline: fail if accuracy drops more (0.01 = 1 pp). "
                                                 "Also limits the server recommendation to candidates within this "
                                                 "drop of the reference."),
    max_flips: int = typer.Option(None, "--max-flips", help="With --baseline: fail on more top-1 flips."),
    tflm: str = typer.Option("sample", "--tflm", help="sample: run the tflm candidate in TFLite Micro on a bounded "
                             "sample, and take the rest from LiteRT's built-in kernels where they are bit-identical "
                             "there; full: every example in TFLite Micro."),
    perf: bool = typer.Option(None, "--perf/--no-perf", help="After the gate, measure each passing candidate's "
                              "load time, latency, throughput and memory (each in its own process) and recommend a "
                              "variant per target (default: on, unless KERASPORT_PERF=0)."),
    perf_seconds: float = typer.Option(90.0, "--perf-seconds", help="Time cap of the measurement."),
    json_output: bool = typer.Option(False, "--json", help="Print report.json on stdout."),
) -> None:
    """Check every exported artifact against Keras on held-out data; exit 1 if any check fails."""
    from kerasport.perf import perf_by_default

    from .stage import ParityOptions, run_parity

    overrides = {"fp32": {"atol": fp32_atol}, "fp16": {"atol": fp16_atol},
                 "int8": {"min_agreement": int8_min_agreement, "max_accuracy_drop": int8_max_accuracy_drop}}
    out = console()
    result = run_parity(ParityOptions(run=run, sweep=sweep, overrides=overrides, seed=seed, device=device,
                                      max_flash_kib=max_flash_kib, max_ram_kib=max_ram_kib, explain=explain,
                                      baseline=baseline, max_accuracy_drop=max_accuracy_drop, max_flips=max_flips,
                                      tflm=tflm, perf=perf_by_default() if perf is None else perf,
                                      perf_seconds=perf_seconds),
                        console=out)
    print_parity_summary(out, result)
    if json_output:
        typer.echo(json.dumps(result.report, default=float))
    if result.exit_code:
        first = result.failures[0] if result.failures else "see the report"
        raise fail(f"parity gate failed ({len(result.failures)} failing checks; first: {first}); "
                   f"report: {result.run_dir}/parity/report.md", result.exit_code)


def print_parity_summary(out, result) -> None:
    from .reports import summary_lines

    for line in summary_lines(result.report, result.run_dir):
        out.print(line)
