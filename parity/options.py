"""`kerasport parity`'s options, declared once as an option group (see `kerasport.cli_options`).

Each field is one command-line option; `ParityArgs.options()` turns them into the stage's `ParityOptions`. No
TensorFlow import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from kerasport.cli_options import DEFAULT_RUN, RunOption
from kerasport.perf import DEFAULT_BUDGET_S

if TYPE_CHECKING:
    from .stage import ParityOptions

TFLM_HELP = ("sample: run the tflm candidate in TFLite Micro on a bounded sample, and take the rest from LiteRT's "
             "built-in kernels where they are bit-identical there; full: every example in TFLite Micro.")


@dataclass
class ParityArgs:
    run: RunOption = DEFAULT_RUN
    sweep: Annotated[bool, typer.Option(
        "--sweep/--no-sweep", help="Also run ORT optimization levels, LiteRT with/without XNNPACK, 1 and 2 threads.")
    ] = True
    fp32_atol: Annotated[float | None, typer.Option("--fp32-atol", help="Override the fp32 max |diff| tolerance.")
                         ] = None
    fp16_atol: Annotated[float | None, typer.Option("--fp16-atol", help="Override the fp16 max |diff| tolerance.")
                         ] = None
    int8_min_agreement: Annotated[float | None, typer.Option(
        "--int8-min-agreement", help="Override int8 top-1 agreement.")] = None
    int8_max_accuracy_drop: Annotated[float | None, typer.Option(
        "--int8-max-accuracy-drop", help="Override the int8 accuracy drop (0.005 = 0.5 pp).")] = None
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of the generated edge inputs (recorded in the report).")] = 0
    device: Annotated[str | None, typer.Option(
        "--device", help="Budget the tflm artifact to a device's flash and SRAM (rp2040, nrf52840, stm32f746, ...; "
                         "an unknown name lists them).")] = None
    max_flash_kib: Annotated[float | None, typer.Option(
        "--max-flash-kib", help="Flash budget of the tflm model, KiB.")] = None
    max_ram_kib: Annotated[float | None, typer.Option(
        "--max-ram-kib", help="RAM budget of the tflm tensor arena (reserve incl. margin), KiB.")] = None
    explain: Annotated[bool | None, typer.Option(
        "--explain/--no-explain", help="Compare every ONNX/TFLite candidate with Keras layer by layer and name the "
                                       "first layer beyond tolerance; for int8, rank the costliest layers and try "
                                       "fixes (default: only the candidates that fail; --no-explain: none, for a "
                                       "gate that only needs its verdict).")] = None
    baseline: Annotated[str | None, typer.Option(
        "--baseline", metavar="OTHER_RUN", help="A previous release's run directory: compare both on its pinned eval "
                                                "slice (flips, accuracy Δ with CI, output shift).")] = None
    max_accuracy_drop: Annotated[float | None, typer.Option(
        "--max-accuracy-drop", help="With --baseline: fail if accuracy drops more (0.01 = 1 pp). Also limits the "
                                    "server recommendation to candidates within this drop of the reference.")] = None
    max_flips: Annotated[int | None, typer.Option(
        "--max-flips", help="With --baseline: fail on more top-1 flips.")] = None
    tflm: Annotated[str, typer.Option("--tflm", help=TFLM_HELP)] = "sample"
    perf: Annotated[bool | None, typer.Option(
        "--perf/--no-perf", help="After the gate, measure each passing candidate's load time, latency, throughput "
                                 "and memory (each in its own process) and recommend a variant per target "
                                 "(default: on, unless KERASPORT_PERF=0).")] = None
    perf_seconds: Annotated[float, typer.Option(
        "--perf-seconds", help="Time cap of the measurement.")] = DEFAULT_BUDGET_S

    def options(self) -> ParityOptions:
        """The `ParityOptions` these options ask for."""
        from kerasport.perf import perf_by_default

        from .stage import ParityOptions

        overrides = {"fp32": {"atol": self.fp32_atol}, "fp16": {"atol": self.fp16_atol},
                     "int8": {"min_agreement": self.int8_min_agreement,
                              "max_accuracy_drop": self.int8_max_accuracy_drop}}
        return ParityOptions(run=self.run, sweep=self.sweep, overrides=overrides, seed=self.seed, device=self.device,
                             max_flash_kib=self.max_flash_kib, max_ram_kib=self.max_ram_kib, explain=self.explain,
                             baseline=self.baseline, max_accuracy_drop=self.max_accuracy_drop,
                             max_flips=self.max_flips, tflm=self.tflm,
                             perf=perf_by_default() if self.perf is None else self.perf,
                             perf_seconds=self.perf_seconds)
