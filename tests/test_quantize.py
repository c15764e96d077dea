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


def save_classifier(path: Path, body: list, initializers: dict) -> Path:
    """A graph with the served classifier's interface around `body` (tensor "x" in, "features" out).

    The head after `body`: global average pooling, a dense layer (initializer "dense"), softmax.

    Nodes are named by op and position, as tf2onnx names them: quantize_static excludes by node name.
    """
    nodes = [
        helper.make_node("Cast", [CLASSIFIER_INPUT], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x_f"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["x_nchw", "inv255"], ["x"]),
        *body,
        helper.make_node("GlobalAveragePool", ["features"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("MatMul", ["flat", "dense"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [CLASSIFIER_OUTPUT], axis=1),
    ]
    for index, node in enumerate(nodes):
        node.name = f"{node.op_type.lower()}_{index}"
    graph = helper.make_graph(
        nodes, path.parent.name,
        [helper.make_tensor_value_info(CLASSIFIER_INPUT, TensorProto.UINT8, ["n", INPUT_SIZE, INPUT_SIZE, 3])],
        [helper.make_tensor_value_info(CLASSIFIER_OUTPUT, TensorProto.FLOAT, ["n", len(CLASSES)])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k)
         for k, v in {"inv255": 1 / 255, **initializers}.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def conv_classifier(path: Path, depthwise: bool = False) -> Path:
    """A stem convolution, then (if `depthwise`) a depthwise (grouped) and a last 1x1 convolution."""
    rng = np.random.default_rng(int(depthwise))
    c = 8
    weights = {"stem": (c, 3, 3, 3), "dense": (c, len(CLASSES))}
    body = [helper.make_node("Conv", ["x", "stem"], ["s"], strides=[8, 8], kernel_shape=[3, 3])]
    if depthwise:
        weights.update(dw=(c, 1, 3, 3), top=(c, c, 1, 1))
        body += [helper.make_node("Conv", ["s", "dw"], ["d"], group=c, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["d"], ["r"]),
                 helper.make_node("Conv", ["r", "top"], ["features"], kernel_shape=[1, 1])]
    else:
        body.append(helper.make_node("Relu", ["s"], ["features"]))
    return save_classifier(path, body, {k: rng.normal(0, 1, shape) for k, shape in weights.items()})


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    return conv_classifier(tmp_path_factory.mktemp("tiny") / "model.onnx")


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


@pytest.fixture(scope="module")
def depthwise_classifier(tmp_path_factory) -> Path:
    return conv_classifier(tmp_path_factory.mktemp("depthwise") / "model.onnx", depthwise=True)


def quantised_convs(path: Path) -> set[str]:
    """Names of the convolutions whose weight input comes through a DequantizeLinear (QDQ)."""
    graph = onnx.load(str(path)).graph
    dequantised = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    return {n.name for n in graph.node if n.op_type == "Conv" and n.input[1] in dequantised}


@pytest.mark.parametrize("keep, left_fp32", [((), set()), (("depthwise",), {"conv_4"}),
                                             (("ends",), {"conv_3", "conv_6"}),
                                             (("depthwise", "ends"), {"conv_3", "conv_4", "conv_6"})])
def test_keep_fp32_leaves_exactly_those_convolutions_unquantised(depthwise_classifier, tmp_path, keep, left_fp32):
    out = quantize_static(depthwise_classifier, tmp_path / "mixed.onnx", SAMPLES, keep_fp32=keep)
    assert quantised_convs(out) == {"conv_3", "conv_4", "conv_6"} - left_fp32
    pixels = np.stack([np.full((INPUT_SIZE, INPUT_SIZE, 3), v, np.uint8) for v in (0, 128)])
    assert np.allclose(predict(out, pixels).sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="keep_fp32"):
        quantize_static(depthwise_classifier, tmp_path / "bad.onnx", SAMPLES, keep_fp32=("pointwise",))
