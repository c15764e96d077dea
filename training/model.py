"""The classifier: backbone -> GAP -> Dense(256, ReLU) -> BatchNorm -> Dropout -> Dense(12, softmax).

Layer names are fixed (`head_*`, `classifier_output`) so exported tensor names stay stable.
The network is also cut in two at `finetune_from`: the frozen bottom runs once per training
view and its activations are cached; only the top and the head train, which is what makes
fine-tuning affordable on two CPU cores.
"""
from __future__ import annotations

import keras
from keras import layers

from training.backbones import build_backbone
from contract import CLASSIFIER_INPUT, CLASSIFIER_OUTPUT
from training.labels import CLASSES


def build_head(features: keras.KerasTensor, units: int, dropout: float, num_classes: int = len(CLASSES)
               ) -> keras.KerasTensor:
    x = layers.GlobalAveragePooling2D(name="head_pool")(features)
    x = layers.Dense(units, activation="relu", name="head_dense")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="head_softmax")(x)


def build_model(backbone: str, image_size: int, weights: str, units: int = 256, dropout: float = 0.3,
                num_classes: int = len(CLASSES), dynamic: bool = False) -> keras.Model:
    """Backbone with ImageNet weights plus a fresh head; float RGB input in [0, 255].

    `dynamic=True` accepts any input size (progressive resizing); the weights are the same
    variables in the same order as the fixed-size model's, so one can be copied into the other.
    """
    base = build_backbone(backbone, image_size, weights, dynamic=dynamic)
    return keras.Model(base.input, build_head(base.output, units, dropout, num_classes), name=f"{backbone}_waste")


def split_model(model: keras.Model, cut_layer: str) -> tuple[keras.Model, keras.Model]:
    """Bottom (pixels -> input of `cut_layer`) and top (that activation -> probabilities), sharing weights."""
    cut = model.get_layer(cut_layer).input
    return keras.Model(model.input, cut, name="bottom"), keras.Model(cut, model.output, name="top")


def freeze_batchnorm(model: keras.Model) -> None:
    """Keep the backbone's BatchNorm in inference mode: a frozen BN layer in Keras 3 uses its moving statistics."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization) and not layer.name.startswith("head_"):
            layer.trainable = False


def serving_model(model: keras.Model) -> keras.Model:
    """The exported graph: UINT8 NHWC `classifier_input` -> FP32 probabilities `classifier_output`."""
    size = model.input.shape[1]
    pixels = keras.Input((size, size, 3), dtype="uint8", name=CLASSIFIER_INPUT)
    x = layers.Identity(name="to_float")(keras.ops.cast(pixels, "float32"))
    probs = model(x, training=False)
    probs = layers.Identity(name=CLASSIFIER_OUTPUT)(probs)
    return keras.Model(pixels, probs, name="classifier")

