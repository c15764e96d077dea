"""Post-hoc calibration: fitted on validation data, baked into the served ONNX graph."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from export.calibrate import calibrated_onnx, fit
from export.model_repository import write_dev_classifier


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["classifier_output"], {"classifier_input": x})[0]


def test_identity_calibration_changes_nothing_and_offsets_move_decisions(tmp_path):
    src = write_dev_classifier(tmp_path, "dev")
    x = np.random.default_rng(0).integers(0, 255, (4, 224, 224, 3), dtype=np.uint8)
    base = _run(src, x)
    same = _run(calibrated_onnx(src, tmp_path / "same.onnx", 1.0, np.zeros(12)), x)
    assert np.allclose(same, base, atol=1e-5)
    bias = np.zeros(12)
    bias[3] = 50.0
    pushed = _run(calibrated_onnx(src, tmp_path / "pushed.onnx", 1.0, bias), x)
    assert np.allclose(pushed.sum(1), 1, atol=1e-5) and (pushed.argmax(1) == 3).all()


def test_fit_sharpens_an_underconfident_model_and_lifts_a_neglected_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    logits = np.where(np.eye(3)[labels] > 0, 2.0, 0.0) + rng.normal(0, 0.8, (600, 3))
    logits[labels == 2, 2] -= 1.5  # class 2 is under-predicted
    probs = np.exp(0.5 * logits)  # temperature 2: under-confident
    probs /= probs.sum(1, keepdims=True)
    temperature, bias = fit(probs, labels)
    assert temperature < 1.0
    assert bias[2] > bias[0] and bias[2] > bias[1]
    # Temperature only (the export default): the same temperature, no offsets, so the same answers.
    plain_temperature, no_bias = fit(probs, labels, offsets=False)
    assert plain_temperature == temperature and not no_bias.any()


def test_two_classifiers_average_into_one_graph_with_the_same_contract(tmp_path):
    import onnx
    import pytest

    from export.average import averaged

    a, b = write_dev_classifier(tmp_path / "a", "dev", seed=1), write_dev_classifier(tmp_path / "b", "dev", seed=2)
    x = np.random.default_rng(0).integers(0, 255, (3, 224, 224, 3), dtype=np.uint8)
    both = tmp_path / "ab.onnx"
    onnx.save(averaged(onnx.load(a), onnx.load(b)), both)
    pa, pb, pab = _run(a, x), _run(b, x), _run(both, x)
    assert not np.allclose(pa, pb) and np.allclose(pab, (pa + pb) / 2, atol=1e-6)
    wrong = onnx.load(a)
    wrong.graph.output[0].name = "probabilities"
    with pytest.raises(ValueError, match="not a classifier"):
        averaged(onnx.load(a), wrong)


@pytest.mark.parametrize("name", ["effnet_lite0_pair", "effnet_lite0_pair_int8"])
def test_the_committed_pair_serves_its_graph_with_its_threshold(prod_server, name):
    """The pair (and its INT8 twin) through the real server: the published graph's probabilities, its own threshold."""
    import json
    from pathlib import Path

    from export.model_repository import COMMITTED, latest_version
    from training.preprocessing import imaging
    from waste_client import Classifier

    model = latest_version(COMMITTED / f"{name}_classifier")
    record = json.loads((model.parent / "export.json").read_text())
    photos = sorted(Path(__file__).resolve().parent.parent.joinpath("samples", "garbage12").rglob("*.jpg"))[::3]
    expected = _run(model, np.stack([imaging.preprocess_bytes(p.read_bytes()) for p in photos]))
    client = Classifier(prod_server.grpc_url, model=name)
    served = [client.classify(p.read_bytes()) for p in photos]
    labels = record["classes"]
    assert [s.label for s in served] == [labels[i] for i in expected.argmax(1)]
    assert np.allclose([s.score for s in served], expected.max(1), atol=1e-4)
    assert {s.threshold for s in served} == {record["unsure_threshold"]}
    assert sum(s.label == p.parent.name for s, p in zip(served, photos)) >= len(photos) - 1


def test_offsets_check_recovers_the_uncalibrated_softmax_from_served_probabilities():
    """export.offsets_check needs no training run: softmax(log(p) / T + b) is inverted exactly."""
    from export.offsets_check import calibrate, uncalibrated

    rng = np.random.default_rng(0)
    raw = rng.dirichlet(np.ones(12), 50)
    bias = rng.uniform(-1, 1, 12)
    served = calibrate(raw, 0.64, bias)
    assert not np.allclose(served, raw, atol=1e-3)
    assert np.allclose(uncalibrated(served, {"temperature": 0.64, "class_offsets": bias.tolist()}), raw, atol=1e-5)
