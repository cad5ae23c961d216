"""`:classify`: encoded pictures in, top-k labels out, for models with one image input and a classification output.

Each picture is decoded and resized exactly as the contract's image spec says (height, width, grayscale or RGB)
by `kerasport.images`, the same code training and `kerasport predict` use.
"""

from __future__ import annotations

import numpy as np
from starlette.requests import Request
from starlette.routing import Route

from kerasport.contract import InputSpec, OutputSpec
from kerasport.images import decode_image_bytes

from .errors import BadRequest, NotFound
from .jsonio import JsonResponse
from .state import ServingState
from .tensors import pictures_to_input, top_k

DEFAULT_TOP_K = 5
MAX_PARTS = 256


def parse_top_k(text: str, width: int) -> int:
    if not text.isdigit() or int(text) < 1:
        raise BadRequest(f"top_k={text!r}; expected a positive integer")
    return min(int(text), width)


async def uploaded_pictures(request: Request) -> list[tuple[str, bytes]]:
    """(name, bytes) of each picture: the raw body, or every file part of a multipart form."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return [("body", await request.body())]
    form = await request.form(max_files=MAX_PARTS, max_fields=MAX_PARTS)
    uploads = [(key, value) for key, value in form.multi_items() if hasattr(value, "read")]
    if not uploads:
        raise BadRequest("multipart body has no file parts; expected one or more image files")
    return [(value.filename or key, await value.read()) for key, value in uploads]


class ImageEndpoints:
    def __init__(self, state: ServingState):
        self.state = state

    def _classifier(self) -> tuple[InputSpec, OutputSpec]:
        model = self.state.model
        contract = model.contract
        image, output = contract.image_input, contract.classification_output
        if image is None or output is None:
            inputs = ", ".join(f"{spec.name} ({spec.kind})" for spec in contract.inputs)
            outputs = ", ".join(f"{spec.name} ({spec.kind})" for spec in contract.outputs)
            raise NotFound(f"model {model.name!r} has no :classify (inputs: {inputs}; outputs: {outputs}); it needs "
                           f"one image input and a classification output; use :predict or "
                           f"/v2/models/{model.name}/infer")
        return image, output

    async def classify(self, request: Request) -> JsonResponse:
        self.state.check_model(request)
        image, output = self._classifier()
        k = parse_top_k(request.query_params.get("top_k", str(DEFAULT_TOP_K)), output.width)
        pictures = await uploaded_pictures(request)
        where = f"input {image.name!r}"
        batch = pictures_to_input(image, np.stack([decode_image_bytes(data, image.image, origin=name)
                                                   for name, data in pictures]), where)
        outputs = await self.state.infer({image.name: batch})
        others = [spec for spec in self.state.model.contract.outputs if spec.name != output.name]
        results = []
        for index, (name, _) in enumerate(pictures):
            result = {"file": name, "top_k": top_k(np.asarray(outputs[output.name][index]).ravel(), output, k)}
            if others:
                result["outputs"] = {spec.name: np.asarray(outputs[spec.name][index], dtype=spec.dtype).tolist()
                                     for spec in others}
            results.append(result)
        model = self.state.model
        return JsonResponse({"model_name": model.name, "model_version": model.version, "variant": model.variant,
                             "output": output.name, "results": results})

    def routes(self) -> list[Route]:
        return [Route("/v1/models/{name}:classify", self.classify, methods=["POST"]),
                Route("/v1/models/{name}/versions/{version}:classify", self.classify, methods=["POST"])]
