"""The fp16 bound follows the stored graph's own float16 rounding (parity/fp16_error.py)."""

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from test_parity import refresh_hash

from kerasport.parity.fp16_error import STORED_GRAPH_SOURCE, round_float_constants
from kerasport.parity.stage import ParityOptions, run_parity
from kerasport.verdict import Verdict


def constants(model: bytes) -> dict[int, np.ndarray]:
    interpreter = Interpreter(model_content=model)
    found = {}
    for detail in interpreter.get_tensor_details():
        try:
            found[detail["index"]] = interpreter.get_tensor(detail["index"]).copy()
        except ValueError:
            continue
    return found


def test_every_float_constant_is_rounded_to_float16_and_nothing_else(exported):
    model = (exported / "export" / "model_fp32.tflite").read_bytes()
    rounded, count = round_float_constants(model)
    before, after = constants(model), constants(rounded)
    assert count > 0 and len(rounded) == len(model) and rounded != model
    weights = [index for index, values in before.items() if values.dtype == np.float32 and values.ndim >= 2]
    assert weights
    for index in weights:
        assert np.array_equal(after[index], before[index].astype(np.float16).astype(np.float32)), index


def test_fp16_bound_follows_the_stored_graph_and_a_planted_fault_still_fails(exported_copy):
    report = run_parity(ParityOptions(run=str(exported_copy), sweep=False, perf=False)).report
    fp16 = report.candidates["tflite-fp16"]
    assert fp16.verdict == Verdict.PASS and fp16.fp16_error["source"] == STORED_GRAPH_SOURCE, fp16.fp16_error
    output = next(iter(report.outputs))
    measured, actual = fp16.fp16_error["outputs"][output]["eval"], fp16.eval_stats(output)["max_abs_diff"]
    # the rounded tflite-fp32 graph is the fp16 artifact's arithmetic: the same error, up to float32 rounding
    assert abs(measured - actual) <= 1e-3 * actual + 1e-5, (measured, actual)

    path = exported_copy / "export" / "model_fp16.tflite"
    data = bytearray(path.read_bytes())
    largest = max((v for v in constants(bytes(data)).values() if v.dtype == np.float16 and v.ndim >= 2),
                  key=lambda v: v.size)
    offset = bytes(data).find(largest.tobytes())
    assert offset > 0
    perturbed = largest.copy()
    perturbed.flat[: perturbed.size // 10] *= np.float16(1.5)
    data[offset:offset + largest.nbytes] = perturbed.tobytes()
    path.write_bytes(bytes(data))
    refresh_hash(exported_copy, "tflite-fp16")
    faulty = run_parity(ParityOptions(run=str(exported_copy), sweep=False, perf=False)).report
    assert faulty.candidates["tflite-fp16"].verdict == Verdict.FAIL
    assert faulty.candidates["tflite-fp16"].fp16_error["source"] == STORED_GRAPH_SOURCE
