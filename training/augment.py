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


def train_view(data: bytes, size: int, rng: np.random.Generator, strength: float = 1.0,
               restage_prob: float = 0.5) -> np.ndarray:
    """One augmented full-fine-tuning view: the server's decode, the shift suite's kinds of change, its trim + letterbox.

    Half the views are re-staged smaller in a 16:9, 9:16, 4:3 or square frame on a procedural
    background (dark, wood, tiles, floor, skin, noise, fabric), some with a perspective tilt; the
    others get a random crop. Then colour and white balance, uneven light, blur, sensor noise and
    JPEG at quality 30-70, each with its own probability, so a good share of views stay clean.

    Parameters
    ----------
    data : bytes
        The encoded photo.
    size : int
        Output side (progressive resizing trains below the served 224).
    rng : numpy.random.Generator
        Seeds every choice, so a view is reproducible.
    strength : float
        Scales the photometric changes (0 turns them off).
    restage_prob : float
        Share of views re-staged on a background.

    Returns
    -------
    numpy.ndarray
        uint8 (size, size, 3).
    """
    from training import transforms as T

    img = imaging.decode_image(data)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < restage_prob:
        if rng.random() < 0.3:
            img = T.perspective(img, rng, 0.08)
        aspect = float(rng.choice([16 / 9, 9 / 16, 4 / 3, 3 / 4, 1.0], p=[0.35, 0.25, 0.15, 0.1, 0.15]))
        kind = str(rng.choice(T.BACKGROUNDS))
        img = T.restage(img, rng, aspect, fill=rng.uniform(0.35, 0.95), kind=kind, max_side=2 * size)
    else:
        w, h = img.size
        area = rng.uniform(0.55, 1.0)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(w * np.sqrt(area * ratio))), min(h, int(h * np.sqrt(area / ratio)))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.25:
            img = img.rotate(rng.uniform(-15, 15), Image.Resampling.BILINEAR, fillcolor=T.edge_colour(img))
    if strength > 0:
        if rng.random() < 0.8:
            img = T.colour(img, rng, strength)
        if rng.random() < 0.25:
            img = T.lighting(img, rng, strength)
        if rng.random() < 0.2:
            img = T.blur(img, rng.uniform(0.4, 1.8) * strength)
        if rng.random() < 0.25:
            img = T.sensor_noise(img, rng, rng.uniform(2, 10) * strength)
        if rng.random() < 0.3:
            img = T.jpeg(img, int(rng.integers(30, 71)))
    return imaging.letterbox(imaging.trim_background(img), size)
