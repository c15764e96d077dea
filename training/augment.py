"""Training views: the server's decode + letterbox, then Keras preprocessing layers.

A wide-canvas step comes first because users photograph single objects on dark tables in
16:9; the dataset is square crops on mostly light backgrounds. Pasting an image on a wider,
darker canvas and letting the server's letterbox shrink it teaches the model that the bands
and the background are not the object.
"""
from __future__ import annotations

import keras
import numpy as np
from PIL import Image

from training.config import TrainConfig
from training.preprocessing import imaging


def keras_augmenter(cfg: TrainConfig, seed: int) -> keras.Sequential:
    """Rotation, shift, zoom, flip and brightness as Keras preprocessing layers (uint8-range floats in and out)."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(cfg.rotation, fill_mode="constant", fill_value=float(imaging.PAD_VALUE), seed=seed + 1),
            keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant", fill_value=float(imaging.PAD_VALUE), seed=seed + 2),
            keras.layers.RandomZoom((-cfg.zoom, cfg.zoom), fill_mode="constant", fill_value=float(imaging.PAD_VALUE), seed=seed + 3),
            keras.layers.RandomBrightness(cfg.brightness, value_range=(0, 255), seed=seed + 4),
        ],
        name="augment",
    )


def wide_canvas(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Paste `img` on a canvas up to 16:9 (either way round) filled with a random dark colour."""
    w, h = img.size
    aspect = rng.uniform(1.2, 1.9)
    scale = rng.uniform(0.6, 1.0)
    if rng.random() < 0.8:
        cw, ch = int(max(w, h) * aspect), max(w, h)
    else:
        cw, ch = max(w, h), int(max(w, h) * aspect)
    colour = tuple(int(c) for c in rng.integers(0, 70, size=3))
    canvas = Image.new("RGB", (cw, ch), colour)
    sw, sh = max(1, int(w * scale)), max(1, int(h * scale))
    small = img.resize((sw, sh), Image.BILINEAR)
    canvas.paste(small, (int(rng.integers(0, cw - sw + 1)), int(rng.integers(0, ch - sh + 1))))
    return canvas


def load_view(path: str, size: int, rng: np.random.Generator | None, canvas_prob: float) -> np.ndarray:
    """Decode a file exactly as the server does; with `rng`, maybe put it on a wide canvas first."""
    data = open(path, "rb").read()
    img = imaging.decode_image(data)
    if rng is not None and rng.random() < canvas_prob:
        img = wide_canvas(img, rng)
    # The server trims a uniform frame before its letterbox (imaging.preprocess_bytes); so must training.
    return imaging.letterbox(imaging.trim_background(img), size)
