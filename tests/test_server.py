"""Server mechanics on a real tritonserver with the random-weight `dev` classifier (fixture in conftest)."""
from __future__ import annotations

import io
import os
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from export.model_repository import CLASSES

MODELS = ("preprocess", "tta_flip", "tta_mean", "dev_classifier", "dev", "dev_tta")
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}


def jpeg(width=320, height=240, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    img = Image.fromarray(arr).resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def client_for(server, protocol):
    module = PROTOCOLS[protocol]
    url = server.http_url if protocol == "http" else server.grpc_url
    return module, module.InferenceServerClient(url)


def infer(server, protocol, model, data: bytes, class_count=0):
    module, client = client_for(server, protocol)
    tensor = module.InferInput("image_bytes", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=object))
    output = module.InferRequestedOutput("probabilities", class_count=class_count)
    return client.infer(model, [tensor], outputs=[output]).as_numpy("probabilities")[0]


def test_every_model_ready(dev_server):
    states = {m["name"]: m["state"] for m in dev_server.model_states()}
    assert states == {name: "READY" for name in MODELS}


@pytest.mark.parametrize("model", ["dev", "dev_tta"])
def test_http_and_grpc_agree_and_return_probabilities(dev_server, model):
    data = jpeg()
    via_http = infer(dev_server, "http", model, data)
    via_grpc = infer(dev_server, "grpc", model, data)
    assert via_http.shape == (12,) and via_http.dtype == np.float32
    np.testing.assert_allclose(via_http, via_grpc, rtol=1e-6)
    assert abs(float(via_http.sum()) - 1.0) < 1e-5 and (via_http >= 0).all()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["dev", "dev_tta", "dev_classifier"])
def test_classification_carries_labels(dev_server, protocol, model):
    if model == "dev_classifier":
        module, client = client_for(dev_server, protocol)
        tensor = module.InferInput("classifier_input", [1, 224, 224, 3], "UINT8")
        tensor.set_data_from_numpy(np.full((1, 224, 224, 3), 114, np.uint8))
        output = module.InferRequestedOutput("classifier_output", class_count=3)
        top = client.infer(model, [tensor], outputs=[output]).as_numpy("classifier_output")[0]
    else:
        top = infer(dev_server, protocol, model, jpeg(), class_count=3)
    assert len(top) == 3
    for entry in top:
        score, index, label = entry.decode().split(":")
        assert 0.0 <= float(score) <= 1.0 and CLASSES[int(index)] == label


def test_tta_equals_plain_on_mirror_symmetric_image(dev_server):
    half = np.random.default_rng(3).integers(0, 255, (240, 160, 3), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, ::-1]], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(symmetric).save(buffer, "PNG")
    plain = infer(dev_server, "grpc", "dev", buffer.getvalue())
    tta = infer(dev_server, "grpc", "dev_tta", buffer.getvalue())
    np.testing.assert_allclose(tta, plain, atol=1e-5)


def test_tta_averages_original_and_mirrored_view(dev_server):
    # A 320x320 PNG is resized without horizontal padding, so flip and letterbox commute (up to
    # resampling rounding): TTA must be the mean of the plain answers for the image and its mirror.
    rng = np.random.default_rng(4)
    arr = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    encoded = []
    for view in (arr, arr[:, ::-1]):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(view)).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    plain = [infer(dev_server, "http", "dev", data) for data in encoded]
    tta = infer(dev_server, "http", "dev_tta", encoded[0])
    assert not np.allclose(plain[0], plain[1], atol=1e-4)  # the dev model is not flip-invariant
    np.testing.assert_allclose(tta, (plain[0] + plain[1]) / 2, atol=1e-5)


def test_concurrent_requests_are_batched(dev_server):
    data = jpeg()
    client = grpcclient.InferenceServerClient(dev_server.grpc_url)
    results = []

    def send(_):
        tensor = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        return client.infer("dev", [tensor]).as_numpy("probabilities")

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(send, range(48)))
    assert all(r.shape == (1, 12) for r in results)
    for model in ("preprocess", "dev_classifier"):
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        sizes = [int(b["batch_size"]) for b in stats.get("batch_stats", [])]
        assert max(sizes) > 1, f"{model} never executed a batch > 1: {sizes}"


def truncated_jpeg() -> bytes:
    data = jpeg(seed=5)
    return data[: len(data) // 2]


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    return buffer.getvalue()


def bomb_png() -> bytes:
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 10000, 5000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


BAD_INPUTS = {
    "zero bytes": (b"", "0 bytes"),
    "random bytes": (np.random.default_rng(9).bytes(3000), "not a recognised image"),
    "text": (b"GET / HTTP/1.1\r\nthis is text, not an image\r\n", "not a recognised image"),
    "truncated jpeg": (truncated_jpeg(), "truncated"),
    "1x1": (tiny_png(), "1x1"),
    "pixel bomb": (bomb_png(), "40 megapixels"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["dev", "dev_tta"])
def test_bad_inputs_fail_alone_with_invalid_argument(dev_server, protocol, model):
    good = jpeg(seed=7)
    cases = [("good", good, None)] * 6 + [(name, data, msg) for name, (data, msg) in BAD_INPUTS.items()]
    cases = cases[::2] + cases[1::2]  # interleave so good and bad share dynamic batches

    def send(case):
        name, data, _ = case
        try:
            return name, infer(dev_server, protocol, model, data), None
        except InferenceServerException as exc:
            return name, None, exc

    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        outcomes = list(pool.map(send, cases))
    for (name, _, expected), (_, result, error) in zip(cases, outcomes):
        if expected is None:
            assert error is None, f"good image failed next to bad ones: {error}"
            assert result.shape == (12,)
        else:
            assert error is not None, f"{name} was accepted"
            assert expected in error.message(), (name, error.message())
            status = str(error.status())
            assert ("INVALID_ARG" in status) if protocol == "grpc" else status == "400", (name, status)
    module, client = client_for(dev_server, protocol)
    assert client.is_server_ready() and client.is_model_ready(model)


def test_one_bad_image_inside_a_batched_request_is_named(dev_server):
    client = httpclient.InferenceServerClient(dev_server.http_url)
    tensor = httpclient.InferInput("image_bytes", [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[jpeg()], [b""]], dtype=object))
    with pytest.raises(InferenceServerException, match="image 1 of 2"):
        client.infer("dev", [tensor])
    assert client.is_server_ready()


def test_start_failure_raises_with_log_tail(tmp_path):
    from server.launch import TritonServer, TritonServerError

    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "broken"\nbackend: "onnxruntime"\nmax_batch_size: 1\n')
    with pytest.raises(TritonServerError, match="broken"):
        TritonServer(tmp_path, timeout=60).start()


def _fake_pb_utils():
    """Just enough of triton_python_backend_utils to drive the stand-in backend in-process."""
    import types

    from tritonclient.utils import triton_to_np_dtype

    pb = types.ModuleType("triton_python_backend_utils")

    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code="INTERNAL"):
            self.message, self.code = message, code

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.outputs, self.error = {t.name: t.array for t in output_tensors}, error

    class Logger:
        @staticmethod
        def log_info(message):
            pass

    pb.TritonError, pb.Tensor, pb.InferenceResponse, pb.Logger = TritonError, Tensor, InferenceResponse, Logger
    pb.triton_string_to_numpy = lambda name: triton_to_np_dtype(name.replace("TYPE_", "").replace("STRING", "BYTES"))
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    return pb


def test_standin_backend_runs_one_batch_and_fails_bad_requests_alone(tmp_path, monkeypatch):
    import importlib.util
    import json
    import sys

    from export.model_repository import write_dev_classifier

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    path = Path(__file__).resolve().parent.parent / "server" / "backends" / "onnxruntime" / "model.py"
    spec = importlib.util.spec_from_file_location("standin_ort", path)
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    write_dev_classifier(tmp_path, "dev")
    config = {
        "max_batch_size": 8,
        "input": [{"name": "classifier_input", "data_type": "TYPE_UINT8", "dims": ["224", "224", "3"]}],
        "output": [{"name": "classifier_output", "data_type": "TYPE_FP32", "dims": ["12"]}],
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
    }
    model = backend.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_name": "dev_classifier",
                      "model_repository": str(tmp_path / "dev_classifier"), "model_version": "1",
                      "model_instance_name": "dev_classifier_0"})
    rng = np.random.default_rng(0)
    good = [rng.integers(0, 255, (n, 224, 224, 3), dtype=np.uint8) for n in (1, 3, 2)]
    requests = [
        {"classifier_input": backend.pb_utils.Tensor("classifier_input", good[0])},
        {"classifier_input": backend.pb_utils.Tensor("classifier_input", good[0].astype(np.float32))},
        {"classifier_input": backend.pb_utils.Tensor("classifier_input", good[1])},
        {"classifier_input": backend.pb_utils.Tensor("classifier_input", good[1][:, :100])},
        {"classifier_input": backend.pb_utils.Tensor("classifier_input", good[2])},
    ]
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    assert [r.error is None for r in responses] == [True, False, True, False, True]
    assert "dtype float32" in responses[1].error.message and responses[1].error.code == "INVALID_ARG"
    assert "shape [3, 100, 224, 3]" in responses[3].error.message
    # Split back in order: each request gets the rows of its own images.
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "dev_classifier" / "1" / "model.onnx"))
    for response, images in zip([responses[0], responses[2], responses[4]], good):
        expected = session.run(None, {"classifier_input": images})[0]
        np.testing.assert_allclose(response.outputs["classifier_output"], expected, rtol=1e-5, atol=1e-6)
    assert model.session.get_session_options().intra_op_num_threads == max(1, (os.cpu_count() or 1) // 2)
