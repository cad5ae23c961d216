"""Microcontroller deployment facts shared by export and parity (core; no heavy imports).

- The device table: flash and SRAM of common TFLite Micro targets, each row naming the vendor document it comes
  from, and the fit of a model (flatbuffer in flash, tensor arena in SRAM) per device.
- The tensor arena: measured with TFLite Micro's recording allocator (`tflite_micro` is imported only here, and
  only when a measurement is asked for), checked by running the model in an arena of exactly that size, and the
  reserve recommended for firmware (`arena_reserve`, with the margin's reasons in ARENA_MARGIN_WHY).
- The generated C array read back (`parse_c_array`) and the `MicroMutableOpResolver::Add...()` name of each op.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ConversionError, UsageError

KIB = 1024


@dataclass(frozen=True)
class Device:
    """One microcontroller part: SRAM for the tensor arena, flash for the model, and where the figures come from."""

    key: str
    name: str
    core: str
    sram_kib: int
    flash_kib: int
    source: str

    @property
    def ram_bytes(self) -> int:
        return self.sram_kib * KIB

    @property
    def flash_bytes(self) -> int:
        return self.flash_kib * KIB


# Sizes as the vendors state them (their "KB" is 1024 bytes). On-chip SRAM is the whole part's: the firmware, a
# radio stack or an RTOS take their share, so "fits" is necessary, not sufficient. Flash is on-chip, or the
# module's / board's QSPI flash for parts without internal flash (RP2040, ESP32-S3).
DEVICES: dict[str, Device] = {device.key: device for device in (
    Device("samd21", "Microchip ATSAMD21G18 (Arduino Zero/MKR)", "Cortex-M0+", 32, 256,
           "Microchip SAM D21/DA1 Family Data Sheet (DS40001882)"),
    Device("rp2040", "Raspberry Pi RP2040 (Pico board)", "Cortex-M0+ x2", 264, 2048,
           "RP2040 Datasheet (264 KB SRAM); Raspberry Pi Pico Datasheet (2 MB QSPI flash)"),
    Device("stm32f411", "ST STM32F411xE", "Cortex-M4F", 128, 512,
           "ST STM32F411xC/xE datasheet (DS10314)"),
    Device("nrf52840", "Nordic nRF52840", "Cortex-M4F", 256, 1024,
           "Nordic nRF52840 Product Specification"),
    Device("nano33ble", "Arduino Nano 33 BLE (nRF52840)", "Cortex-M4F", 256, 1024,
           "Arduino Nano 33 BLE datasheet (ABX00030); Nordic nRF52840 Product Specification"),
    Device("stm32f746", "ST STM32F746xG (32F746G-DISCO)", "Cortex-M7", 320, 1024,
           "ST STM32F745xx/STM32F746xx datasheet (DS10916)"),
    Device("stm32h743", "ST STM32H743xI", "Cortex-M7", 1024, 2048,
           "ST STM32H742xI/G STM32H743xI/G datasheet (DS12110)"),
    Device("esp32s3", "Espressif ESP32-S3 (ESP32-S3-WROOM-1-N8 module)", "Xtensa LX7 x2", 512, 8192,
           "Espressif ESP32-S3 Series Datasheet (512 KB SRAM); ESP32-S3-WROOM-1 Datasheet (N8: 8 MB flash)"),
)}


def device(name: str) -> Device:
    """The device called `name` (its key, case-insensitive).

    Raises:
        UsageError: an unknown name; the message lists the known ones.
    """
    found = DEVICES.get(name.strip().lower())
    if found is None:
        raise UsageError(f"--device {name!r} is not in the device table; expected one of {', '.join(DEVICES)}")
    return found


def device_fit(flash_bytes: int, ram_bytes: int | None) -> dict[str, dict]:
    """Per device: whether the flatbuffer fits its flash and the arena reserve its SRAM (None: arena unknown).

    Returns:
        {device key: {"name", "core", "flash_bytes", "ram_bytes", "source", "flash", "ram", "fits",
        "flash_share", "ram_share"}}, the shares being the fraction of the part's flash / SRAM used.
    """
    fit = {}
    for key, part in DEVICES.items():
        ram_ok = None if ram_bytes is None else ram_bytes <= part.ram_bytes
        flash_ok = flash_bytes <= part.flash_bytes
        fit[key] = {"name": part.name, "core": part.core, "flash_bytes": part.flash_bytes,
                    "ram_bytes": part.ram_bytes, "source": part.source, "flash": flash_ok, "ram": ram_ok,
                    "fits": None if ram_ok is None else flash_ok and ram_ok,
                    "flash_share": round(flash_bytes / part.flash_bytes, 4),
                    "ram_share": None if ram_bytes is None else round(ram_bytes / part.ram_bytes, 4)}
    return fit


# ---- the tensor arena ------------------------------------------------------------------------------------------

ARENA_MARGIN = 0.10
ARENA_ROUNDING = KIB
ARENA_MARGIN_WHY = (
    "+10 %, rounded up to 1 KiB: the arena is measured on the host with TFLite Micro's reference kernels; the "
    "optimized kernels a part links instead (CMSIS-NN, ESP-NN) ask the arena for their own scratch buffers at "
    "Prepare, and another TFLite Micro release may plan the arena differently. (The host build is 64-bit, so its "
    "pointer-holding structs are larger than a 32-bit part's: that share is an over-estimate.)")
# The arena the measuring interpreter gets: large enough for any model a microcontroller could hold.
HOST_ARENA_BYTES = 64 * 1024 * KIB
ARENA_STEP = 16  # TFLite Micro aligns its arena buffers to 16 bytes
PROBE_TIMEOUT_S = 300
_TOTAL_LINE = re.compile(r"Arena allocation total (\d+) bytes")


def arena_reserve(used_bytes: int) -> int:
    """The arena to reserve in firmware for a measured `used_bytes`: +ARENA_MARGIN, rounded up to 1 KiB."""
    return math.ceil(used_bytes * (1 + ARENA_MARGIN) / ARENA_ROUNDING) * ARENA_ROUNDING


def tflm_missing() -> str | None:
    """None when TFLite Micro's Python interpreter imports here, else one line saying why not."""
    try:
        import tflite_micro  # noqa: F401
    except ImportError as error:
        return (f"tflite-micro is not importable here ({error}); install the pinned `tflite-micro` (the train "
                f"extra) to run the model in TFLite Micro and measure its arena")
    return None


def tflm_version() -> str:
    from tflite_micro import __version__

    return str(__version__)


@contextmanager
def captured_stderr() -> Iterator[Callable[[], str]]:
    """Redirect file descriptor 2 (where TFLite Micro's C++ code reports) and yield a reader of what was written."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)

        def read() -> str:
            sink.seek(0)
            return sink.read().decode(errors="replace")

        try:
            yield read
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def open_tflm(model: bytes, arena_bytes: int = HOST_ARENA_BYTES):
    """A TFLite Micro interpreter (recording allocator) over the flatbuffer `model`, its tensors allocated.

    Raises:
        ConversionError: TFLite Micro cannot allocate or prepare the model in `arena_bytes` (its own words).
    """
    from tflite_micro import runtime

    with captured_stderr() as said:
        try:
            return runtime.Interpreter.from_bytes(model, arena_size=arena_bytes)
        except Exception as error:  # noqa: BLE001 - the wrapper raises RuntimeError/ValueError with little detail
            detail = "; ".join(line for line in said().splitlines() if line.strip())[:300]
            raise ConversionError(f"TFLite Micro cannot prepare the model in a {arena_bytes}-byte arena: {error}"
                                  + (f" ({detail})" if detail else "")) from error


def invoke_zeros(interpreter, inputs: int) -> None:
    """One inference on all-zero inputs (each input in its own dtype and batch-1 shape)."""
    import numpy as np

    for index in range(inputs):
        details = interpreter.get_input_details(index)
        interpreter.set_input(np.zeros(details["shape"], dtype=details["dtype"]), index)
    interpreter.invoke()


def arena_used(interpreter) -> int:
    """The arena bytes TFLite Micro's recording allocator reports for an allocated interpreter.

    Raises:
        ConversionError: the report has no total (another tflite-micro print format).
    """
    with captured_stderr() as said:
        interpreter.print_allocations()
        text = said()
    match = _TOTAL_LINE.search(text)
    if match is None:
        raise ConversionError(f"TFLite Micro's allocation report has no 'Arena allocation total' line: "
                              f"{text.strip()[:200]!r}")
    return int(match.group(1))


# A probe of one arena size, in its own process: TFLite Micro can crash (not just fail) in an arena too small.
_PROBE = """import sys
import numpy as np
from tflite_micro import runtime
interpreter = runtime.Interpreter.from_bytes(open(sys.argv[1], "rb").read(), arena_size=int(sys.argv[2]))
for index in range(int(sys.argv[3])):
    details = interpreter.get_input_details(index)
    interpreter.set_input(np.zeros(details["shape"], dtype=details["dtype"]), index)
interpreter.invoke()
"""


def _runs_in(model_path: Path, inputs: int, arena_bytes: int) -> bool:
    """Whether the model prepares and runs one inference in an arena of `arena_bytes` (a child process)."""
    probe = subprocess.run([sys.executable, "-c", _PROBE, str(model_path), str(arena_bytes), str(inputs)],
                           capture_output=True, timeout=PROBE_TIMEOUT_S)
    return probe.returncode == 0


def _smallest_arena(model: Path, inputs: int, recorded: int) -> int:
    """The smallest arena (in ARENA_STEP steps) the model runs in, searched upward from the recorded total.

    The recording allocator's total leaves out temporary allocations made while kernels prepare, so a model can
    need a little more than it reports.
    """
    if _runs_in(model, inputs, recorded):
        return recorded
    low, step = recorded, ARENA_STEP
    while True:  # the first size that runs, doubling the step each time
        high = min(HOST_ARENA_BYTES, low + step)
        if _runs_in(model, inputs, high):
            break
        if high == HOST_ARENA_BYTES:
            raise ConversionError(f"TFLite Micro does not run the model even in a {HOST_ARENA_BYTES}-byte arena")
        low, step = high, 2 * step
    while high - low > ARENA_STEP:  # low fails, high runs
        middle = (low + high) // 2 // ARENA_STEP * ARENA_STEP
        if middle <= low:
            break
        low, high = (low, middle) if _runs_in(model, inputs, middle) else (middle, high)
    return high


def measure_arena(model: bytes, inputs: int) -> dict:
    """Measure the tensor arena `model` needs in TFLite Micro, and prove it runs in exactly that much.

    Args:
        model: the int8 flatbuffer.
        inputs: how many inputs the model has (each gets zeros for the inferences that check it).

    Returns:
        {"measured": True, "used_bytes" (the smallest arena it runs in), "recorded_bytes" (the recording
        allocator's total), "reserve_bytes", "margin", "why", "how", "tflite_micro"}.

    Raises:
        ConversionError: TFLite Micro cannot prepare or run the model.
    """
    interpreter = open_tflm(model)
    with captured_stderr() as said:
        try:
            invoke_zeros(interpreter, inputs)
            error = None
        except Exception as raised:  # noqa: BLE001 - the wrapper raises RuntimeError/ValueError
            error = raised
        detail = "; ".join(line.strip() for line in said().splitlines() if line.strip())[:300]
    if error is not None:
        # TFLite Micro's own words (the kernel that failed and why) are on stderr, not in the exception.
        raise ConversionError(f"TFLite Micro cannot run the model: {error}"
                              + (f" ({detail})" if detail else "")) from error
    recorded = arena_used(interpreter)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.tflite"
        path.write_bytes(model)
        used = _smallest_arena(path, inputs, recorded)
    return {"measured": True, "used_bytes": used, "recorded_bytes": recorded, "reserve_bytes": arena_reserve(used),
            "margin": ARENA_MARGIN, "why": ARENA_MARGIN_WHY,
            "how": "TFLite Micro's RecordingMicroAllocator total after one inference, raised (in 16-byte steps, "
                   "each size tried in a child process) to the smallest arena the model prepares and runs in",
            "tflite_micro": tflm_version()}


def unmeasured_arena(reason: str) -> dict:
    """The arena record when TFLite Micro is not available where the model was exported."""
    return {"measured": False, "why": reason}


# ---- the C array and the op resolver ---------------------------------------------------------------------------

def parse_c_array(source_text: str) -> bytes:
    """The bytes of a C array generated by `kerasport export` (the text of its .cc file).

    Vectorised: the seed model's 12 M `0xHH` tokens take ~0.3 s this way, ~6 s as one int() per token.

    Raises:
        ValueError: a token that is not `0x` followed by two hex digits.
    """
    import numpy as np

    body = source_text[source_text.index("= {") + 3:source_text.index("};")]
    text = np.frombuffer(body.encode("ascii"), dtype=np.uint8)
    marks = np.flatnonzero((text == ord("x")) | (text == ord("X")))
    if marks.size and marks[-1] + 2 >= text.size:
        raise ValueError("the C array ends inside a 0xHH token")
    digits = np.full(256, 255, dtype=np.uint8)
    for value, char in enumerate("0123456789abcdef"):
        digits[ord(char)] = digits[ord(char.upper())] = value
    high, low = digits[text[marks + 1]], digits[text[marks + 2]]
    if (high == 255).any() or (low == 255).any() or body.count(",") + 1 < marks.size:
        raise ValueError("the C array holds a token that is not 0x followed by two hex digits")
    return ((high << 4) | low).astype(np.uint8).tobytes()


# Where the CamelCase of the TFLite op name is not the MicroMutableOpResolver method's name.
_RESOLVER_EXCEPTIONS = {"PADV2": "PadV2", "CUMSUM": "CumSum", "BATCH_MATMUL": "BatchMatMul",
                        "UNIDIRECTIONAL_SEQUENCE_LSTM": "UnidirectionalSequenceLSTM"}


def resolver_method(op: str) -> str:
    """The `tflite::MicroMutableOpResolver` method that registers a TFLite op (CONV_2D -> AddConv2D)."""
    camel = _RESOLVER_EXCEPTIONS.get(op) or "".join(
        part if part[:1].isdigit() else part.capitalize() for part in op.split("_"))
    return f"Add{camel}"
