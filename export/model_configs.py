"""The text of every `config.pbtxt` in a model repository, from the contract and keyword options.

One function per kind of model (classifier, ensemble, and the shared `preprocess`, `tta_flip`,
`tta_mean`). Each takes the same serving options, so a variant (the benchmark's "before" rows,
the overload test's small queues, an OpenVINO or response-cache deployment) is a call with other
arguments, never an edit of an existing file. The defaults produce the committed configs
(tests/test_model_repository.py checks committed == generated).

Comments in a generated config say only what is true of that model: the measurements behind a
default are cited by their BENCHMARKS.md row, and only in the config of the model they were
measured on, with the default settings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace

from contract import (CHANNELS, CLASSIFIER_INPUT, CLASSIFIER_OUTPUT, DEFAULT_MODEL, ENSEMBLE_INPUT,
                      ENSEMBLE_OUTPUT, INPUT_SIZE, LABELS_FILE, MAX_BATCH_SIZE, NUM_CLASSES,
                      PREPROCESS_INPUT, PREPROCESS_MODEL, PREPROCESS_OUTPUT, TTA_FLIP_INPUT,
                      TTA_FLIP_MODEL, TTA_FLIP_OUTPUT, TTA_MEAN_INPUTS, TTA_MEAN_MODEL,
                      TTA_MEAN_OUTPUT, UNSURE_THRESHOLD, classifier_model, tta_model)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
#: Classifier backends (Serving.backend); both read `<version>/model.onnx`.
BACKENDS = ("onnxruntime", "openvino")
#: A request still queued after this long is refused (UNAVAILABLE) rather than answered after its
#: client gave up; clients may ask for less (allow_timeout_override), never for more.
QUEUE_TIMEOUT_US = 3_000_000
#: Requests that may wait in one model's queue before new ones are refused with UNAVAILABLE.
MAX_QUEUE_SIZE = 64


@dataclass(frozen=True)
class Serving:
    """How Triton runs one model: every option a repository variant may change.

    Parameters
    ----------
    instances : int
        Instances (processes or ORT sessions) in the instance group, all on the CPU.
    threads : int or None
        ONNX Runtime intra-op threads per instance (classifiers only; None writes no parameter).
    max_batch_size : int
        The batch limit; never above ``contract.MAX_BATCH_SIZE`` in a servable repository.
    batching : bool
        Write a ``dynamic_batching`` block at all (False: one request per execution).
    preferred_batch_sizes : tuple of int
        The batcher's preferred sizes (it never forms a batch above the largest).
    max_queue_delay_us : int
        How long the batcher may hold a request to grow a batch.
    max_queue_size : int or None
        Queue bound (``default_queue_policy``); None leaves the queue unbounded.
    queue_timeout_us : int
        A queued request older than this is refused (UNAVAILABLE).
    backend : str
        The classifier's runtime (BACKENDS): ``"onnxruntime"`` (ONNX Runtime's CPU provider, the
        fallback for every CPU) or ``"openvino"`` (Triton's OpenVINO backend on the same ONNX file,
        ``threads`` per stream, bfloat16 hinted: used where the CPU has AVX512_BF16 or AMX).
    accelerator : str or None
        A CPU execution accelerator of the ONNX Runtime backend, e.g. ``"openvino"``.
    accelerator_parameters : dict
        Its parameters (``{"precision": "FP32"}``), written as given.
    response_cache : bool
        ``response_cache { enable: true }``: identical requests are answered from the server's cache
        (needs ``--cache-config`` on the server).
    warmup : int
        Batch size of a zero-image warm-up request run at load time (classifiers only; 0: none).
    device : {"cpu", "gpu"}
        Where the instances run (``KIND_CPU`` / ``KIND_GPU``); the GPU image puts the classifiers
        there, the Python models stay on the CPU where Pillow runs anyway.
    """

    instances: int = 1
    threads: int | None = None
    backend: str = "onnxruntime"
    max_batch_size: int = MAX_BATCH_SIZE
    batching: bool = True
    preferred_batch_sizes: tuple = ()
    max_queue_delay_us: int = 0
    max_queue_size: int | None = MAX_QUEUE_SIZE
    queue_timeout_us: int = QUEUE_TIMEOUT_US
    accelerator: str | None = None
    accelerator_parameters: dict = field(default_factory=dict)
    response_cache: bool = False
    warmup: int = 0
    device: str = "cpu"

    def with_options(self, **options) -> "Serving":
        """A copy with ``options`` changed; an unknown option is a TypeError naming it."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown serving option(s) {unknown}; known: {sorted(known)}")
        if options.get("device", "cpu") not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {options['device']!r}")
        if "preferred_batch_sizes" in options:
            options["preferred_batch_sizes"] = tuple(options["preferred_batch_sizes"])
        return replace(self, **options)


DEVICES = ("cpu", "gpu")

#: The committed defaults of each kind of model.
CLASSIFIER = Serving(instances=2, threads=1, preferred_batch_sizes=(8,))
PREPROCESS = Serving(instances=2, preferred_batch_sizes=(4, 8))
TTA_HELPER = Serving(instances=1)


def check_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a valid model name (lower case, digits, ``_``, ``-``)."""
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r} must be lower-case letters, digits, '_' or '-'")


def classifier_config(name: str, serving: Serving = CLASSIFIER, *, num_classes: int = NUM_CLASSES, **options) -> str:
    """config.pbtxt text of ``<name>_classifier`` (backend onnxruntime, ``<version>/model.onnx``).

    Parameters
    ----------
    name : str
        The ensemble name (``effnet_lite0``); the model is ``<name>_classifier``.
    serving : Serving
        Base options; ``options`` override single fields (``instances=1, threads=2``).
    num_classes : int
        Length of the probability output (a model retrained on its own classes has its own).

    Returns
    -------
    str
    """
    check_name(name)
    s = serving.with_options(**options)
    if s.backend not in BACKENDS:
        raise ValueError(f"backend {s.backend!r} is not one of {BACKENDS}")
    if s.backend == "openvino" and s.accelerator:
        raise ValueError("accelerator is an option of the onnxruntime backend")
    measured = name == DEFAULT_MODEL and s == CLASSIFIER
    head = [f"# Classifier `{name}`: ONNX, uint8 NHWC in (normalisation inside the graph), softmax out.",
            "# Written by export/model_repository.py; edit the writer, not this file.",
            f'name: "{classifier_model(name)}"',
            f'backend: "{s.backend}"',
            # The openvino backend's default file is model.xml; it reads the ONNX file as it is.
            'default_model_filename: "model.onnx"' if s.backend == "openvino" else "",
            f"max_batch_size: {s.max_batch_size}",
            _tensors("input", [(CLASSIFIER_INPUT, "TYPE_UINT8", [INPUT_SIZE, INPUT_SIZE, CHANNELS], None)]),
            _tensors("output", [(CLASSIFIER_OUTPUT, "TYPE_FP32", [num_classes], LABELS_FILE)])]
    why_batching = [
        "# No batcher delay: at one request in flight a delay is pure waiting (BENCHMARKS.md rows",
        "# V1, V0 against 3s); under load batches still form from requests queued while both",
        "# instances are busy. Batches stop at 8 (the batcher forms none above the largest preferred",
        "# size): one ORT thread costs more per image in larger FP32 batches (BENCHMARKS.md, row 1",
        "# sweep; row V3 against R8x8).",
    ] if measured else []
    why_instances = [
        "# Two single-threaded instances rather than one with two threads: BENCHMARKS.md row V2",
        "# against 3r (16 in flight) and 3s (1 in flight, the price: one request uses one core).",
    ] if measured else []
    parts = head + [_batching(s, why_batching), _instances(s, why_instances)]
    if s.backend == "openvino":
        parts.append(_openvino_parameters(s))
    elif s.threads is not None:
        parts.append("# Understood by the native ONNX Runtime backend and by our stand-in alike.\n"
                     'parameters {\n  key: "intra_op_thread_count"\n'
                     f'  value: {{ string_value: "{s.threads}" }}\n}}')
    parts += _accelerator(s) + _cache(s)
    if s.warmup:
        parts.append(_warmup(s.warmup))
    return _join(parts)


def ensemble_config(name: str, *, tta: bool = False, max_batch_size: int = MAX_BATCH_SIZE,
                    response_cache: bool = True, num_classes: int = NUM_CLASSES,
                    unsure: tuple[float, str] | None = None) -> str:
    """config.pbtxt text of the ensemble ``<name>`` (tta=False) or ``<name>_tta`` (tta=True).

    Parameters
    ----------
    name : str
        The classifier's ensemble name.
    tta : bool
        The test-time-augmentation ensemble: image and mirror through the classifier, mean on the server.
    max_batch_size : int
        May not exceed any step's limit.
    response_cache : bool
        Cache whole ensemble responses (identical image bytes are answered without running a step;
        Triton 2.51 does so when every step supports caching: tests/test_runtimes.py). Inert unless
        the server runs with ``--cache-config``, so on by default.
    num_classes : int
        Length of the probability output.
    unsure : (float, str), optional
        The "not sure" threshold of the classifier version the ensemble serves and the export
        record holding it (``"effnet_lite0_classifier/2/export.json"``), written as the string
        parameter ``unsure_threshold`` that clients read; None writes no parameter.

    Returns
    -------
    str
    """
    check_name(name)
    classifier = classifier_model(name)
    preprocess_step = _step(PREPROCESS_MODEL, {PREPROCESS_INPUT: ENSEMBLE_INPUT}, {PREPROCESS_OUTPUT: "image"})
    if tta:
        steps = [
            preprocess_step,
            _step(TTA_FLIP_MODEL, {TTA_FLIP_INPUT: "image"}, {TTA_FLIP_OUTPUT: "image_flipped"}),
            _step(classifier, {CLASSIFIER_INPUT: "image"}, {CLASSIFIER_OUTPUT: "probabilities_original"}),
            _step(classifier, {CLASSIFIER_INPUT: "image_flipped"}, {CLASSIFIER_OUTPUT: "probabilities_flipped"}),
            _step(TTA_MEAN_MODEL, dict(zip(TTA_MEAN_INPUTS, ("probabilities_original", "probabilities_flipped"))),
                  {TTA_MEAN_OUTPUT: ENSEMBLE_OUTPUT}),
        ]
        title = (f"Ensemble `{tta_model(name)}`: preprocess, then the classifier on the image and on its "
                 "horizontal flip, probabilities averaged on the server.")
    else:
        steps = [preprocess_step,
                 _step(classifier, {CLASSIFIER_INPUT: "image"}, {CLASSIFIER_OUTPUT: ENSEMBLE_OUTPUT})]
        title = f"Ensemble `{name}`: encoded image bytes -> preprocess -> `{classifier}`."
    step_text = ",\n".join(steps)
    parts = [
        f"# {title}\n# Written by export/model_repository.py; edit the writer, not this file.",
        f'name: "{tta_model(name) if tta else name}"',
        'platform: "ensemble"',
        "# Ensembles have no batcher or queue of their own: each step's dynamic batcher batches and\n"
        "# its default_queue_policy bounds overload (UNAVAILABLE is returned as is). The limit may not\n"
        "# exceed any step's max_batch_size.\n"
        f"max_batch_size: {max_batch_size}",
        _tensors("input", [(ENSEMBLE_INPUT, "TYPE_STRING", [1], None)]),
        _tensors("output", [(ENSEMBLE_OUTPUT, "TYPE_FP32", [num_classes], LABELS_FILE)],
                 "# Lets clients ask the ensemble itself for classification (score:index:label)."),
        f"ensemble_scheduling {{\n  step [\n{step_text}\n  ]\n}}",
    ]
    if unsure is not None:
        parts.append(_unsure_parameter(*unsure, tta=tta))
    if response_cache:
        parts.append("# A request hashing like an earlier one (the same photo bytes in the same batch) is answered\n"
                     "# from Triton's response cache without running a step; inert unless the server runs with\n"
                     "# --cache-config local,size=N (RESPONSE_CACHE_BYTES for `python -m server.launch`).\n"
                     "response_cache {\n  enable: true\n}")
    return _join(parts)


def preprocess_config(serving: Serving = PREPROCESS, **options) -> str:
    """config.pbtxt text of the shared ``preprocess`` model (Python backend, ``1/model.py``)."""
    s = _python_model(serving.with_options(**options), PREPROCESS_MODEL)
    measured = s == PREPROCESS
    image = [INPUT_SIZE, INPUT_SIZE, CHANNELS]
    why_batching = [
        "# Decoding is per image, so batching only saves the stub round trip (~1 ms); a batcher",
        "# delay is pure waiting at one request in flight (BENCHMARKS.md rows V1, V0 against 3s).",
        "# Preferred sizes stop at 8: one stub decodes its batch serially and the batcher never",
        "# forms a batch above the largest preferred size, so a batch of 32 large photos made every",
        "# accepted request wait seconds under overload (tests/test_overload.py, RELIABILITY.md).",
    ] if measured else []
    why_instances = [
        "# Two stub processes for the two cores: one process decodes one image at a time (measured",
        "# with 1920x1080 JPEGs, 8 concurrent clients: 27-33 img/s with one, 38-72 with two).",
    ] if measured else []
    return _join([
        f"# Encoded image bytes -> letterboxed RGB uint8 {INPUT_SIZE}x{INPUT_SIZE}x{CHANNELS} (decoding in 1/imaging.py).\n"
        "# Written by export/model_repository.py; edit the writer, not this file.",
        f'name: "{PREPROCESS_MODEL}"',
        'backend: "python"',
        f"max_batch_size: {s.max_batch_size}",
        _tensors("input", [(PREPROCESS_INPUT, "TYPE_STRING", [1], None)]),
        _tensors("output", [(PREPROCESS_OUTPUT, "TYPE_UINT8", image, None)]),
        _batching(s, why_batching),
        _instances(s, why_instances),
        *_cache(s),
    ])


def tta_flip_config(serving: Serving = TTA_HELPER, **options) -> str:
    """config.pbtxt text of the shared ``tta_flip`` model (the mirrored view of the TTA ensembles)."""
    s = _python_model(serving.with_options(**options), TTA_FLIP_MODEL)
    image = [INPUT_SIZE, INPUT_SIZE, CHANNELS]
    return _join([
        "# Horizontal flip of a preprocessed image: the second view of every `<name>_tta` ensemble.\n"
        "# Written by export/model_repository.py; edit the writer, not this file.",
        f'name: "{TTA_FLIP_MODEL}"',
        'backend: "python"',
        f"max_batch_size: {s.max_batch_size}",
        _tensors("input", [(TTA_FLIP_INPUT, "TYPE_UINT8", image, None)]),
        _tensors("output", [(TTA_FLIP_OUTPUT, "TYPE_UINT8", image, None)]),
        _batching(s, ["# A flip is a memory copy: batching only amortises the stub round trip, so no waiting."]),
        _instances(s, ["# One instance: the work is negligible next to the classifier and each instance is a process."]),
        *_cache(s),
    ])


def tta_mean_config(serving: Serving = TTA_HELPER, *, num_classes: int = NUM_CLASSES, **options) -> str:
    """config.pbtxt text of the shared ``tta_mean`` model (mean of the views' probabilities, `num_classes` long)."""
    s = _python_model(serving.with_options(**options), TTA_MEAN_MODEL)
    return _join([
        "# Mean of the classifier's probabilities over the TTA views (original, flipped).\n"
        "# Written by export/model_repository.py; edit the writer, not this file.",
        f'name: "{TTA_MEAN_MODEL}"',
        'backend: "python"',
        f"max_batch_size: {s.max_batch_size}",
        _tensors("input", [(n, "TYPE_FP32", [num_classes], None) for n in TTA_MEAN_INPUTS]),
        _tensors("output", [(TTA_MEAN_OUTPUT, "TYPE_FP32", [num_classes], LABELS_FILE)]),
        _batching(s, [f"# {num_classes} floats per image: batching only amortises the stub round trip, so no waiting."]),
        _instances(s, []),
        *_cache(s),
    ])


# -- pieces -------------------------------------------------------------------------------------------

def _python_model(s: Serving, name: str) -> Serving:
    """Refuse options only the ONNX Runtime backend understands, instead of writing them unread."""
    wrong = [k for k, v in (("threads", s.threads), ("accelerator", s.accelerator), ("warmup", s.warmup)) if v]
    if wrong:
        raise ValueError(f"{name} is a Python-backend model: {', '.join(wrong)} apply to classifiers only")
    return s


def _join(parts) -> str:
    return "\n".join(p for p in parts if p) + "\n"


def _tensors(kind: str, tensors, comment: str | None = None) -> str:
    blocks = []
    for name, dtype, dims, labels in tensors:
        lines = ["  {", f'    name: "{name}"', f"    data_type: {dtype}",
                 f"    dims: [ {', '.join(str(d) for d in dims)} ]"]
        if comment:
            lines.append(f"    {comment}")
        if labels:
            lines.append(f'    label_filename: "{labels}"')
        lines.append("  }")
        blocks.append("\n".join(lines))
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]"


def _batching(s: Serving, why: list[str]) -> str:
    if not s.batching:
        return "# No dynamic batching: one request per execution."
    lines = [*why, "dynamic_batching {"]
    if s.preferred_batch_sizes:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in s.preferred_batch_sizes)} ]")
    lines.append(f"  max_queue_delay_microseconds: {s.max_queue_delay_us}")
    if s.max_queue_size is not None:
        lines += [
            "  # Bounded queue: under overload Triton refuses at once with UNAVAILABLE (\"Exceeds maximum",
            "  # queue size\"), which clients back off from and retry, instead of growing every request's",
            "  # latency (RELIABILITY.md, tests/test_overload.py); a request queued longer than the timeout",
            "  # is refused the same way rather than answered after its client gave up.",
            "  default_queue_policy {",
            f"    max_queue_size: {s.max_queue_size}",
            "    timeout_action: REJECT",
            f"    default_timeout_microseconds: {s.queue_timeout_us}",
            "    allow_timeout_override: true",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines)


def _instances(s: Serving, why: list[str]) -> str:
    return "\n".join([*why, "instance_group [", "  {", f"    count: {s.instances}", f"    kind: KIND_{s.device.upper()}",
                      "  }", "]"])


def _accelerator(s: Serving) -> list[str]:
    if not s.accelerator:
        return []
    params = "".join(f'\n        parameters {{ key: "{k}" value: "{v}" }}'
                     for k, v in s.accelerator_parameters.items())
    return ["optimization {\n  execution_accelerators {\n    cpu_execution_accelerator: [\n"
            f'      {{\n        name: "{s.accelerator}"{params}\n      }}\n    ]\n  }}\n}}']


def _openvino_parameters(s: Serving) -> str:
    # One stream per instance, like one ORT session per instance: parallelism comes from instances.
    values = {"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY", "HINT_BF16": "YES"}
    if s.threads is not None:
        values = {"INFERENCE_NUM_THREADS": str(s.threads), **values}
    entries = ",\n".join(f'  {{\n    key: "{k}"\n    value: {{ string_value: "{v}" }}\n  }}' for k, v in values.items())
    return ("# Triton's OpenVINO backend keys (NVIDIA's container and our stand-in alike). HINT_BF16:\n"
            "# bfloat16 where the CPU has AVX512_BF16 or AMX; OpenVINO keeps float32 elsewhere.\n"
            f"parameters [\n{entries}\n]")


def _unsure_parameter(threshold: float, record: str, tta: bool) -> str:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{UNSURE_THRESHOLD} {threshold} in {record} is not a probability")
    lines = ["# Clients say \"not sure\" below this top probability (waste_client's default; a caller may",
             f"# override it). It is `{UNSURE_THRESHOLD}` of {record}: the highest",
             "# version, which the steps run (model_version -1)."]
    if tta:
        lines.append("# Chosen on the classifier's own probabilities, not on this ensemble's two-view mean.")
    # repr: the exact float of the record, so a client decides every photo as the export measured it.
    lines += ["parameters {", f'  key: "{UNSURE_THRESHOLD}"', f'  value: {{ string_value: "{threshold!r}" }}', "}"]
    return "\n".join(lines)


def _cache(s: Serving) -> list[str]:
    return ["response_cache {\n  enable: true\n}"] if s.response_cache else []


def _warmup(batch_size: int) -> str:
    dims = ", ".join(str(d) for d in (INPUT_SIZE, INPUT_SIZE, CHANNELS))
    return ("# Runs once at load time so the first client request does not pay the runtime's first-run allocation.\n"
            "model_warmup [\n  {\n    name: \"zeros\"\n"
            f"    batch_size: {batch_size}\n"
            f'    inputs {{\n      key: "{CLASSIFIER_INPUT}"\n      value: {{\n'
            f"        data_type: TYPE_UINT8\n        dims: [ {dims} ]\n        zero_data: true\n"
            "      }\n    }\n  }\n]")


def _step(model: str, inputs: dict, outputs: dict) -> str:
    lines = ["    {", f'      model_name: "{model}"', "      model_version: -1"]
    lines += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    lines += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    lines.append("    }")
    return "\n".join(lines)
