"""Keras run -> ONNX with the serving contract: UINT8 NHWC `classifier_input`, softmax `classifier_output`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from contract import CLASSIFIER_INPUT as INPUT_NAME  # noqa: E402
from contract import CLASSIFIER_OUTPUT as OUTPUT_NAME  # noqa: E402


def load_run_model(run_dir: str | Path):
    import keras

    import training.backbones.registry  # noqa: F401  registers CaffePreprocess for deserialisation

    return keras.saving.load_model(Path(run_dir) / "model.keras", compile=False)


def to_onnx(model, out_path: str | Path, opset: int = 17) -> Path:
    """Convert a float-input Keras classifier to the serving ONNX graph (cast to float inside)."""
    import tensorflow as tf
    import tf2onnx

    from training.model import serving_model

    served = serving_model(model)
    size = served.input.shape[1]
    fn = tf.function(lambda x: served(x, training=False))
    proto, _ = tf2onnx.convert.from_function(
        fn, input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8, name=INPUT_NAME)], opset=opset)
    _rename_output(proto, OUTPUT_NAME)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(proto.SerializeToString())
    return out_path


def _rename_output(proto, new: str) -> None:
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    proto.graph.output[0].name = new


def parity(model, onnx_path: str | Path, pixels: np.ndarray) -> float:
    """Max |Keras - ONNX Runtime| over the probabilities of `pixels` (uint8 N,H,W,3)."""
    from training.evaluate import onnx_session, probabilities  # the one ONNX evaluation path

    ours = probabilities(onnx_session(onnx_path), pixels, batch=len(pixels))
    keras_probs = np.asarray(model.predict(pixels.astype(np.float32), verbose=0))
    return float(np.abs(ours - keras_probs).max())
