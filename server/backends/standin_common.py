"""What the stand-in backends (`onnxruntime/`, `openvino/`) share: config tensors, model file, batching.

Both are Python-based backends of the bundled tritonserver standing in for NVIDIA's native ones, so
both follow the native rules: tensor names and dtypes come from config.pbtxt and must match the
graph, a request's bad input fails that request only, and one dynamic batch is one runtime call.
`server/backend_dir.py` copies this file to the root of the backend directory, which each
`model.py` puts on `sys.path` (the same parent holds it in the source tree).
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TensorSpec:
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


class BatchRunner:
    """The `execute` of both stand-ins: validate each request, run the accepted ones as one batch.

    Parameters
    ----------
    config : dict
        The model config (`json.loads(args["model_config"])`).
    model_name : str
        For error messages.
    runtime : str
        Named in the error of a failed run ("onnxruntime", "openvino").
    """

    def __init__(self, config, model_name, runtime):
        self.model_name = model_name
        self.runtime = runtime
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.inputs = [TensorSpec.from_config(spec) for spec in config["input"]]
        self.outputs = [TensorSpec.from_config(spec) for spec in config["output"]]

    def execute(self, requests, run):
        """One response per request; `run({input name: array}) -> [array per config output]`."""
        responses = [None] * len(requests)
        accepted = []  # (request index, {input name: array})
        for index, request in enumerate(requests):
            try:
                accepted.append((index, self._read_inputs(request)))
            except ValueError as exc:
                # Only this request fails; the rest of the dynamic batch still runs below.
                responses[index] = error(str(exc), pb_utils.TritonError.INVALID_ARG)
        if accepted:
            self._run_batch(accepted, responses, run)
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

    def _run_batch(self, accepted, responses, run):
        try:
            if self.max_batch_size > 0:
                # One runtime call for the whole dynamic batch: this is where batching pays off.
                sizes = [next(iter(arrays.values())).shape[0] for _, arrays in accepted]
                feed = {spec.name: np.concatenate([arrays[spec.name] for _, arrays in accepted])
                        for spec in self.inputs}
                merged = run(feed)
                bounds = np.cumsum(sizes)[:-1]
                per_output = [np.split(out, bounds) for out in merged]
                results = [[parts[i] for parts in per_output] for i in range(len(accepted))]
            else:
                # Without an implicit batch dimension requests cannot be stacked: run them one by one.
                results = [run(arrays) for _, arrays in accepted]
        except Exception as exc:  # noqa: BLE001 - every request still gets its one response
            for index, _ in accepted:
                responses[index] = error(f"{self.model_name}: {self.runtime} failed: {exc}",
                                         pb_utils.TritonError.INTERNAL)
            return
        for (index, _), outputs in zip(accepted, results):
            tensors = [pb_utils.Tensor(spec.name, np.ascontiguousarray(out, dtype=spec.dtype))
                       for spec, out in zip(self.outputs, outputs)]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)


def check_graph_io(model_name, kind, specs, graph):
    """Refuse config tensors missing from the graph or of another dtype, as the native backends do.

    `graph` maps a graph tensor name to its numpy dtype (None when the runtime's type has no numpy
    equivalent); a config that loads here then also loads in NVIDIA's container.
    """
    for spec in specs:
        if spec.name not in graph:
            raise ValueError(f"{model_name}: config {kind} '{spec.name}' is not in the model graph "
                             f"(graph {kind}s: {sorted(graph)})")
        graph_dtype = graph[spec.name]
        if graph_dtype is None or np.dtype(graph_dtype) != spec.dtype:
            raise ValueError(f"{model_name}: config {kind} '{spec.name}' is {spec.dtype}, "
                             f"the model graph has {graph_dtype}")


def find_model_file(args, config, default_filename):
    """`<model dir>/<version>/<default_model_filename or the backend's default>`."""
    filename = config.get("default_model_filename") or default_filename
    version = str(args["model_version"])
    # For models, the python backend passes the model's own directory as "model_repository";
    # the second candidate covers backends that pass the repository root instead.
    base = Path(args["model_repository"])
    candidates = [base / version / filename, base / args["model_name"] / version / filename]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{args['model_name']}: no {filename} at {candidates[0]}")


def verify_export_digest(model_name, model_path):
    """Refuse a model file whose sha256 differs from the one export.json beside it recorded.

    The export writes `<version>/export.json` with "sha256"; a mismatch means a partial copy, a
    corrupted disk or a swapped file, none of which should be served. (The native backends have no
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


def string_parameter(config, key):
    """The `string_value` of config parameter `key`, or None."""
    return config.get("parameters", {}).get(key, {}).get("string_value") or None


def instance_count(config):
    """Instances of this model (all instance groups summed; 1 when none is configured)."""
    return sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1


def error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
