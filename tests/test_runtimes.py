"""Classifier runtimes and the response cache (issue 16, items 3-4).

In process: the stand-in `openvino` backend answers like the `onnxruntime` one and follows the
native backends' config rules. On a real tritonserver: a classifier served by backend "openvino"
gives the probabilities ONNX Runtime gives, and a repeated photo is answered from Triton's response
cache (the metrics count the hit and the classifier does not run again).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from benchmarks.runtimes import agreement, compare_outputs, cpu_bf16_flags
from conftest import MODEL_REPOSITORY
from export.model_repository import classifier_config, write_dev_classifier, write_repository
from server.launch import TritonServer
from test_server import _fake_pb_utils, jpeg

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKENDS = REPO_ROOT / "server" / "backends"
SAMPLES = sorted(p for p in (REPO_ROOT / "samples" / "garbage12").rglob("*.jpg") if p.stat().st_size > 1000)
CONFIG = {
    "max_batch_size": 8,
    "input": [{"name": "classifier_input", "data_type": "TYPE_UINT8", "dims": ["224", "224", "3"]}],
    "output": [{"name": "classifier_output", "data_type": "TYPE_FP32", "dims": ["12"]}],
    "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
}
# HINT_BF16 is honoured only where the CPU has bfloat16 (avx512_bf16, amx_bf16); there, 8 mantissa
# bits move probabilities of ~0.1 by up to ~5e-4, so float32's tight tolerance would fail on a correct run.
SAME_PROBABILITIES = {"rtol": 0, "atol": 2e-3} if cpu_bf16_flags() else {"rtol": 1e-4, "atol": 1e-5}
OPENVINO_PARAMETERS = {"INFERENCE_NUM_THREADS": {"string_value": "1"}, "NUM_STREAMS": {"string_value": "1"},
                       "PERFORMANCE_HINT": {"string_value": "LATENCY"}, "HINT_BF16": {"string_value": "YES"}}


def load_backend(name, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    monkeypatch.delitem(sys.modules, "standin_common", raising=False)
    spec = importlib.util.spec_from_file_location(f"standin_{name}", BACKENDS / name / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def initialized(module, repo, config):
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_name": "dev_classifier",
                      "model_repository": str(repo / "dev_classifier"), "model_version": "1",
                      "model_instance_name": "dev_classifier_0"})
    return model


def test_openvino_standin_answers_like_the_onnxruntime_one(tmp_path, monkeypatch):
    write_dev_classifier(tmp_path, "dev")
    ort_backend = load_backend("onnxruntime", monkeypatch)
    ort_model = initialized(ort_backend, tmp_path, CONFIG)
    ov_backend = load_backend("openvino", monkeypatch)
    ov_model = initialized(ov_backend, tmp_path, {**CONFIG, "default_model_filename": "model.onnx",
                                                  "parameters": OPENVINO_PARAMETERS})
    rng = np.random.default_rng(1)
    good = [rng.integers(0, 255, (n, 224, 224, 3), dtype=np.uint8) for n in (2, 1, 3)]

    def requests(pb):
        return [{"classifier_input": pb.Tensor("classifier_input", good[0])},
                {"classifier_input": pb.Tensor("classifier_input", good[1][:, :, :5])},
                {"classifier_input": pb.Tensor("classifier_input", good[1])},
                {"classifier_input": pb.Tensor("classifier_input", good[2].astype(np.int32))},
                {"classifier_input": pb.Tensor("classifier_input", good[2])}]

    ort_out = ort_model.execute(requests(ort_backend.pb_utils))
    ov_out = ov_model.execute(requests(ov_backend.pb_utils))
    assert [r.error is None for r in ov_out] == [True, False, True, False, True]
    assert "shape [1, 224, 5, 3]" in ov_out[1].error.message and ov_out[1].error.code == "INVALID_ARG"
    assert "dtype int32" in ov_out[3].error.message
    for mine, reference in zip(ov_out, ort_out):
        if mine.error is None:
            np.testing.assert_allclose(mine.outputs["classifier_output"],
                                       reference.outputs["classifier_output"], **SAME_PROBABILITIES)
    if not cpu_bf16_flags():
        assert "float32" in str(ov_model.compiled.get_property("INFERENCE_PRECISION_HINT"))


@pytest.mark.parametrize("key, value, message", [
    ("HINT_BF16", "NO", "to be YES"),
    ("NUM_STREAMS", "many", "AUTO/NUMA/<int_value>"),
    ("INFERENCE_NUM_THREADS", "-1", "non-negative number"),
    ("PERFORMANCE_HINT", "fast", "LATENCY/THROUGHPUT"),
    ("TARGET_DEVICE", "GPU", "CPU only"),
])
def test_openvino_standin_refuses_bad_parameters(tmp_path, monkeypatch, key, value, message):
    write_dev_classifier(tmp_path, "dev")
    backend = load_backend("openvino", monkeypatch)
    config = {**CONFIG, "default_model_filename": "model.onnx",
              "parameters": {**OPENVINO_PARAMETERS, key: {"string_value": value}}}
    with pytest.raises(ValueError, match=message):
        initialized(backend, tmp_path, config)


def test_openvino_standin_defaults_to_model_xml_like_the_native_backend(tmp_path, monkeypatch):
    write_dev_classifier(tmp_path, "dev")
    backend = load_backend("openvino", monkeypatch)
    with pytest.raises(FileNotFoundError, match="model.xml"):
        initialized(backend, tmp_path, CONFIG)


def test_onnxruntime_standin_execution_accelerators_follow_the_native_backend(monkeypatch):
    backend = load_backend("onnxruntime", monkeypatch)
    openvino = {"optimization": {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "openvino"}]}}}
    assert backend.execution_providers({}, "m", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert backend.execution_providers(openvino, "m", ["OpenVINOExecutionProvider", "CPUExecutionProvider"]) == [
        ("OpenVINOExecutionProvider", {"device_type": "CPU"}), "CPUExecutionProvider"]
    with pytest.raises(ValueError, match='backend "openvino"'):
        backend.execution_providers(openvino, "m", ["CPUExecutionProvider"])
    tensorrt = {"optimization": {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "tensorrt"}]}}}
    with pytest.raises(ValueError, match="unknown Execution Accelerator 'tensorrt'"):
        backend.execution_providers(tensorrt, "m", ["CPUExecutionProvider"])


def test_writer_routes_are_chosen_by_one_option():
    plain = classifier_config("x")
    assert 'backend: "onnxruntime"' in plain and "execution_accelerators" not in plain
    openvino = classifier_config("x", backend="openvino")
    assert 'backend: "openvino"' in openvino and 'default_model_filename: "model.onnx"' in openvino
    assert 'key: "HINT_BF16"' in openvino and 'key: "INFERENCE_NUM_THREADS"' in openvino
    assert "intra_op_thread_count" not in openvino
    ort_openvino = classifier_config("x", accelerator="openvino")
    assert 'backend: "onnxruntime"' in ort_openvino and 'name: "openvino"' in ort_openvino
    with pytest.raises(ValueError, match="backend"):
        classifier_config("x", backend="tensorrt")
    with pytest.raises(ValueError, match="onnxruntime backend"):
        classifier_config("x", backend="openvino", accelerator="openvino")


def test_compare_outputs_bookkeeping():
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    other = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]], np.float32)
    record = compare_outputs(reference, other, labels=[0, 1, 0])
    assert record["top1_agreement"] == pytest.approx(2 / 3)
    assert record["max_abs_diff"] == pytest.approx(0.2)
    assert record["reference_accuracy"] == 1.0 and record["other_accuracy"] == pytest.approx(2 / 3)
    assert record["change_points"] == pytest.approx(-100 / 3)
    assert cpu_bf16_flags("flags\t: fpu avx2 amx_bf16 avx512f\n") == ["amx_bf16"]
    assert cpu_bf16_flags("flags\t: fpu avx2\n") == []


def _served_classifier(version_dir: Path) -> Path | None:
    versions = sorted((p for p in version_dir.glob("[0-9]*") if (p / "model.onnx").is_file()),
                      key=lambda p: int(p.name))
    return versions[-1] / "model.onnx" if versions else None


@pytest.mark.parametrize("model_dir, min_agreement", [("effnet_lite0_classifier", 1.0),
                                                      ("effnet_lite0_int8_classifier", 0.9)])
def test_openvino_agrees_with_onnxruntime_on_the_trained_models(model_dir, min_agreement):
    """Sample photos: float32 OpenVINO matches ONNX Runtime's top-1 exactly; the INT8 QDQ model runs
    other integer kernels in OpenVINO, so its probabilities move more (its test-split accuracy is
    `python -m benchmarks.runtimes --model ...`). With bfloat16 active, top-1 may differ on a few."""
    onnx = _served_classifier(MODEL_REPOSITORY / model_dir)
    if onnx is None:
        pytest.skip(f"{model_dir} has no exported model")
    record = agreement(onnx, [p.read_bytes() for p in SAMPLES])
    assert record["images"] == len(SAMPLES) >= 20
    bf16 = record["openvino_precision"] != "float32"
    assert record["top1_agreement"] >= (0.9 if bf16 else min_agreement)
    if not bf16 and min_agreement == 1.0:
        assert record["max_abs_diff"] < 1e-4


# -- a real tritonserver: openvino backend and the response cache ------------------------------------

CACHE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def runtime_server(tmp_path_factory):
    """Shared models + `dev` (onnxruntime) and `devov` (openvino, same ONNX file), ensembles cached."""
    tmp = tmp_path_factory.mktemp("runtime_repository")
    onnx = write_dev_classifier(tmp / "onnx", "dev")
    # The ensembles' response cache is the writer's default; the server turns the cache on.
    repo = write_repository(tmp / "repo", {"dev": onnx})
    write_repository(repo, {"devov": onnx}, classifier={"backend": "openvino"})
    with TritonServer(repo, cache_bytes=CACHE_BYTES) as server:
        yield server


def classify(server, model, data: bytes) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=object))
    return client.infer(model, [tensor]).as_numpy("probabilities")[0]


def counters(server) -> dict:
    """{(metric, model): value} for the cache counters and the per-model request counts."""
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        for metric in ("nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model",
                       "nv_inference_request_success"):
            if line.startswith(metric + "{"):
                model = line.split('model="', 1)[1].split('"', 1)[0]
                out[(metric, model)] = float(line.rsplit(" ", 1)[1])
    return out


def test_openvino_backend_serves_the_probabilities_onnxruntime_serves(runtime_server):
    for path in SAMPLES[:4]:
        data = path.read_bytes()
        np.testing.assert_allclose(classify(runtime_server, "devov", data), classify(runtime_server, "dev", data),
                                   **SAME_PROBABILITIES)
    # Several photos in one request: one batch through OpenVINO, split back in order.
    photos = [path.read_bytes() for path in SAMPLES[4:7]]
    client = grpcclient.InferenceServerClient(runtime_server.grpc_url)
    answers = {}
    for model in ("dev", "devov"):
        tensor = grpcclient.InferInput("image_bytes", [len(photos), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data] for data in photos], dtype=object))
        answers[model] = client.infer(model, [tensor]).as_numpy("probabilities")
    assert answers["devov"].shape == (3, 12)
    np.testing.assert_allclose(answers["devov"], answers["dev"], **SAME_PROBABILITIES)
    log = runtime_server.log_tail(100000)
    assert "devov_classifier_0_0: openvino" in log and "inference precision" in log


def delta(a, b, metric, model):
    return b.get((metric, model), 0.0) - a.get((metric, model), 0.0)


def settled(server, since, requests, model="dev", timeout=5.0):
    """Counters once `requests` more requests of `model` are counted (they are updated as the
    request is released, which may trail its response by a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        now = counters(server)
        if delta(since, now, "nv_inference_request_success", model) >= requests or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_duplicate_photo_is_answered_from_the_response_cache(runtime_server):
    photo = jpeg(seed=16)  # bytes no other test sends
    before = counters(runtime_server)
    first = classify(runtime_server, "dev", photo)
    middle = settled(runtime_server, before, 1)
    second = classify(runtime_server, "dev", photo)
    after = settled(runtime_server, middle, 1)

    assert delta(before, middle, "nv_cache_num_misses_per_model", "dev") == 1
    assert delta(before, middle, "nv_cache_num_hits_per_model", "dev") == 0
    assert delta(middle, after, "nv_cache_num_hits_per_model", "dev") == 1
    # The hit skipped both steps: neither preprocess nor the classifier saw a second request.
    assert delta(middle, after, "nv_inference_request_success", "dev_classifier") == 0
    assert delta(middle, after, "nv_inference_request_success", "preprocess") == 0
    assert delta(middle, after, "nv_inference_request_success", "dev") == 1
    np.testing.assert_array_equal(first, second)
    # A different photo is not a hit.
    classify(runtime_server, "dev", jpeg(seed=17))
    last = settled(runtime_server, after, 1)
    assert delta(after, last, "nv_cache_num_hits_per_model", "dev") == 0
    assert delta(after, last, "nv_cache_num_misses_per_model", "dev") == 1


def test_ort_provider_speed_record_becomes_a_row(tmp_path, monkeypatch):
    """The ORT + OpenVINO provider row runs in a separate venv; its record and the row built from it
    are checked here with the CPU provider (same code), and without that venv the row is skipped."""
    from benchmarks.runtimes import ort_openvino_pixels, provider_speed, row_from_speed

    onnx = write_dev_classifier(tmp_path, "dev")
    pixels = np.random.default_rng(0).integers(0, 255, (5, 224, 224, 3), dtype=np.uint8)
    record = provider_speed(onnx, pixels, batch=2, threads=1, provider="cpu")
    assert record["images"] == 5 and len(record["latencies_s"]) == 3
    assert record["providers"] == ["CPUExecutionProvider"]
    row = row_from_speed(json.loads(json.dumps(record)), "1v", "ORT + OpenVINO EP", batch=2, threads=1)
    assert row.images == 5 and row.note.startswith("batch 2, 1 thread, onnxruntime ")
    monkeypatch.setenv("WASTE_ORT_OPENVINO_PYTHON", str(tmp_path / "missing" / "python"))
    monkeypatch.setattr("benchmarks.runtimes.DEFAULT_ORT_OPENVINO_VENV", tmp_path / "missing")
    assert ort_openvino_pixels(onnx, pixels, 2, "1v", "ORT + OpenVINO EP", 1) is None


def test_a_deployment_chooses_the_runtime_by_one_option(tmp_path):
    """`python -m export.model_repository configs --backend openvino` on a copy of the committed
    repository: every classifier switches runtime, nothing else changes, the committed one stays."""
    import shutil

    from export.model_repository import main

    repo = tmp_path / "deploy"
    shutil.copytree(MODEL_REPOSITORY, repo, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
    assert main(["configs", "--repo", str(repo), "--backend", "openvino"]) == 0
    for config in repo.glob("*/config.pbtxt"):
        committed = (MODEL_REPOSITORY / config.parent.name / "config.pbtxt").read_text()
        if config.parent.name.endswith("_classifier"):
            assert 'backend: "openvino"' in config.read_text() and 'backend: "onnxruntime"' in committed
        else:
            assert config.read_text() == committed
