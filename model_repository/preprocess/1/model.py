"""Triton python-backend model `preprocess`: encoded image bytes -> letterboxed uint8 RGB 224x224x3.

The decoding itself lives in `imaging.py` (pure, shared with training's evaluation); this file only
adapts it to Triton's request/response objects.
"""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

# The stub puts the model file's directory on sys.path in current releases; not relying on it keeps
# `imaging` importable in every Triton version this repository must load in.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from imaging import ImageDecodeError, preprocess_bytes  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        output = config["output"][0]
        self.output_name = output["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])
        # The output dims fix the size; config.pbtxt stays the one place it is declared.
        self.size = int(output["dims"][0])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                batch = np.empty((images.shape[0], self.size, self.size, 3), self.output_dtype)
                for i, item in enumerate(images.reshape(images.shape[0], -1)[:, 0]):
                    try:
                        batch[i] = preprocess_bytes(_as_bytes(item), size=self.size)
                    except ImageDecodeError as exc:
                        where = f"image {i} of {images.shape[0]} in the request: " if images.shape[0] > 1 else ""
                        raise ImageDecodeError(f"{where}{exc}") from None
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, batch)]))
            except ImageDecodeError as exc:
                # Only this request fails; the others of the dynamic batch still get their images.
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)))
            except Exception as exc:  # noqa: BLE001 - one response per request, even on a bug
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"preprocess failed: {type(exc).__name__}: {exc}")))
        return responses


def _as_bytes(item):
    # TYPE_STRING arrives as numpy object holding bytes; a client sending str gets it utf-8 encoded.
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    raise ImageDecodeError(f"expected bytes, got {type(item).__name__}")
