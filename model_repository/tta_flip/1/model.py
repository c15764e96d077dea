"""Triton python-backend model `tta_flip`: the horizontally mirrored view for test-time augmentation.

Kept as its own model so every `<name>_tta` ensemble shares it and the view is computed on the
server, not by clients.
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                # NHWC: axis 2 is width; copy because a negative-stride view cannot be handed to Triton.
                flipped = np.ascontiguousarray(images[:, :, ::-1, :])
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, flipped)]))
            except Exception as exc:  # noqa: BLE001 - one response per request, always
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"tta_flip failed: {exc}", pb_utils.TritonError.INVALID_ARG)))
        return responses
