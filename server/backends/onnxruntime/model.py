"""Stand-in for Triton's native ONNX Runtime backend, as a Python-based backend.

The tritonserver shipped in the nvidia-pytriton wheel has no onnxruntime backend. Triton's
"Python-based backends" mechanism loads `<backend-dir>/onnxruntime/model.py` for every model whose
config says `backend: "onnxruntime"`, so the model repository stays exactly what NVIDIA's container
serves with the native backend. Everything here therefore follows the native backend's rules:
config tensor names must be the ONNX graph's names, `default_model_filename` defaults to
`model.onnx`, the thread count comes from the native parameter `intra_op_thread_count`, and
`optimization { execution_accelerators { cpu_execution_accelerator: [{ name: "openvino" }] } }`
adds ONNX Runtime's OpenVINO execution provider on device CPU with no further options (what the
native backend's `src/onnxruntime.cc` does), any other name being refused.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# standin_common.py sits one level up: in the source tree and in the built backend directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from standin_common import (BatchRunner, check_graph_io, find_model_file,  # noqa: E402
                            instance_count, string_parameter, verify_export_digest)

# Same key as the native backend, so a config tuned here means the same thing in the container.
THREADS_PARAMETER = "intra_op_thread_count"
# Environment override for this stand-in only (e.g. a shared CI box), read at model load.
THREADS_ENV = "WASTE_ORT_INTRA_OP_THREADS"
#: The one CPU execution accelerator the native backend knows (built with OpenVINO support).
OPENVINO_ACCELERATOR = "openvino"
OPENVINO_PROVIDER = "OpenVINOExecutionProvider"

_ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.batch = BatchRunner(config, self.model_name, "onnxruntime")

        model_path = find_model_file(args, config, "model.onnx")
        verify_export_digest(self.model_name, model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = _intra_op_threads(config)
        # Parallelism across requests comes from Triton instances; inside one run, a second pool
        # would only compete for the same two cores.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = execution_providers(config, self.model_name, ort.get_available_providers())
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        for kind, specs, graph in (("input", self.batch.inputs, self.session.get_inputs()),
                                   ("output", self.batch.outputs, self.session.get_outputs())):
            check_graph_io(self.model_name, kind, specs, {n.name: _ORT_TO_NUMPY.get(n.type) for n in graph})
        self.output_names = [spec.name for spec in self.batch.outputs]
        pb_utils.Logger.log_info(
            f"{args['model_instance_name']}: onnxruntime {ort.__version__} (stand-in backend) on "
            f"{model_path}, intra_op_num_threads={options.intra_op_num_threads}, "
            f"providers={self.session.get_providers()}")

    def execute(self, requests):
        return self.batch.execute(requests, lambda feed: self.session.run(self.output_names, feed))

    def finalize(self):
        self.session = None


def execution_providers(config, model_name, available):
    """ONNX Runtime providers for `config`'s CPU execution accelerators, highest priority first.

    Mirrors the native backend: "openvino" puts the OpenVINO execution provider (device CPU) before
    the default CPU provider; an unknown name refuses the model. The PyPI wheel `onnxruntime` has no
    OpenVINO provider and `onnxruntime-openvino` replaces it (both install the package
    `onnxruntime`), so on this venv the route is refused with a pointer to backend "openvino".
    """
    accelerators = (config.get("optimization", {}).get("execution_accelerators", {})
                    .get("cpu_execution_accelerator", []))
    providers = []
    for accelerator in accelerators:
        name = accelerator.get("name", "")
        if name != OPENVINO_ACCELERATOR:
            raise ValueError(f"{model_name}: unknown Execution Accelerator '{name}' is requested")
        if OPENVINO_PROVIDER not in available:
            raise ValueError(
                f"{model_name}: execution accelerator 'openvino' needs an onnxruntime built with the "
                f"{OPENVINO_PROVIDER} (this one has {available}); the same OpenVINO runtime is served "
                f"here by backend \"openvino\" (server/backends/openvino)")
        providers.append((OPENVINO_PROVIDER, {"device_type": "CPU"}))
    return providers + ["CPUExecutionProvider"]


def _intra_op_threads(config):
    override = os.environ.get(THREADS_ENV)
    if override:
        return max(1, int(override))
    parameter = string_parameter(config, THREADS_PARAMETER)
    if parameter and int(parameter) > 0:
        return int(parameter)
    # Default: share the cores between this model's instances instead of each instance spawning
    # one thread per core (onnxruntime's default), which oversubscribes a small box at once.
    return max(1, (os.cpu_count() or 1) // instance_count(config))
