"""Stand-in for Triton's OpenVINO backend, as a Python-based backend on the `openvino` runtime.

NVIDIA's tritonserver containers ship an `openvino` backend; the bundled tritonserver of the
nvidia-pytriton wheel does not, so `<backend-dir>/openvino/model.py` serves every model whose config
says `backend: "openvino"`, and the repository stays what the container serves natively. It follows
the native backend's rules (triton-inference-server/openvino_backend, `src/openvino.cc`):

- the model file is `<version>/model.xml` unless `default_model_filename` names another format the
  runtime reads (`model.onnx` here: the same ONNX file the onnxruntime backend serves);
- config parameters, as strings: `INFERENCE_NUM_THREADS`, `COMPILATION_NUM_THREADS` (non-negative
  numbers), `HINT_BF16` (`YES`: bfloat16 inference precision), `NUM_STREAMS` (`AUTO`, `NUMA` or a
  number), `PERFORMANCE_HINT` (`LATENCY`, `THROUGHPUT`, `CUMULATIVE_THROUGHPUT`), `TARGET_DEVICE`
  (`CPU`, the only device here); a bad value refuses the model; other keys are ignored.

`HINT_BF16` asks for bfloat16 where the CPU has it (AVX512_BF16 or AMX); on a CPU without, OpenVINO
keeps float32. The precision the compiled model really uses is logged at load.

CPU pinning is off: each instance is its own stub process with its own OpenVINO core, and each
pins its threads to the same first cores, so two single-thread instances shared one core
(`python -m benchmarks.openvino_pinning`: 2 such processes 159 images/s pinned, 308 unpinned, on a
2-core AMD EPYC, 2026-12-04); the operating system spreads unpinned processes over the cores.
"""
import json
import sys
from pathlib import Path

import openvino as ov
import triton_python_backend_utils as pb_utils

# standin_common.py sits one level up: in the source tree and in the built backend directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from standin_common import (BatchRunner, check_graph_io, find_model_file,  # noqa: E402
                            string_parameter, verify_export_digest)

#: The native backend's parameter keys that become compile properties, in its order.
DEVICE_PARAMETERS = ("INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS", "HINT_BF16", "NUM_STREAMS",
                     "PERFORMANCE_HINT")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.batch = BatchRunner(config, self.model_name, "openvino")
        device = (string_parameter(config, "TARGET_DEVICE") or "CPU").upper()
        if device != "CPU":
            raise ValueError(f"{self.model_name}: TARGET_DEVICE {device!r}: this stand-in serves CPU only")
        if string_parameter(config, "CPU_EXTENSION_PATH"):
            raise ValueError(f"{self.model_name}: CPU_EXTENSION_PATH is not supported by this stand-in")

        model_path = find_model_file(args, config, "model.xml")
        verify_export_digest(self.model_name, model_path)
        core = ov.Core()
        model = core.read_model(str(model_path))
        for kind, specs, ports in (("input", self.batch.inputs, model.inputs),
                                   ("output", self.batch.outputs, model.outputs)):
            check_graph_io(self.model_name, kind, specs, _port_dtypes(ports))
        properties = compile_properties(config, self.model_name)
        self.compiled = core.compile_model(model, device, properties)
        self.request = self.compiled.create_infer_request()
        self.output_names = [spec.name for spec in self.batch.outputs]
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        pb_utils.Logger.log_info(
            f"{args['model_instance_name']}: openvino {ov.__version__} (stand-in backend) on {model_path}, "
            f"{device} {properties}, inference precision {precision}, "
            f"threads {self.compiled.get_property('INFERENCE_NUM_THREADS')}, "
            f"streams {self.compiled.get_property('NUM_STREAMS')}")

    def execute(self, requests):
        return self.batch.execute(requests, self._run)

    def _run(self, feed):
        # share_inputs: no copy of the batch into the request (dtypes were checked per request, so
        # OpenVINO's silent casting on copy never applies); the arrays outlive this blocking call.
        self.request.infer(feed, share_inputs=True)
        # Copies: the request's output buffers are reused by the next batch.
        return [self.request.get_tensor(name).data.copy() for name in self.output_names]

    def finalize(self):
        self.request = self.compiled = None


def compile_properties(config, model_name):
    """OpenVINO compile properties from the native backend's parameter keys (see module docstring)."""
    properties = {"ENABLE_CPU_PINNING": False}  # see the module docstring
    for key in DEVICE_PARAMETERS:
        value = string_parameter(config, key)
        if value is None:
            continue
        value = value.strip().lower()
        if key in ("INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS"):
            if not value.isdigit():
                raise ValueError(f"{model_name}: expected the parameter '{key}' to be a non-negative "
                                 f"number, got {value}")
            properties[key] = int(value)
        elif key == "HINT_BF16":
            if value != "yes":
                raise ValueError(f"{model_name}: expected the parameter '{key}' to be YES, got {value}")
            properties["INFERENCE_PRECISION_HINT"] = "bf16"
        elif key == "NUM_STREAMS":
            if value not in ("auto", "numa") and not value.isdigit():
                raise ValueError(f"{model_name}: expected the parameter '{key}' to be either "
                                 f"AUTO/NUMA/<int_value>, got {value}")
            properties[key] = value.upper() if not value.isdigit() else int(value)
        else:  # PERFORMANCE_HINT
            if value not in ("latency", "throughput", "cumulative_throughput"):
                raise ValueError(f"{model_name}: expected the parameter '{key}' to be "
                                 f"LATENCY/THROUGHPUT/CUMULATIVE_THROUGHPUT, got {value}")
            properties[key] = value.upper()
    return properties


def _port_dtypes(ports):
    dtypes = {}
    for port in ports:
        try:
            dtype = port.get_element_type().to_dtype()
        except (RuntimeError, TypeError, ValueError):
            dtype = None
        for name in port.get_names():
            dtypes[name] = dtype
    return dtypes
