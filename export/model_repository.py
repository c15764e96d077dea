"""Write a classifier and its two ensembles into a Triton model repository (docs/CONTRACT.md).

For a classifier `name` this writes:

- `<name>_classifier/config.pbtxt` + `labels.txt` (the ONNX file goes in `<name>_classifier/<v>/model.onnx`)
- `<name>/config.pbtxt` + `labels.txt` + `1/`       ensemble preprocess -> classifier
- `<name>_tta/config.pbtxt` + `labels.txt` + `1/`   ensemble preprocess -> (image, tta_flip) -> classifier x2 -> tta_mean

The shared models `preprocess`, `tta_flip`, `tta_mean` are committed in `model_repository/` and are
not written here. `write_dev_classifier` builds a random-weight ONNX with the contract's I/O for tests.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from training.labels import CLASSES  # the one list of classes, in output order

INPUT_SIZE = 224
CLASSIFIER_INPUT = "classifier_input"
CLASSIFIER_OUTPUT = "classifier_output"
ENSEMBLE_INPUT = "image_bytes"
ENSEMBLE_OUTPUT = "probabilities"
#: Batch limit of classifier and ensembles; must not exceed the shared models' (preprocess: 64).
MAX_BATCH_SIZE = 64
PREFERRED_BATCH_SIZES = (8, 16, 32)
MAX_QUEUE_DELAY_US = 0
#: Requests that may wait in the classifier's queue before new ones are refused with UNAVAILABLE:
#: at the ~100 images/s the 2-core box sustains (BENCHMARKS.md), 64 is well under a second of work.
MAX_QUEUE_SIZE = 64
#: A request still queued after this long is refused (UNAVAILABLE) instead of answered late; clients
#: may ask for less (allow_timeout_override), never for more.
QUEUE_TIMEOUT_US = 3_000_000

#: Classifier runtimes the writer knows (`accelerator=`), each a route Triton users have:
#: None, ONNX Runtime's CPU provider (the fallback for every CPU); "openvino", Triton's OpenVINO
#: backend on the same ONNX file (bfloat16 where the CPU has it); "onnxruntime-openvino", the
#: ONNX Runtime backend with its OpenVINO execution accelerator (needs an onnxruntime built with it).
ACCELERATORS = (None, "openvino", "onnxruntime-openvino")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def classifier_model_name(name: str) -> str:
    """`effnet_lite0` -> `effnet_lite0_classifier`."""
    return f"{name}_classifier"


def write_labels(model_dir, classes=CLASSES) -> Path:
    """Write `labels.txt` (one class per line, index order) into `model_dir`; return its path."""
    path = Path(model_dir) / "labels.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{label}\n" for label in classes))
    return path


def classifier_config(name: str, *, max_batch_size: int = MAX_BATCH_SIZE,
                      preferred_batch_sizes=PREFERRED_BATCH_SIZES,
                      max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
                      max_queue_size: int = MAX_QUEUE_SIZE, queue_timeout_us: int = QUEUE_TIMEOUT_US,
                      instance_count: int = 2, intra_op_threads: int = 1,
                      num_classes: int = len(CLASSES), accelerator: str | None = None,
                      response_cache: bool = False) -> str:
    """config.pbtxt text of `<name>_classifier` (`<v>/model.onnx`).

    `accelerator` picks the runtime (ACCELERATORS): None is the onnxruntime backend on its CPU
    provider; "openvino" the openvino backend on the same file with bfloat16 hinted; and
    "onnxruntime-openvino" the onnxruntime backend with `cpu_execution_accelerator` "openvino".
    `response_cache` adds `response_cache { enable: true }` (used only when the server runs with
    `--cache-config`).
    """
    _check_name(name)
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator {accelerator!r} is not one of {ACCELERATORS}")
    preferred = ", ".join(str(size) for size in preferred_batch_sizes)
    backend = "openvino" if accelerator == "openvino" else "onnxruntime"
    # The openvino backend's default file is model.xml; it reads the ONNX file as it is.
    filename = 'default_model_filename: "model.onnx"\n' if backend == "openvino" else ""
    return f'''# Classifier `{name}`: ONNX, uint8 NHWC in (normalisation inside the graph), softmax out.
# Written by export/model_repository.py; edit the writer, not this file.
name: "{classifier_model_name(name)}"
backend: "{backend}"
{filename}max_batch_size: {max_batch_size}
input [
  {{
    name: "{CLASSIFIER_INPUT}"
    data_type: TYPE_UINT8
    dims: [ {INPUT_SIZE}, {INPUT_SIZE}, 3 ]
  }}
]
output [
  {{
    name: "{CLASSIFIER_OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {num_classes} ]
    label_filename: "labels.txt"
  }}
]
# Measured with the trained EfficientNet-Lite0 (`make bench`, BENCHMARKS.md): on this 2-core CPU
# its in-process throughput is nearly flat in the batch size (depthwise layers are memory-bound),
# so batching saves only the ~1 ms per-call overhead, while any batcher delay is pure waiting at
# one request in flight (delays of 5 ms here + 1 ms in preprocess -> none took p50 from 29.3 to
# 21.3 ms, row V1). Under load batches still form without a delay: requests queued while both
# instances are busy run together when one frees (mean batch ~4 at 16 in flight).
# Delay {max_queue_delay_us / 1000:g} ms, preferred sizes {preferred}.
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {max_queue_delay_us}
  # Overload: an unbounded queue turns "too many requests" into latency that grows without limit
  # (every queued request waits for all before it). Bounded, the server answers UNAVAILABLE at once
  # ("Exceeds maximum queue size") and the client backs off and retries (waste_client retries
  # UNAVAILABLE). {max_queue_size} requests are ~{max_queue_size / 100:g} s of work at the ~100 images/s the 2-core
  # box sustains; a request still queued after {queue_timeout_us / 1e6:g} s (a slower box, a stalled instance) is
  # refused the same way rather than answered after its client gave up.
  default_queue_policy {{
    max_queue_size: {max_queue_size}
    timeout_action: REJECT
    default_timeout_microseconds: {queue_timeout_us}
    allow_timeout_override: true
  }}
}}
# Two single-threaded instances, not one using both cores: measured (`make bench`, row V2)
# 92.1 images/s end to end at 16 in flight against 60.5 for one 2-thread instance, because an
# intra-op-parallel layer waits for its slowest thread and on a shared 2-core box one of the two
# is often descheduled; two independent instances keep both cores busy. The price: one request
# alone runs on one core (classifier ~13 ms instead of ~7 ms at one request in flight).
instance_group [
  {{
    count: {instance_count}
    kind: KIND_CPU
  }}
]
{_runtime_text(accelerator, intra_op_threads)}{_response_cache_text(response_cache)}'''


def _runtime_text(accelerator: str | None, threads: int) -> str:
    if accelerator == "openvino":
        return f'''# Triton's OpenVINO backend keys (NVIDIA's container and our stand-in alike): one stream of
# {threads} thread(s) per instance, the same layout as the ONNX Runtime instances above; bfloat16
# inference precision where the CPU has AVX512_BF16 or AMX, float32 elsewhere (OpenVINO's choice).
parameters [
  {{
    key: "INFERENCE_NUM_THREADS"
    value: {{ string_value: "{threads}" }}
  }},
  {{
    key: "NUM_STREAMS"
    value: {{ string_value: "1" }}
  }},
  {{
    key: "PERFORMANCE_HINT"
    value: {{ string_value: "LATENCY" }}
  }},
  {{
    key: "HINT_BF16"
    value: {{ string_value: "YES" }}
  }}
]
'''
    text = f'''# Understood by the native ONNX Runtime backend and by our stand-in alike.
parameters {{
  key: "intra_op_thread_count"
  value: {{ string_value: "{threads}" }}
}}
'''
    if accelerator == "onnxruntime-openvino":
        text += '''# ONNX Runtime's OpenVINO execution provider (device CPU; the native backend takes no options).
optimization {
  execution_accelerators {
    cpu_execution_accelerator: [ { name: "openvino" } ]
  }
}
'''
    return text


def _response_cache_text(enabled: bool) -> str:
    if not enabled:
        return ""
    return '''# A request whose inputs hash like an earlier one's (the same photo bytes in the same batch) is
# answered from Triton's response cache without running a step; inert unless the server runs
# with --cache-config local,size=N (RESPONSE_CACHE_BYTES for `python -m server.launch`).
response_cache {
  enable: true
}
'''


def ensemble_config(name: str, *, tta: bool = False, max_batch_size: int = MAX_BATCH_SIZE,
                    num_classes: int = len(CLASSES), response_cache: bool = True) -> str:
    """config.pbtxt text of the ensemble `<name>` (tta=False) or `<name>_tta` (tta=True).

    `response_cache`: a repeated request (same bytes) is answered from the cache without running
    any step (Triton 2.51 caches top-level ensemble requests when every step supports caching:
    tests/test_runtimes.py). Inert unless the server runs with `--cache-config`.
    """
    _check_name(name)
    classifier = classifier_model_name(name)
    preprocess_step = _step("preprocess", {"preprocess_input": ENSEMBLE_INPUT},
                            {"preprocess_output": "image"})
    if tta:
        steps = [
            preprocess_step,
            _step("tta_flip", {"tta_flip_input": "image"}, {"tta_flip_output": "image_flipped"}),
            _step(classifier, {CLASSIFIER_INPUT: "image"}, {CLASSIFIER_OUTPUT: "probabilities_original"}),
            _step(classifier, {CLASSIFIER_INPUT: "image_flipped"}, {CLASSIFIER_OUTPUT: "probabilities_flipped"}),
            _step("tta_mean", {"tta_mean_input_0": "probabilities_original",
                               "tta_mean_input_1": "probabilities_flipped"},
                  {"tta_mean_output": ENSEMBLE_OUTPUT}),
        ]
        title = (f"Ensemble `{name}_tta`: preprocess, then the classifier on the image and on its "
                 "horizontal flip, probabilities averaged on the server.")
    else:
        steps = [preprocess_step,
                 _step(classifier, {CLASSIFIER_INPUT: "image"}, {CLASSIFIER_OUTPUT: ENSEMBLE_OUTPUT})]
        title = f"Ensemble `{name}`: encoded image bytes -> preprocess -> `{classifier}`."
    model_name = f"{name}_tta" if tta else name
    step_text = ",\n".join(steps)
    return f'''# {title}
# Written by export/model_repository.py; edit the writer, not this file.
name: "{model_name}"
platform: "ensemble"
# Ensembles have no batcher of their own: batching happens in each step's dynamic batcher. The
# limit may not exceed any step's max_batch_size ({MAX_BATCH_SIZE}). Nor a queue: overload is bounded
# by each step's default_queue_policy (max_queue_size, queue timeout), whose UNAVAILABLE the
# ensemble returns as is.
max_batch_size: {max_batch_size}
input [
  {{
    name: "{ENSEMBLE_INPUT}"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }}
]
output [
  {{
    name: "{ENSEMBLE_OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {num_classes} ]
    # Lets clients ask the ensemble itself for classification (score:index:label).
    label_filename: "labels.txt"
  }}
]
ensemble_scheduling {{
  step [
{step_text}
  ]
}}
{_response_cache_text(response_cache)}'''


def _step(model: str, inputs: dict, outputs: dict) -> str:
    lines = ["    {", f'      model_name: "{model}"', "      model_version: -1"]
    lines += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    lines += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    lines.append("    }")
    return "\n".join(lines)


def write_classifier_config(repo_dir, name: str, **options) -> Path:
    """Write `<name>_classifier/config.pbtxt` and `labels.txt`; return the model directory.

    `options` go to `classifier_config` (batch sizes, queue delay, instance count, threads).
    """
    model_dir = Path(repo_dir) / classifier_model_name(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(classifier_config(name, **options))
    write_labels(model_dir)
    return model_dir


def write_ensemble_configs(repo_dir, name: str, *, response_cache: bool = True) -> list[Path]:
    """Write the ensembles `<name>` and `<name>_tta` (config, labels, empty `1/`); return their dirs."""
    dirs = []
    for tta in (False, True):
        model_dir = Path(repo_dir) / (f"{name}_tta" if tta else name)
        # Triton needs a version directory even for an ensemble; `.gitkeep` lets git carry it.
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        (model_dir / "1" / ".gitkeep").touch()
        (model_dir / "config.pbtxt").write_text(ensemble_config(name, tta=tta, response_cache=response_cache))
        write_labels(model_dir)
        dirs.append(model_dir)
    return dirs


def write_model_configs(repo_dir, name: str, *, response_cache: bool = True,
                        **classifier_options) -> list[Path]:
    """Classifier config + both ensembles for `name`: everything except the ONNX file.

    `response_cache` goes to the ensembles only: a hit there skips preprocess and classifier both,
    and hashing the classifier's 150 KB pixel input as well would cost without adding a hit.
    """
    return [write_classifier_config(repo_dir, name, **classifier_options),
            *write_ensemble_configs(repo_dir, name, response_cache=response_cache)]


def next_version(model_dir) -> int:
    """Next free numeric version of a Triton model directory (1 if it has none yet)."""
    model_dir = Path(model_dir)
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] \
        if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def build_dev_classifier(seed: int = 0, num_classes: int = len(CLASSES)):
    """A tiny random-weight ONNX model with the contract's classifier I/O.

    uint8 [N,224,224,3] -> cast, ImageNet normalisation (in-graph, like the real export) ->
    NCHW -> 28x28 average pool (8x8x3 features) -> dense -> softmax [N, num_classes].
    The pooled grid keeps spatial layout, so a flipped image gives different probabilities and
    the TTA path is really exercised.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    features = 3 * (INPUT_SIZE // 28) ** 2
    initializers = [
        numpy_helper.from_array(np.array([0.485, 0.456, 0.406], np.float32) * 255, "mean"),
        numpy_helper.from_array(1 / (np.array([0.229, 0.224, 0.225], np.float32) * 255), "inv_std"),
        numpy_helper.from_array(np.array([-1, features], np.int64), "flat_shape"),
        numpy_helper.from_array(rng.normal(0, 0.05, (features, num_classes)).astype(np.float32), "weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, (num_classes,)).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Cast", [CLASSIFIER_INPUT], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["x_float", "mean"], ["x_centered"]),
        helper.make_node("Mul", ["x_centered", "inv_std"], ["x_norm"]),
        helper.make_node("Transpose", ["x_norm"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["x_nchw"], ["pooled"], kernel_shape=[28, 28], strides=[28, 28]),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weight"], ["logits_nobias"]),
        helper.make_node("Add", ["logits_nobias", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [CLASSIFIER_OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "dev_classifier",
        [helper.make_tensor_value_info(CLASSIFIER_INPUT, TensorProto.UINT8, ["N", INPUT_SIZE, INPUT_SIZE, 3])],
        [helper.make_tensor_value_info(CLASSIFIER_OUTPUT, TensorProto.FLOAT, ["N", num_classes])],
        initializers,
    )
    # Opset 13 / IR 8: old enough for every onnxruntime a Triton container ships since 2021.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="waste-export-dev")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_dev_classifier(repo_dir, name: str, version: int = 1, seed: int = 0) -> Path:
    """Write a random-weight `<name>_classifier/<version>/model.onnx` for server tests; return its path.

    Only the ONNX file: call `write_model_configs(repo_dir, name)` for the configs and ensembles.
    """
    import onnx

    _check_name(name)
    path = Path(repo_dir) / classifier_model_name(name) / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_dev_classifier(seed), str(path))
    return path


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r} must be lower-case letters, digits, '_' or '-'")
