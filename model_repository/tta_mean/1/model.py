"""Triton python-backend model `tta_mean`: averages the classifier's probabilities over TTA views.

The mean of softmax vectors is again a probability vector, so the ensemble output keeps the meaning
of the plain ensemble's `probabilities`.
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_names = [spec["name"] for spec in config["input"]]
        output = config["output"][0]
        self.output_name = output["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                views = [pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                         for name in self.input_names]
                mean = np.mean(np.stack(views), axis=0).astype(self.output_dtype)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, mean)]))
            except Exception as exc:  # noqa: BLE001 - one response per request, always
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"tta_mean failed: {exc}", pb_utils.TritonError.INVALID_ARG)))
        return responses
