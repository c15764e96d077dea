"""Pure tests of model_repository/preprocess/1/imaging.py (no server)."""
from __future__ import annotations

import importlib.util
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

_IMAGING_PATH = Path(__file__).resolve().parent.parent / "model_repository" / "preprocess" / "1" / "imaging.py"
_spec = importlib.util.spec_from_file_location("imaging", _IMAGING_PATH)
imaging = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(imaging)

RED = (200, 30, 30)
BLUE = (20, 40, 220)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds a few bytes of pixels: a bomb probe."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def center(arr: np.ndarray) -> np.ndarray:
    return arr[arr.shape[0] // 2, arr.shape[1] // 2].astype(int)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_formats_decode_to_letterboxed_rgb(fmt):
    out = imaging.preprocess_bytes(encode(Image.new("RGB", (320, 240), RED), fmt))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert np.abs(center(out) - RED).max() <= 12


def test_gif_uses_first_frame():
    frames = [Image.new("RGB", (64, 64), RED), Image.new("RGB", (64, 64), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.abs(center(imaging.preprocess_bytes(data)) - RED).max() <= 12


def test_exif_orientation_6_is_applied_before_letterbox():
    # Stored landscape, left half red; orientation 6 = rotate 90 degrees clockwise for display,
    # so the upright image is portrait with the red half on top.
    img = Image.new("RGB", (400, 200), BLUE)
    img.paste(RED, (0, 0, 200, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = imaging.decode_image(encode(img, "JPEG", exif=exif, quality=95))
    assert upright.size == (200, 400)
    arr = np.asarray(upright)
    assert np.abs(arr[50, 100].astype(int) - RED).max() <= 12
    assert np.abs(arr[350, 100].astype(int) - BLUE).max() <= 12


def test_letterbox_keeps_16_9_aspect_ratio():
    out = imaging.letterbox(Image.new("RGB", (1600, 900), RED))
    content_rows = np.where((out != imaging.PAD_VALUE).any(axis=(1, 2)))[0]
    content_cols = np.where((out != imaging.PAD_VALUE).any(axis=(0, 2)))[0]
    assert len(content_cols) == 224
    assert len(content_rows) == 126  # 224 * 9 / 16: not stretched to 224
    assert content_rows[0] == 49  # centred: (224 - 126) / 2 rows of padding above
    assert (out[:49] == imaging.PAD_VALUE).all() and (out[175:] == imaging.PAD_VALUE).all()


def test_portrait_is_padded_left_and_right():
    out = imaging.letterbox(Image.new("RGB", (300, 600), RED))
    assert (out[:, :56] == 114).all() and (out[:, -56:] == 114).all()
    assert np.abs(center(out) - RED).max() == 0


@pytest.mark.parametrize("mode,fmt,fill,expected", [
    ("L", "PNG", 90, (90, 90, 90)),
    ("1", "PNG", 1, (255, 255, 255)),
    ("CMYK", "JPEG", (0, 255, 255, 0), (255, 0, 0)),
    ("CMYK", "TIFF", (0, 255, 255, 0), (255, 0, 0)),
    ("RGBA", "PNG", (200, 30, 30, 0), (114, 114, 114)),  # fully transparent -> neutral grey
    ("RGBA", "PNG", (200, 30, 30, 255), RED),
    ("LA", "PNG", (0, 0), (114, 114, 114)),
    ("I;16", "PNG", 65535, (255, 255, 255)),
    ("I;16", "TIFF", 32896, (128, 128, 128)),
    ("I", "TIFF", 65535, (255, 255, 255)),
    ("I", "TIFF", 90, (90, 90, 90)),
])
def test_modes_convert_to_rgb(mode, fmt, fill, expected):
    data = encode(Image.new(mode, (64, 48), fill), fmt)
    out = imaging.preprocess_bytes(data)
    assert np.abs(center(out) - expected).max() <= 6, (mode, fmt, center(out))


def test_palette_and_transparent_palette():
    pal = Image.new("RGB", (64, 64), RED).convert("P", palette=Image.Palette.ADAPTIVE)
    assert np.abs(center(imaging.preprocess_bytes(encode(pal, "PNG"))) - RED).max() <= 6
    transparent = Image.new("P", (64, 64), 0)
    transparent.putpalette([200, 30, 30] * 256)
    data = encode(transparent, "PNG", transparency=0)
    assert tuple(center(imaging.preprocess_bytes(data))) == (114, 114, 114)


def truncated_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)), "JPEG")
    return data[: len(data) // 2]


@pytest.mark.parametrize("data,message", [
    (b"", "0 bytes"),
    (np.random.default_rng(1).bytes(5000), "not a recognised image"),
    (b"hello, this is not an image\n" * 20, "not a recognised image"),
    (truncated_jpeg(), "truncated"),
    (encode(Image.new("RGB", (1, 1)), "PNG"), "1x1"),
    (encode(Image.new("RGB", (4, 300)), "PNG"), "4x300"),
    (png_header_only(10000, 5000), "10000x5000 = 50000000 pixels, over the limit of 40 megapixels"),
    (png_header_only(20000, 20000), "over the limit of 40 megapixels"),  # past Pillow's own bomb limit
])
def test_bad_inputs_raise_clear_errors(data, message):
    with pytest.raises(imaging.ImageDecodeError, match=message):
        imaging.preprocess_bytes(data)


def test_decode_error_is_a_value_error_and_truncation_flag_untouched():
    assert issubclass(imaging.ImageDecodeError, ValueError)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_large_jpeg_uses_draft_mode():
    big = encode(Image.new("RGB", (4000, 3000), RED), "JPEG")
    img = imaging.decode_image(big, draft_size=224)
    assert img.size == (500, 375)  # 1/8 DCT scale: both sides still >= 224
    assert imaging.decode_image(big).size == (4000, 3000)


def test_trim_background_zooms_onto_an_object_on_a_dark_16x9_table():
    frame = Image.new("RGB", (1600, 900), (22, 24, 20))
    rng = np.random.default_rng(0)
    obj = Image.fromarray(rng.integers(120, 255, (300, 200, 3), dtype=np.uint8))
    frame.paste(obj, (700, 300))
    data = encode(frame, "JPEG")
    out = imaging.preprocess_bytes(data)
    # Rows crossing the (textured) object: it now fills the letterbox's height instead of a third
    # of a 16:9 band.
    def object_rows(pixels):
        return int((pixels.std(axis=(1, 2)) > 30).sum())

    assert object_rows(out) > 0.8 * imaging.INPUT_SIZE
    assert object_rows(imaging.letterbox(imaging.decode_image(data))) < 0.3 * imaging.INPUT_SIZE


def test_trim_background_leaves_a_scene_that_reaches_the_edges_alone():
    rng = np.random.default_rng(1)
    scene = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    assert imaging.trim_background(scene) is scene
    blank = Image.new("RGB", (640, 480), (30, 30, 30))
    assert imaging.trim_background(blank) is blank


def _trim_reference(img):
    """trim_background's rule in plain float arithmetic, to pin the int16 version to it."""
    small = np.asarray(img.reduce(max(1, -(-max(img.size) // 160))), dtype=np.float64)
    h, w = small.shape[:2]
    edges = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    close = np.abs(small - np.median(edges, axis=0)).max(axis=-1) <= imaging.TRIM_TOLERANCE
    if np.concatenate([close[0], close[-1], close[:, 0], close[:, -1]]).mean() < 0.9:
        return None
    rows = np.flatnonzero(close.mean(axis=1) < imaging.TRIM_ROW_FRACTION)
    cols = np.flatnonzero(close.mean(axis=0) < imaging.TRIM_ROW_FRACTION)
    if rows.size == 0 or cols.size == 0:
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    my, mx = int((bottom - top) * imaging.TRIM_MARGIN) + 1, int((right - left) * imaging.TRIM_MARGIN) + 1
    top, bottom, left, right = max(0, top - my), min(h, bottom + my), max(0, left - mx), min(w, right + mx)
    if (bottom - top) * (right - left) > 0.8 * h * w:
        return None
    sx, sy = img.width / w, img.height / h
    return (int(left * sx), int(top * sy), int(np.ceil(right * sx)), int(np.ceil(bottom * sy)))


@pytest.mark.parametrize("seed", range(12))
def test_trim_background_integer_arithmetic_matches_the_float_rule(seed):
    # The frame is two shades one level apart, split so that the thumbnail's edge median falls on a
    # half; the object sits at the tolerance from it (both sides). That is where an integer
    # version could round differently from the rule, if anywhere.
    rng = np.random.default_rng(seed)
    width, height = 64 * int(rng.integers(3, 14)), 64 * int(rng.integers(3, 9))
    shade = int(rng.integers(40, 200))
    frame = np.full((height, width, 3), shade, np.uint8)
    frame[height // 2:] = shade + 1
    ow, oh = int(width * rng.uniform(0.2, 0.6)), int(height * rng.uniform(0.2, 0.6))
    x, y = int(rng.integers(1, width - ow)), int(rng.integers(1, height - oh))
    offset = int(rng.choice([-1, 1])) * (imaging.TRIM_TOLERANCE + int(rng.integers(0, 2)))
    frame[y:y + oh, x:x + ow] = np.clip(shade + offset, 0, 255)
    img = Image.fromarray(frame)
    expected = _trim_reference(img)
    out = imaging.trim_background(img)
    if expected is None:
        assert out is img
    else:
        assert out is not img and out.size == (expected[2] - expected[0], expected[3] - expected[1])
