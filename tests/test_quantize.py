"""export.quantize options: 7-bit weights (reduce_range) and the integer types, on a tiny real ONNX classifier.

The graph has the served classifier's interface (UINT8 NHWC in, FP32 softmax out) and one
convolution, so ONNX Runtime's own quantizer runs end to end in about a second on sample photos.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from contract import CLASSES, CLASSIFIER_INPUT, CLASSIFIER_OUTPUT, INPUT_SIZE
from export.quantize import predict, quantize_static

SAMPLES = sorted((Path(__file__).resolve().parent.parent / "samples" / "garbage12").rglob("*.jpg"))[:4]


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    channels = 8
    weight = rng.normal(0, 1, (channels, 3, 3, 3)).astype(np.float32)
    dense = rng.normal(0, 1, (channels, len(CLASSES))).astype(np.float32)
    # Named nodes, as tf2onnx writes them: quantize_static excludes the head by node name.
    nodes = [
        helper.make_node("Cast", [CLASSIFIER_INPUT], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x_f"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["x_nchw", "inv255"], ["x"]),
        helper.make_node("Conv", ["x", "w"], ["conv"], strides=[8, 8], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("MatMul", ["flat", "dense"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [CLASSIFIER_OUTPUT], axis=1),
    ]
    for index, node in enumerate(nodes):
        node.name = f"{node.op_type.lower()}_{index}"
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(CLASSIFIER_INPUT, TensorProto.UINT8, ["n", INPUT_SIZE, INPUT_SIZE, 3])],
        [helper.make_tensor_value_info(CLASSIFIER_OUTPUT, TensorProto.FLOAT, ["n", len(CLASSES)])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(dense, "dense"),
         numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    onnx.save(model, path)
    return path


def conv_weight_ints(path: Path) -> np.ndarray:
    """The quantised convolution weight of a QDQ model, as stored integers."""
    model = onnx.load(str(path))
    ints = [numpy_helper.to_array(t) for t in model.graph.initializer
            if t.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(t.dims) == 4]
    assert len(ints) == 1, "expected exactly one quantised 4-D weight"
    return ints[0].astype(np.int32)


def test_reduce_range_keeps_weights_to_7_bits(tiny_classifier, tmp_path):
    full = quantize_static(tiny_classifier, tmp_path / "full.onnx", SAMPLES)
    reduced = quantize_static(tiny_classifier, tmp_path / "reduced.onnx", SAMPLES, reduce_range=True)
    assert np.abs(conv_weight_ints(full)).max() == 127  # symmetric S8: the largest weight uses the full range
    assert np.abs(conv_weight_ints(reduced)).max() == 64  # 7 bits, symmetric [-64, 64]: ORT's advice without VNNI
    pixels = np.zeros((2, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    assert predict(reduced, pixels).shape == (2, len(CLASSES))


def test_unsigned_weights(tiny_classifier, tmp_path):
    out = quantize_static(tiny_classifier, tmp_path / "u8u8.onnx", SAMPLES, weight_type="u8")
    ints = conv_weight_ints(out)
    assert ints.min() >= 0 and ints.max() > 127


def test_unknown_type_is_refused(tiny_classifier, tmp_path):
    with pytest.raises(ValueError, match="activation and weight types"):
        quantize_static(tiny_classifier, tmp_path / "bad.onnx", SAMPLES, weight_type="int4")
