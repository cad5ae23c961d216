"""The KServe V2 (Open Inference Protocol) and TF Serving REST formats: requests in, responses out.

Pure functions over parsed JSON and the model contract, with no HTTP in them: the route modules read bodies and
call these. Any number of named inputs and outputs, in the contract's datatypes; every malformed request raises
`BadRequest` naming the offending input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from kerasport.contract import ModelContract

from .errors import BadRequest
from .jsonio import dumps, loads
from .tensors import (
    array_from_binary,
    array_from_json,
    check_batch,
    check_datatype,
    check_names,
    check_shape,
    reshape,
    to_input,
)

TFS_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass
class V2Request:
    """A parsed V2 inference request: checked model inputs, the outputs wanted, the request id."""

    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput]
    id: str | None = None


def parse_json(body: bytes) -> object:
    """A request body parsed as JSON.

    Raises:
        BadRequest: an empty body or malformed JSON.
    """
    if not body:
        raise BadRequest("empty body; expected a JSON object")
    try:
        return loads(body)
    except (ValueError, RecursionError) as error:
        raise BadRequest(f"malformed JSON: {error}") from None


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} is {type(value).__name__}; expected a JSON object")
    return value


def parse_v2_infer(body: object, contract: ModelContract, binary: bytes = b"") -> V2Request:
    """A V2 inference request -> model inputs, keyed by the contract's names and in its dtypes.

    Args:
        body: the parsed JSON (the header, under the binary tensor data extension).
        contract: the served model's contract.
        binary: what followed the JSON header under the binary tensor data extension
            (`Inference-Header-Content-Length`): inputs with `parameters.binary_data_size` take their bytes from
            it, in the order the inputs are listed.

    Raises:
        BadRequest: one line naming the offending input or field.
    """
    body = _object(body, "the request body")
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or not tensors or not all(isinstance(t, dict) for t in tensors):
        received = f"{len(tensors)} items" if isinstance(tensors, list) else type(tensors).__name__
        raise BadRequest(f"'inputs' must be a non-empty list of tensor objects, one per input "
                         f"{contract.input_names}; received {received}")
    names = [tensor.get("name") for tensor in tensors]
    if not all(isinstance(name, str) for name in names):
        raise BadRequest(f"input tensor names {names}; expected strings among {contract.input_names}")
    if len(set(names)) != len(names):
        raise BadRequest(f"input tensor names {names} repeat; expected each of {contract.input_names} once")
    check_names(dict.fromkeys(names), contract, "'inputs'")
    inputs, offset, view = {}, 0, memoryview(binary)
    for tensor in tensors:
        array, offset = _v2_tensor(tensor, contract, view, offset)
        inputs[tensor["name"]] = array
    if offset != len(binary):
        raise BadRequest(f"the binary part of the body holds {len(binary)} bytes; the inputs' binary_data_size "
                         f"add up to {offset}")
    check_batch(inputs)
    return V2Request(inputs=inputs, outputs=requested_outputs(body, contract), id=_request_id(body))


def _v2_tensor(tensor: dict, contract: ModelContract, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    name = tensor["name"]
    spec, where = contract.input(name), f"input {name!r}"
    parameters = _object(tensor.get("parameters") or {}, f"{where} 'parameters'")
    size = parameters.get("binary_data_size")
    for key in ("shape", "datatype") + (() if size is not None else ("data",)):
        if key not in tensor:
            raise BadRequest(f"{where} is missing '{key}'; expected name, shape, datatype and data (or "
                             f"parameters.binary_data_size with a binary body)")
    dtype = check_datatype(spec, tensor["datatype"], where)
    shape = check_shape(tensor["shape"], where)
    if size is None:
        return to_input(spec, reshape(array_from_json(tensor["data"], dtype, where), shape, where), where), offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"{where}: binary_data_size {size!r}; expected a byte count")
    if offset + size > len(binary):
        raise BadRequest(f"{where}: the binary part of the body holds {len(binary) - offset} bytes from offset "
                         f"{offset}; binary_data_size says {size}")
    array = array_from_binary(binary[offset:offset + size], dtype, shape, where)
    return to_input(spec, array, where), offset + size


def requested_outputs(body: dict, contract: ModelContract) -> list[RequestedOutput]:
    """The outputs a V2 request asks for (default: all, in contract order), each as JSON or binary."""
    default_binary = bool(_object(body.get("parameters") or {}, "request 'parameters'").get("binary_data_output",
                                                                                           False))
    requested = body.get("outputs")
    if requested is None:
        return [RequestedOutput(name, default_binary) for name in contract.output_names]
    if not isinstance(requested, list) or not all(isinstance(o, dict) and "name" in o for o in requested):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    unknown = [o["name"] for o in requested if o["name"] not in contract.output_names]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; this model's outputs are {contract.output_names}")
    return [RequestedOutput(o["name"], bool(_object(o.get("parameters") or {}, f"output {o['name']!r} "
                                                    f"'parameters'").get("binary_data", default_binary)))
            for o in requested]


def _request_id(body: dict) -> str | None:
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' is {type(request_id).__name__}; expected a string")
    return request_id


def output_arrays(outputs: Mapping[str, np.ndarray], contract: ModelContract) -> dict[str, np.ndarray]:
    """The runtime's outputs in the contract's order and dtypes, C-contiguous (orjson serializes them as is)."""
    return {spec.name: np.ascontiguousarray(outputs[spec.name], dtype=spec.dtype) for spec in contract.outputs}


def v2_response(outputs: Mapping[str, np.ndarray], request: V2Request, contract: ModelContract, *,
                model_name: str, model_version: str) -> tuple[dict, bytes]:
    """The V2 response body and the binary part (non-empty when an output was asked for as binary data)."""
    arrays = output_arrays(outputs, contract)
    tensors, chunks = [], []
    for wanted in request.outputs:
        spec, array = contract.output(wanted.name), arrays[wanted.name]
        tensor: dict = {"name": spec.name, "datatype": spec.v2_datatype, "shape": list(array.shape)}
        if wanted.binary:
            payload = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(payload)}
            chunks.append(payload)
        else:
            tensor["data"] = array.ravel()
        tensors.append(tensor)
    response: dict = {"model_name": model_name, "model_version": model_version, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    return response, b"".join(chunks)


def parse_tfs_predict(body: object, contract: ModelContract) -> tuple[dict[str, np.ndarray], str]:
    """A TF Serving :predict request -> model inputs and the response layout ('row' or 'columnar').

    Row format: `instances`, a list of examples, each a value (single-input models) or an object keyed by input
    name. Columnar format: `inputs`, a batch-first value (single-input models) or an object keyed by input name.

    Raises:
        BadRequest: one line naming the offending instance or input.
    """
    body = _object(body, "the request body")
    signature = body.get("signature_name", TFS_SIGNATURE)
    if signature != TFS_SIGNATURE:
        raise BadRequest(f"signature_name {signature!r}; this model has only {TFS_SIGNATURE!r}")
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest("the request needs exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    if "instances" in body:
        return _tfs_rows(body["instances"], contract), "row"
    columns = body["inputs"]
    if not isinstance(columns, dict):
        if len(contract.inputs) > 1:
            raise BadRequest(f"'inputs' is {type(columns).__name__}; this model has inputs {contract.input_names}, "
                             f"so 'inputs' must be an object keyed by input name")
        columns = {contract.input_names[0]: columns}
    check_names(columns, contract, "'inputs'")
    inputs = {name: _tfs_input(contract, name, columns[name], f"input {name!r}") for name in contract.input_names}
    check_batch(inputs)
    return inputs, "columnar"


def _tfs_rows(instances: object, contract: ModelContract) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise BadRequest("'instances' must be a non-empty list of examples")
    keyed = [isinstance(instance, dict) for instance in instances]
    if not any(keyed):
        if len(contract.inputs) > 1:
            raise BadRequest(f"instance 0 is {type(instances[0]).__name__}; this model has inputs "
                             f"{contract.input_names}, so each instance must be an object keyed by input name")
        name = contract.input_names[0]
        return {name: _tfs_input(contract, name, instances, f"input {name!r} of 'instances'")}
    if not all(keyed):
        index = keyed.index(False)
        raise BadRequest(f"instance {index} is {type(instances[index]).__name__}; expected an object keyed by input "
                         f"name like the other instances")
    for index, instance in enumerate(instances):
        check_names(instance, contract, f"instance {index}")
    return {name: _tfs_input(contract, name, [instance[name] for instance in instances],
                             f"input {name!r} of 'instances'") for name in contract.input_names}


def _tfs_input(contract: ModelContract, name: str, values: object, where: str) -> np.ndarray:
    spec = contract.input(name)
    if not isinstance(values, list):
        raise BadRequest(f"{where} is {type(values).__name__}; expected a batch-first (nested) list of values")
    return to_input(spec, array_from_json(values, np.dtype(spec.dtype), where), where)


def tfs_response(outputs: Mapping[str, np.ndarray], contract: ModelContract, layout: str) -> dict:
    """As TF Serving answers: one output -> its values; several -> objects keyed by output name."""
    arrays = output_arrays(outputs, contract)
    names = contract.output_names
    if layout == "row":
        if len(names) == 1:
            return {"predictions": arrays[names[0]]}
        count = len(arrays[names[0]])
        return {"predictions": [{name: arrays[name][index] for name in names} for index in range(count)]}
    return {"outputs": arrays[names[0]] if len(names) == 1 else arrays}


# --- whole bodies in, encoded bodies out: module-level, picklable, so a worker process can run them -------------

def parse_v2_body(raw: bytes, header_length: int | None, contract: ModelContract) -> V2Request:
    """A V2 inference body -> the parsed request; `header_length` splits the JSON header from binary tensors.

    Raises:
        BadRequest: malformed JSON, or a request the contract refuses.
    """
    if header_length is None:
        return parse_v2_infer(parse_json(raw), contract)
    return parse_v2_infer(parse_json(raw[:header_length]), contract, raw[header_length:])


def encode_v2(outputs: Mapping[str, np.ndarray], request: V2Request, contract: ModelContract, model_name: str,
              model_version: str) -> tuple[bytes, int | None]:
    """The V2 response as bytes, and the JSON header's length when binary outputs follow it (else None)."""
    body, payload = v2_response(outputs, request, contract, model_name=model_name, model_version=model_version)
    header = dumps(body)
    return (header + payload, len(header)) if payload else (header, None)


def parse_tfs_body(raw: bytes, contract: ModelContract) -> tuple[dict[str, np.ndarray], str]:
    """A TF Serving :predict body -> model inputs and the response layout."""
    return parse_tfs_predict(parse_json(raw), contract)


def encode_tfs(outputs: Mapping[str, np.ndarray], contract: ModelContract, layout: str) -> bytes:
    return dumps(tfs_response(outputs, contract, layout))
