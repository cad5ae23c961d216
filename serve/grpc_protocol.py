"""The Open Inference Protocol's gRPC messages (`inference.ModelInferRequest` / `ModelInferResponse`) in and out.

Pure functions over the protobuf messages and the model contract, the gRPC counterpart of `protocol.py`: tensors
arrive in `raw_input_contents` (little-endian bytes, one buffer per input, in the order of `inputs` — what
tritonclient sends) or in the typed `contents` field of their datatype (`fp32_contents`, `int_contents`, ...), and
pass the same checks as the REST routes (`tensors.py`), so every malformed request raises `BadRequest` naming the
offending input. Outputs always go back as `raw_output_contents`, as Triton answers.

The message classes are the ones `tritonclient[grpc]` generates from Triton's published `grpc_service.proto`
(package `inference`): the same definitions every Triton/KServe gRPC client is built from.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tritonclient.grpc import service_pb2

from kerasport.contract import ModelContract

from .errors import BadRequest
from .protocol import RequestedOutput, V2Request, output_arrays
from .tensors import (
    array_from_binary,
    cast_checked,
    check_batch,
    check_datatype,
    check_names,
    check_shape,
    reshape,
    to_input,
)

# V2 datatype -> the typed `InferTensorContents` field that carries it (FP16 and BYTES have none here: raw only).
CONTENTS_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                   "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                   "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                   "FP64": "fp64_contents"}
# Each typed field's protobuf element type, as numpy reads it.
FIELD_DTYPES = {"bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
                "uint_contents": np.uint32, "uint64_contents": np.uint64, "fp32_contents": np.float32,
                "fp64_contents": np.float64}
# Parameters that ask for what this server does not offer; refused rather than silently ignored.
UNSUPPORTED_PARAMETERS = {"shared_memory_region": "the shared-memory extension",
                          "classification": "the classification extension"}


def parse_model_infer(request: service_pb2.ModelInferRequest, contract: ModelContract) -> V2Request:
    """A gRPC ModelInfer request -> model inputs keyed by the contract's names and in its dtypes.

    Args:
        request: the parsed `inference.ModelInferRequest`.
        contract: the served model's contract.

    Returns:
        The inputs, the outputs asked for (default: all, in contract order) and the request id.

    Raises:
        BadRequest: one line naming the offending input, output or field.
    """
    tensors = request.inputs
    names = [tensor.name for tensor in tensors]
    if not names:
        raise BadRequest(f"'inputs' is empty; expected one tensor per input {contract.input_names}")
    if len(set(names)) != len(names):
        raise BadRequest(f"input tensor names {names} repeat; expected each of {contract.input_names} once")
    check_names(dict.fromkeys(names), contract, "'inputs'")
    raw = request.raw_input_contents
    if raw and len(raw) != len(tensors):
        raise BadRequest(f"raw_input_contents holds {len(raw)} buffers for {len(tensors)} inputs; expected one per "
                         f"input, in the order of 'inputs' (or typed contents for every input)")
    inputs = {tensor.name: _tensor(tensor, contract, raw[index] if raw else None)
              for index, tensor in enumerate(tensors)}
    check_batch(inputs)
    return V2Request(inputs=inputs, outputs=requested_outputs(request, contract), id=request.id or None)


def decode_infer_request(data: bytes) -> service_pb2.ModelInferRequest:
    """The serialized bytes as a ModelInferRequest.

    Raises:
        BadRequest: bytes that are not one.
    """
    try:
        return service_pb2.ModelInferRequest.FromString(data)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError varies with its backend
        raise BadRequest(f"the request is not a valid inference.ModelInferRequest ({error})") from None


def _tensor(tensor, contract: ModelContract, buffer: bytes | None) -> np.ndarray:
    spec, where = contract.input(tensor.name), f"input {tensor.name!r}"
    _refuse_parameters(tensor.parameters, where)
    dtype = check_datatype(spec, tensor.datatype, where)
    shape = check_shape(list(tensor.shape), where)
    given = [field.name for field, _ in tensor.contents.ListFields()]
    if buffer is not None:
        if given:
            raise BadRequest(f"{where} has contents.{given[0]} while the request sends raw_input_contents; expected "
                             f"every input's data in one of the two")
        return to_input(spec, array_from_binary(buffer, dtype, shape, where), where)
    field = CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        raise BadRequest(f"{where}: datatype {tensor.datatype} has no typed contents field; send its data in "
                         f"raw_input_contents")
    if given and given != [field]:
        raise BadRequest(f"{where}: datatype {tensor.datatype} takes contents.{field}; received "
                         f"contents.{', contents.'.join(given)}")
    values = getattr(tensor.contents, field)
    array = np.fromiter(values, dtype=FIELD_DTYPES[field], count=len(values))
    if dtype.kind in "iu" and array.dtype != dtype:
        array = cast_checked(array, dtype, where)
    return to_input(spec, reshape(array.astype(dtype, copy=False), shape, where), where)


def _refuse_parameters(parameters: Mapping, where: str) -> None:
    for key, what in UNSUPPORTED_PARAMETERS.items():
        if key in parameters:
            raise BadRequest(f"{where}: parameter {key!r} asks for {what}, which this server does not offer")


def requested_outputs(request: service_pb2.ModelInferRequest, contract: ModelContract) -> list[RequestedOutput]:
    """The outputs a request asks for (default: all, in contract order); outputs go back as raw contents."""
    if not request.outputs:
        return [RequestedOutput(name, binary=True) for name in contract.output_names]
    unknown = [output.name for output in request.outputs if output.name not in contract.output_names]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; this model's outputs are {contract.output_names}")
    for output in request.outputs:
        _refuse_parameters(output.parameters, f"output {output.name!r}")
    return [RequestedOutput(output.name, binary=True) for output in request.outputs]


def encode_model_infer(outputs: Mapping[str, np.ndarray], request: V2Request, contract: ModelContract,
                       model_name: str, model_version: str) -> bytes:
    """The serialized ModelInferResponse: the requested outputs as raw little-endian contents."""
    arrays = output_arrays(outputs, contract)
    response = service_pb2.ModelInferResponse(model_name=model_name, model_version=model_version,
                                              id=request.id or "")
    for wanted in request.outputs:
        spec, array = contract.output(wanted.name), arrays[wanted.name]
        response.outputs.add(name=spec.name, datatype=spec.v2_datatype, shape=array.shape)
        response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return response.SerializeToString()
