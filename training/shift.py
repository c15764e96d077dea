"""The shift suite: test-split photos changed the way users' photos differ from the dataset.

Each test photo is shown under `per_photo` conditions drawn (by seed) from CONDITIONS, and the
result is encoded as the JPEG a phone would upload, so it goes through the server's whole decode,
trim and letterbox path. Everything is seeded from the photo's position in the split and the
condition, so the suite is the same on every run and machine. It approximates real photos; it does
not replace them (MODEL_CARD.md says so): the objects are pasted rectangles, the backgrounds are
procedural, and lighting acts on the whole frame.

    python -m training evaluate MODEL.onnx --shift [--per-photo 2]
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from training import transforms as T

SHIFT_SEED = 14


def _restage(kinds: tuple[str, ...], aspects: tuple[float, ...], fill: tuple[float, float]):
    def apply(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return T.restage(img, rng, float(rng.choice(aspects)), rng.uniform(*fill), str(rng.choice(kinds)))
    return apply


def _combined(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A plausible phone photo: re-staged, tilted, indoor light, noise, softness and a messaging app's JPEG."""
    img = T.perspective(img, rng, 0.06)
    img = T.restage(img, rng, float(rng.choice([16 / 9, 9 / 16])), rng.uniform(0.45, 0.8),
                    str(rng.choice(["dark", "wood", "tiles", "floor", "fabric"])))
    img = T.lighting(T.colour(img, rng, 0.7), rng, 0.7)
    img = T.blur(T.sensor_noise(img, rng, rng.uniform(3, 8)), rng.uniform(0.3, 1.2))
    return T.jpeg(img, int(rng.integers(30, 61)))


def _scale_perspective(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = T.perspective(img, rng, 0.12)
    w, h = img.size
    s = rng.uniform(0.7, 0.9)  # a closer framing: part of the object's surroundings is lost
    cw, ch = int(w * s), int(h * s)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


#: name -> transform(img, rng). Names are stable: they key the per-condition table of the model card.
CONDITIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "dark_table_16x9": _restage(("dark",), (16 / 9,), (0.45, 0.75)),
    "textured_9x16": _restage(("wood", "tiles", "floor", "fabric"), (9 / 16,), (0.45, 0.75)),
    "textured_16x9": _restage(("wood", "tiles", "floor", "fabric"), (16 / 9,), (0.35, 0.65)),
    "hand_skin": _restage(("skin",), (4 / 3, 3 / 4, 1.0), (0.55, 0.85)),
    "noise_background": _restage(("noise",), (16 / 9, 9 / 16), (0.5, 0.8)),
    "light_white_balance": lambda img, rng: T.lighting(T.colour(img, rng, 1.0), rng, 1.0),
    "blur": lambda img, rng: T.blur(img, rng.uniform(1.2, 2.5)),
    "jpeg_30_60": lambda img, rng: img,  # the final encode does it (quality below)
    "phone_noise": lambda img, rng: T.sensor_noise(img, rng, rng.uniform(6, 14)),
    "perspective_scale": _scale_perspective,
    "combined_phone": _combined,
}


def shift_plan(n_photos: int, per_photo: int = 2, seed: int = SHIFT_SEED) -> list[list[str]]:
    """The conditions of each photo: `per_photo` distinct ones, balanced over the suite, fixed by `seed`."""
    names = list(CONDITIONS)
    per_photo = min(per_photo, len(names))
    order = np.random.default_rng(seed).permutation(n_photos)
    plan: list[list[str]] = [[] for _ in range(n_photos)]
    for rank, i in enumerate(order):
        # Consecutive ranks take consecutive conditions, so every condition gets n*per_photo/len(names) photos.
        plan[i] = [names[(rank * per_photo + k) % len(names)] for k in range(per_photo)]
    return plan


def shifted_bytes(data: bytes, condition: str, photo_index: int, seed: int = SHIFT_SEED) -> bytes:
    """The photo `data` under `condition`, as JPEG bytes; the same arguments give the same bytes.

    Raises
    ------
    KeyError
        For a condition not in CONDITIONS.
    """
    from training.preprocessing import imaging

    transform = CONDITIONS[condition]
    rng = np.random.default_rng([seed, photo_index, list(CONDITIONS).index(condition)])
    img = transform(imaging.decode_image(data), rng)
    quality = int(rng.integers(30, 61)) if condition == "jpeg_30_60" else 92
    return T.to_jpeg_bytes(img, quality)
