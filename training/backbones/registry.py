"""One option picks the backbone: each entry knows how to build it and where its ImageNet weights come from."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
from keras import layers


class WeightsUnavailableError(RuntimeError):
    """No ImageNet weights could be had for a backbone and random initialisation was not asked for."""


@keras.saving.register_keras_serializable(package="waste")
class CaffePreprocess(layers.Layer):
    """RGB [0,255] -> BGR minus ImageNet means: the input convention of Keras' ResNet-50 and VGG16 weights."""

    def call(self, x):
        mean = keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)
        return keras.ops.flip(x, axis=-1) - mean


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    image_size: int
    build: Callable[[int, str | None], keras.Model]
    # Names of layers at which the "upper backbone" starts, earliest last: fine-tuning
    # `unfreeze_blocks=n` trains everything from the n-th boundary from the top.
    boundaries: tuple[str, ...]


def _lite(variant: int):
    def build(image_size: int, weights: str | None, dynamic: bool = False) -> keras.Model:
        from training.backbones.efficientnet_lite import (
            build_efficientnet_lite, lite_weights_path, load_lite_weights)
        from training.torch_state_dict import load_state_dict

        model = build_efficientnet_lite(variant, image_size, dynamic=dynamic)
        if weights == "random":
            return model
        path = Path(weights) if weights and weights != "imagenet" else lite_weights_path(variant)
        load_lite_weights(model, load_state_dict(path))
        return model

    return build


def _keras_app(app_name: str):
    def build(image_size: int, weights: str | None, dynamic: bool = False) -> keras.Model:
        app = getattr(keras.applications, app_name)
        inputs = keras.Input((None, None, 3) if dynamic else (image_size, image_size, 3), name="pixels")
        x = CaffePreprocess(name="normalize")(inputs)
        if weights == "random":
            base = app(include_top=False, weights=None, input_tensor=x)
        else:
            source = weights if weights and weights != "imagenet" else "imagenet"
            try:
                base = app(include_top=False, weights=source, input_tensor=x)
            except Exception as err:  # download refused, no cache, bad file
                raise WeightsUnavailableError(
                    f"no ImageNet weights for {app_name}: Keras could not download or find them in its cache "
                    f"({type(err).__name__}: {err}). Give a weights file (weights=PATH on the training command "
                    f"line or in its config), or weights=random to train from scratch on purpose."
                ) from err
        return keras.Model(inputs, base.output, name=app_name.lower())

    return build


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", 224, _lite(0),
        ("conv_head", "blocks_15_expand_conv", "blocks_11_expand_conv", "blocks_8_expand_conv")),
    "efficientnet_lite1": BackboneSpec(
        "efficientnet_lite1", 240, _lite(1),
        ("conv_head", "blocks_20_expand_conv", "blocks_15_expand_conv", "blocks_11_expand_conv")),
    "efficientnet_lite2": BackboneSpec(
        "efficientnet_lite2", 260, _lite(2),
        ("conv_head", "blocks_20_expand_conv", "blocks_15_expand_conv", "blocks_11_expand_conv")),
    "resnet50": BackboneSpec(
        "resnet50", 224, _keras_app("ResNet50"),
        ("conv5_block3_1_conv", "conv5_block1_1_conv", "conv4_block1_1_conv")),
    "vgg16": BackboneSpec("vgg16", 224, _keras_app("VGG16"), ("block5_conv1", "block4_conv1")),
}


def build_backbone(name: str, image_size: int | None = None, weights: str | None = "imagenet",
                   dynamic: bool = False) -> keras.Model:
    """Build a backbone from float RGB pixels in [0, 255] to its last feature map.

    Parameters
    ----------
    name : str
        A key of `BACKBONES`.
    image_size : int, optional
        Input size; the backbone's native size if omitted.
    weights : str
        "imagenet" (default), a path to a weights file, or "random" (only when asked for by name).
    dynamic : bool
        Accept any input height and width, for progressive resizing.

    Raises
    ------
    WeightsUnavailableError
        If ImageNet weights cannot be had.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    return spec.build(image_size or spec.image_size, weights, dynamic)
