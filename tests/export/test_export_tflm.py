"""The `tflm` artifact of the `edge` model: the C array compiles (C++ and from C), its header registers exactly the
model's ops, and the manifest records the measured arena, the flash, the MACs and the fit per device."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from kerasport.devices import ARENA_MARGIN, DEVICES, KIB, arena_reserve, resolver_method
from kerasport.export.stage import ExportOptions, export_bundle
from kerasport.export.tflm import (
    ADD_OPS_FUNCTION,
    ARENA_MACRO,
    ARRAY_NAME,
    OP_COUNT_MACRO,
    TFLM_OPS,
    read_c_array,
)
from kerasport.manifest import load_manifest

COMPILER = shutil.which("c++")
C_COMPILER = shutil.which("cc")
needs_compiler = pytest.mark.skipif(COMPILER is None or C_COMPILER is None or shutil.which("nm") is None,
                                    reason="needs the host C/C++ compiler and nm")
ARENA_BAR = 64 * KIB  # the bar for `edge`


@pytest.fixture
def edge(edge_exported) -> Path:
    """The shared edge bundle (tests/conftest.py), read-only here."""
    return edge_exported


def model_ops(tflite: Path) -> set[str]:
    """The model's operators as LiteRT reads them from the flatbuffer."""
    return {op["op_name"] for op in Interpreter(model_path=str(tflite))._get_ops_details()}


def files(run: Path) -> tuple[Path, Path, Path]:
    manifest = load_manifest(run)
    return (manifest.artifact("tflm").resolve(run), manifest.artifact("tflm-header").resolve(run),
            manifest.artifact("tflite-int8").resolve(run))


@needs_compiler
def test_c_array_compiles_and_the_object_holds_the_model(edge, tmp_path):
    source, header, tflite = files(edge)
    obj = tmp_path / "model.o"
    subprocess.run([COMPILER, "-std=c++17", "-Wall", "-Werror", "-c", str(source), "-o", str(obj)], check=True)
    symbols = subprocess.run(["nm", "-S", "--defined-only", str(obj)], capture_output=True, text=True,
                             check=True).stdout
    sizes = {parts[3]: (int(parts[1], 16), parts[2]) for parts in map(str.split, symbols.splitlines())
             if len(parts) == 4}
    assert sizes[ARRAY_NAME] == (tflite.stat().st_size, "R")  # read-only data, exactly the model's bytes
    assert sizes[f"{ARRAY_NAME}_len"] == (4, "R")
    # The header from C: link a C program against the C++ object and read the length and the flatbuffer tag.
    program = tmp_path / "use.c"
    program.write_text(f'#include <stdio.h>\n#include "{header.name}"\n'
                       f'int main(void) {{ printf("%u %d %.4s\\n", {ARRAY_NAME}_len, {OP_COUNT_MACRO}, '
                       f'(const char*)({ARRAY_NAME} + 4)); return 0; }}\n')
    subprocess.run([C_COMPILER, "-std=c11", "-Wall", "-Werror", f"-I{header.parent}", "-c", str(program), "-o",
                    str(tmp_path / "use.o")], check=True)
    subprocess.run([COMPILER, str(tmp_path / "use.o"), str(obj), "-o", str(tmp_path / "use")], check=True)
    length, op_count, identifier = subprocess.run([str(tmp_path / "use")], capture_output=True, text=True,
                                                  check=True).stdout.split()
    assert int(length) == tflite.stat().st_size and identifier == "TFL3"
    assert int(op_count) == len(model_ops(tflite))
    assert read_c_array(source) == tflite.read_bytes()


@needs_compiler
def test_op_resolver_snippet_registers_exactly_the_models_ops(edge, tmp_path):
    source, header, tflite = files(edge)
    ops = model_ops(tflite)
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= ops  # what an `edge` classifier is made of
    # A stand-in resolver with a method for every op TFLM knows: the snippet must compile against it and call,
    # once each, the methods of the model's ops and no other.
    methods = "".join(f'  int {resolver_method(op)}() {{ std::puts("{resolver_method(op)}"); return 0; }}\n'
                      for op in sorted(TFLM_OPS))
    program = tmp_path / "resolver.cc"
    program.write_text(f'#include <cstdio>\n#include "{header.name}"\nstruct Recorder {{\n{methods}}};\n'
                       f"int main() {{ Recorder r; return {ADD_OPS_FUNCTION}(r); }}\n")
    subprocess.run([COMPILER, "-std=c++17", "-Wall", "-Werror", f"-I{header.parent}", str(program), str(source),
                    "-o", str(tmp_path / "resolver")], check=True)
    calls = subprocess.run([str(tmp_path / "resolver")], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(calls) == sorted(resolver_method(op) for op in ops)
    assert len(set(calls)) == len(calls)
    assert {"AddConv2D", "AddFullyConnected", "AddSoftmax"} <= set(calls)
    recorded = load_manifest(edge).artifact("tflm").get("op_resolver")
    assert recorded == {"size": len(ops), "calls": sorted(calls), "file": header.name}
    assert f"#define {OP_COUNT_MACRO} {len(ops)}" in header.read_text()


def keras_macs(model) -> int:
    """MACs of the Keras model's Conv2D and Dense layers at batch 1, from the layers' own shapes."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            height, width, filters = layer.output.shape[1:]
            kernel_h, kernel_w = layer.kernel_size
            total += height * width * filters * kernel_h * kernel_w * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def test_manifest_records_arena_flash_macs_and_fit(edge):
    manifest = load_manifest(edge)
    tflm = manifest.artifact("tflm")
    _, header, tflite = files(edge)
    arena = tflm.get("arena")
    assert arena["measured"] and 0 < arena["used_bytes"] < ARENA_BAR
    assert arena["reserve_bytes"] == arena_reserve(arena["used_bytes"])
    assert arena["reserve_bytes"] % KIB == 0 and arena["reserve_bytes"] >= arena["used_bytes"] * (1 + ARENA_MARGIN)
    assert arena["why"] and arena["tflite_micro"]
    assert f"#define {ARENA_MACRO} {arena['reserve_bytes']}" in header.read_text()
    assert tflm.get("flash_bytes") == tflite.stat().st_size
    model = keras.saving.load_model(manifest.artifact("keras").resolve(edge), compile=False)
    assert tflm.get("macs")["total"] == keras_macs(model) > 0
    assert set(tflm.get("macs")["by_op"]) == {"CONV_2D", "FULLY_CONNECTED"}
    fit = tflm.get("fit")
    assert set(fit) == set(DEVICES)
    for key, part in DEVICES.items():
        assert fit[key]["flash"] == (tflite.stat().st_size <= part.flash_kib * KIB)
        assert fit[key]["ram"] == (arena["reserve_bytes"] <= part.sram_kib * KIB)
        assert fit[key]["fits"] == (fit[key]["flash"] and fit[key]["ram"])
    assert tflm.get("source_sha256") == manifest.artifact("tflite-int8").sha256


def test_export_without_tflite_micro_records_the_arena_as_unmeasured(edge, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(edge, run)
    monkeypatch.setitem(sys.modules, "tflite_micro", None)  # what `import tflite_micro` meets when not installed
    export_bundle(ExportOptions(run=str(run), formats=["tflite-int8", "tflm"], calibration_samples=20))
    tflm = load_manifest(run).artifact("tflm")
    assert tflm.get("arena")["measured"] is False and "tflite-micro is not importable" in tflm.get("arena")["why"]
    assert all(fit["ram"] is None and fit["flash"] for fit in tflm.get("fit").values())
    header = load_manifest(run).artifact("tflm-header").resolve(run).read_text()
    assert ARENA_MACRO not in header and re.search(rf"#define {OP_COUNT_MACRO} \d+", header)
    assert np.array_equal(np.frombuffer(read_c_array(tflm.resolve(run)), np.uint8),
                          np.frombuffer(files(run)[2].read_bytes(), np.uint8))
