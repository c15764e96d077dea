"""Stand-in for Triton's native ONNX Runtime backend, as a Python-based backend.

The tritonserver shipped in the nvidia-pytriton wheel has no onnxruntime backend. Triton's
"Python-based backends" mechanism loads `<backend-dir>/onnxruntime/model.py` for every model whose
config says `backend: "onnxruntime"`, so the model repository stays exactly what NVIDIA's container
serves with the native backend. Everything here therefore follows the native backend's rules:
config tensor names must be the ONNX graph's names, `default_model_filename` defaults to
`model.onnx`, and the thread count comes from the native parameter `intra_op_thread_count`.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# Same key as the native backend, so a config tuned here means the same thing in the container.
THREADS_PARAMETER = "intra_op_thread_count"
# Environment override for this stand-in only (e.g. a shared CI box), read at model load.
THREADS_ENV = "WASTE_ORT_INTRA_OP_THREADS"

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
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.inputs = [_TensorSpec.from_config(spec) for spec in config["input"]]
        self.outputs = [_TensorSpec.from_config(spec) for spec in config["output"]]

        model_path = _find_model_file(args, config)
        _verify_export_digest(self.model_name, model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = _intra_op_threads(config)
        # Parallelism across requests comes from Triton instances; inside one run, a second pool
        # would only compete for the same two cores.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        _check_io(self.model_name, self.session, self.inputs, self.outputs)
        self.output_names = [spec.name for spec in self.outputs]
        pb_utils.Logger.log_info(
            f"{args['model_instance_name']}: onnxruntime {ort.__version__} (stand-in backend) on "
            f"{model_path}, intra_op_num_threads={options.intra_op_num_threads}")

    def execute(self, requests):
        responses = [None] * len(requests)
        accepted = []  # (request index, {input name: array})
        for index, request in enumerate(requests):
            try:
                accepted.append((index, self._read_inputs(request)))
            except ValueError as exc:
                # Only this request fails; the rest of the dynamic batch still runs below.
                responses[index] = _error(str(exc), pb_utils.TritonError.INVALID_ARG)

        if accepted:
            self._run_batch(accepted, responses)
        return responses

    def _read_inputs(self, request):
        arrays = {}
        for spec in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is None:
                raise ValueError(f"{self.model_name}: missing input '{spec.name}'")
            array = tensor.as_numpy()
            spec.check(array, self.model_name, self.max_batch_size)
            arrays[spec.name] = array
        return arrays

    def _run_batch(self, accepted, responses):
        # One session.run for the whole dynamic batch: this is where batching pays off.
        if self.max_batch_size > 0:
            sizes = [next(iter(arrays.values())).shape[0] for _, arrays in accepted]
            feed = {spec.name: np.concatenate([arrays[spec.name] for _, arrays in accepted])
                    for spec in self.inputs}
        else:
            sizes = None
        try:
            if sizes is None:
                # Without an implicit batch dimension requests cannot be stacked: run them one by one.
                results = [self.session.run(self.output_names, arrays) for _, arrays in accepted]
            else:
                merged = self.session.run(self.output_names, feed)
                bounds = np.cumsum(sizes)[:-1]
                per_output = [np.split(out, bounds) for out in merged]
                results = [[parts[i] for parts in per_output] for i in range(len(accepted))]
        except Exception as exc:  # noqa: BLE001 - every request still gets its one response
            for index, _ in accepted:
                responses[index] = _error(f"{self.model_name}: onnxruntime failed: {exc}",
                                          pb_utils.TritonError.INTERNAL)
            return
        for (index, _), outputs in zip(accepted, results):
            tensors = [pb_utils.Tensor(spec.name, np.ascontiguousarray(out, dtype=spec.dtype))
                       for spec, out in zip(self.outputs, outputs)]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self):
        self.session = None


class _TensorSpec:
    """Name, dtype and dims (without the batch dimension) of one config input or output."""

    def __init__(self, name, dtype, dims):
        self.name, self.dtype, self.dims = name, dtype, dims

    @classmethod
    def from_config(cls, spec):
        dtype = np.dtype(pb_utils.triton_string_to_numpy(spec["data_type"]))
        return cls(spec["name"], dtype, [int(d) for d in spec["dims"]])

    def check(self, array, model_name, max_batch_size):
        if array.dtype != self.dtype:
            raise ValueError(f"{model_name}: input '{self.name}' has dtype {array.dtype}, "
                             f"expected {self.dtype}")
        dims = array.shape[1:] if max_batch_size > 0 else array.shape
        ok = len(dims) == len(self.dims) and all(e in (-1, d) for e, d in zip(self.dims, dims))
        if not ok:
            raise ValueError(f"{model_name}: input '{self.name}' has shape {list(array.shape)}, "
                             f"expected {(['N'] if max_batch_size > 0 else []) + self.dims}")
        if max_batch_size > 0 and not 0 < array.shape[0] <= max_batch_size:
            raise ValueError(f"{model_name}: batch of {array.shape[0]} is outside 1..{max_batch_size}")


def _find_model_file(args, config):
    filename = config.get("default_model_filename") or "model.onnx"
    version = str(args["model_version"])
    # For models, the python backend passes the model's own directory as "model_repository";
    # the second candidate covers backends that pass the repository root instead.
    base = Path(args["model_repository"])
    candidates = [base / version / filename, base / args["model_name"] / version / filename]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{args['model_name']}: no {filename} at {candidates[0]}")


def _verify_export_digest(model_name, model_path):
    """Refuse a model file whose sha256 differs from the one export.json beside it recorded.

    The export writes `<version>/export.json` with "sha256"; a mismatch means a partial copy, a
    corrupted disk or a swapped file, none of which should be served. (The native backend has no
    such check; server/launch.py verifies the same digests before starting for that case.)
    """
    record = model_path.parent / "export.json"
    if not record.is_file():
        return
    expected = json.loads(record.read_text()).get("sha256")
    if not expected:
        return
    digest = hashlib.sha256()
    with open(model_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ValueError(f"{model_name}: {model_path.name} sha256 {digest.hexdigest()} does not match "
                         f"{expected} recorded in {record}; refusing to serve a corrupt or replaced model")


def _intra_op_threads(config):
    override = os.environ.get(THREADS_ENV)
    if override:
        return max(1, int(override))
    parameter = config.get("parameters", {}).get(THREADS_PARAMETER, {}).get("string_value")
    if parameter and int(parameter) > 0:
        return int(parameter)
    # Default: share the cores between this model's instances instead of each instance spawning
    # one thread per core (onnxruntime's default), which oversubscribes a small box at once.
    instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
    return max(1, (os.cpu_count() or 1) // instances)


def _check_io(model_name, session, inputs, outputs):
    # The native backend refuses names that are not in the graph; refusing here too keeps a config
    # that loads in this stand-in loading in NVIDIA's container.
    for kind, specs, graph in (("input", inputs, session.get_inputs()),
                               ("output", outputs, session.get_outputs())):
        by_name = {node.name: node for node in graph}
        for spec in specs:
            node = by_name.get(spec.name)
            if node is None:
                raise ValueError(f"{model_name}: config {kind} '{spec.name}' is not in the ONNX graph "
                                 f"(graph {kind}s: {sorted(by_name)})")
            graph_dtype = _ORT_TO_NUMPY.get(node.type)
            if graph_dtype is None or np.dtype(graph_dtype) != spec.dtype:
                raise ValueError(f"{model_name}: config {kind} '{spec.name}' is {spec.dtype}, "
                                 f"the ONNX graph has {node.type}")


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
