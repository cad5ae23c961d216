"""`:classify`: encoded pictures in, top-k labels out, for models with one image input and a classification output.

Each picture is decoded and resized exactly as the contract's image spec says (height, width, grayscale or RGB)
by `kerasport.images`, the same code training and `kerasport predict` use. Its header is read first: a picture
over `--max-image-pixels` is refused (413, naming its size) before any pixel is decompressed; decoding runs in a
worker thread (Pillow releases the GIL), one picture at a time per request, so a request's memory stays bounded.
"""

from __future__ import annotations

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kerasport.contract import InputSpec, OutputSpec
from kerasport.images import decode_image_bytes

from .errors import BadRequest, NotFound
from .jsonio import dumps
from .state import ServingState
from .tensors import pictures_to_input, top_k

DEFAULT_TOP_K = 5
MAX_PARTS = 256
# Pillow formats :classify accepts (the ones the API documents).
FORMATS = ("PNG", "JPEG")


def decode_pictures(pictures: list[tuple[str, bytes]], image: InputSpec, max_pixels: int) -> np.ndarray:
    """Every picture decoded to the image input's spec, checked against the pixel limit from its header first."""
    decoded = [decode_image_bytes(data, image.image, origin=name, max_pixels=max_pixels, formats=FORMATS)
               for name, data in pictures]
    return pictures_to_input(image, np.stack(decoded), f"input {image.name!r}")


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

    def _classifier(self, state: ServingState) -> tuple[InputSpec, OutputSpec]:
        model = state.model
        contract = model.contract
        image, output = contract.image_input, contract.classification_output
        if image is None or output is None:
            inputs = ", ".join(f"{spec.name} ({spec.kind})" for spec in contract.inputs)
            outputs = ", ".join(f"{spec.name} ({spec.kind})" for spec in contract.outputs)
            raise NotFound(f"model {model.name!r} has no :classify (inputs: {inputs}; outputs: {outputs}); it needs "
                           f"one image input and a classification output; use :predict or "
                           f"/v2/models/{model.name}/infer")
        return image, output

    async def classify(self, request: Request) -> Response:
        image, output = self._classifier(self.state.check_model(request))
        k = parse_top_k(request.query_params.get("top_k", str(DEFAULT_TOP_K)), output.width)
        pictures = await uploaded_pictures(request)
        # The version this request runs on, taken again after the upload arrived (a hot swap may have happened).
        state = self.state.check_model(request)
        image, output = self._classifier(state)

        async def parse():
            batch = await state.offload.thread(decode_pictures, pictures, image, state.settings.max_image_pixels)
            return {image.name: batch}, None

        async def respond(outputs, _):
            return self._answer(state, pictures, outputs, output, k)

        return Response(await state.run_inference(parse, respond), media_type="application/json")

    def _answer(self, state: ServingState, pictures: list[tuple[str, bytes]], outputs: dict, output: OutputSpec,
                k: int) -> bytes:
        others = [spec for spec in state.model.contract.outputs if spec.name != output.name]
        results = []
        for index, (name, _) in enumerate(pictures):
            result = {"file": name, "top_k": top_k(np.asarray(outputs[output.name][index]).ravel(), output, k)}
            if others:
                result["outputs"] = {spec.name: np.asarray(outputs[spec.name][index], dtype=spec.dtype).tolist()
                                     for spec in others}
            results.append(result)
        model = state.model
        return dumps({"model_name": model.name, "model_version": model.version, "variant": model.variant,
                      "output": output.name, "results": results})

    def routes(self) -> list[Route]:
        return [Route("/v1/models/{name}:classify", self.classify, methods=["POST"]),
                Route("/v1/models/{name}/versions/{version}:classify", self.classify, methods=["POST"])]
