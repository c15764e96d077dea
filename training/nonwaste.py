"""Pictures that are not a photo of a waste item, generated deterministically.

The service should answer "not sure" to them instead of naming a bin: a blank grey picture was
answered "trash" at 0.89 before. Kinds: blank frames, noise, gradients, screenshots of text,
tiled textures, and empty scenes (a table, floor or hand with no object, under uneven light,
with phone noise and JPEG). `nonwaste_items(n, seed)` is the evaluation set; training draws from
the same generators with other seeds (outlier exposure, `outlier_prob` in training/finetune.py),
so a rate measured here is for these kinds of picture, not for every non-waste photo.
"""
from __future__ import annotations

import io
import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from training import transforms as T

KINDS = ("blank", "noise", "gradient", "text", "texture", "empty_scene")
#: Evaluation seed; training uses `TRAIN_SEED` so no evaluation picture is ever trained on.
EVAL_SEED, TRAIN_SEED = 20261129, 7


def _size(rng: np.random.Generator) -> tuple[int, int]:
    side = int(rng.choice([224, 320, 480, 640, 1024]))
    aspect = float(rng.choice([1.0, 16 / 9, 9 / 16, 4 / 3, 3 / 4]))
    return (int(side * aspect), side) if aspect >= 1 else (side, int(side / aspect))


def nonwaste_image(rng: np.random.Generator, kind: str, size: tuple[int, int] | None = None) -> Image.Image:
    """One picture of `kind` (one of KINDS), RGB, of `size` (width, height) or a random phone-like size.

    Raises
    ------
    ValueError
        For an unknown kind.
    """
    w, h = size or _size(rng)
    if kind == "blank":
        grey = rng.random() < 0.5
        value = rng.integers(0, 256, 1 if grey else 3)
        return Image.new("RGB", (w, h), tuple(int(v) for v in np.resize(value, 3)))
    if kind == "noise":
        style = int(rng.integers(3))
        if style == 0:
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif style == 1:
            a = np.clip(rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (h, w, 1)), 0, 255).repeat(3, 2)
        else:  # coloured blobs: noise at a coarse scale, upsampled
            small = rng.integers(0, 256, (int(rng.integers(2, 12)), int(rng.integers(2, 12)), 3), dtype=np.uint8)
            return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        return Image.fromarray(a.astype(np.uint8))
    if kind == "gradient":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if rng.random() < 0.5:
            angle = rng.uniform(0, 2 * np.pi)
            t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
        else:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            t = np.hypot(xx - cx, yy - cy) / np.hypot(w, h)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        return Image.fromarray((c0 + (c1 - c0) * t[..., None]).astype(np.uint8))
    if kind == "text":
        return _screenshot(rng, w, h)
    if kind == "texture":
        return T.background(rng, w, h, str(rng.choice(T.BACKGROUNDS)))
    if kind == "empty_scene":
        img = T.background(rng, w, h, str(rng.choice(["dark", "wood", "tiles", "floor", "skin", "fabric"])))
        img = T.lighting(T.colour(img, rng), rng)
        img = T.sensor_noise(img, rng, rng.uniform(2, 10))
        return T.jpeg(img, int(rng.integers(40, 90)))
    raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")


def _screenshot(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A screenshot-like picture: a title bar, lines of random words, a few boxes."""
    dark = rng.random() < 0.3
    bg = (30, 30, 34) if dark else (250, 250, 250)
    ink = (220, 220, 220) if dark else (20, 20, 20)
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    font_size = int(rng.integers(12, 28))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    bar = int(h * rng.uniform(0.05, 0.12))
    draw.rectangle((0, 0, w, bar), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    y = bar + font_size
    letters = string.ascii_letters + string.digits
    while y < h - font_size:
        words = [''.join(rng.choice(list(letters), int(rng.integers(2, 10)))) for _ in range(int(rng.integers(3, 12)))]
        draw.text((int(w * 0.05), y), " ".join(words), fill=ink, font=font)
        y += int(font_size * rng.uniform(1.3, 2.2))
        if rng.random() < 0.08:
            x0 = int(rng.uniform(0.05, 0.5) * w)
            draw.rectangle((x0, y, x0 + int(w * 0.3), y + 2 * font_size), outline=ink, width=2)
            y += 3 * font_size
    return img


def encode(img: Image.Image, rng: np.random.Generator) -> bytes:
    """JPEG most of the time, PNG otherwise: the two formats such pictures arrive in."""
    buf = io.BytesIO()
    if rng.random() < 0.7:
        img.save(buf, "JPEG", quality=int(rng.integers(60, 95)))
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def nonwaste_items(n: int = 240, seed: int = EVAL_SEED) -> list[tuple[str, bytes]]:
    """`n` encoded pictures, kinds in turn, with their kind: the same list for the same arguments."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        kind = KINDS[i % len(KINDS)]
        out.append((kind, encode(nonwaste_image(rng, kind), rng)))
    return out
