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
    (png_header_only(10000, 5000), r"declares 50000000 pixels \(10000x5000\), over the limit of 40 megapixels"),
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


# --- Issue 13: decode-cost bounds, restricted plugins, warnings as errors -----------------------

def progressive_jpeg(width: int, height: int, repeats: int = 0) -> bytes:
    """A progressive JPEG whose last scan is repeated `repeats` more times (the scan-count attack)."""
    data = encode(Image.new("RGB", (width, height), (120, 130, 140)), "JPEG", quality=75, progressive=True)
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * repeats + b"\xff\xd9"


def png_deep_gray(width: int, height: int) -> bytes:
    """A 16-bit grey PNG of mid grey, compressed a row at a time: 40 MP fits in about 87 KB."""
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    packer = zlib.compressobj(9)
    row = b"\x00" + b"\x80\x00" * width
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_ordinary_jpegs_are_within_the_scan_budget():
    assert imaging.jpeg_scan_count(progressive_jpeg(640, 480)) == 10  # libjpeg's progressive script
    assert imaging.jpeg_scan_count(encode(Image.new("RGB", (64, 64)), "JPEG")) == 1
    # An EXIF thumbnail is a whole JPEG inside APP1: its scan is not counted.
    exif = Image.Exif()
    thumb = encode(Image.new("RGB", (32, 32)), "JPEG")
    data = encode(Image.new("RGB", (64, 64)), "JPEG", exif=exif.tobytes() + thumb)
    assert imaging.jpeg_scan_count(data) == 1
    assert imaging.preprocess_bytes(progressive_jpeg(640, 480, repeats=20)).shape == (224, 224, 3)


@pytest.mark.parametrize("width,height,repeats,message", [
    (1024, 1024, 2000, "JPEG has 2010 scans, over the limit of 32"),
    (4000, 4000, 4000, "JPEG has 4010 scans, over the limit of 32"),
    # 31 scans are allowed, but not over 16 MP: 31 x 16 MP is over 12 scans at 40 MP.
    (8000, 2000, 21, "JPEG decode budget exceeded: 31 scans x 8000x2000 pixels"),
])
def test_scan_attacks_are_refused_before_decoding(width, height, repeats, message):
    import time
    data = progressive_jpeg(width, height, repeats)
    started = time.perf_counter()
    with pytest.raises(imaging.ImageDecodeError, match=message):
        imaging.preprocess_bytes(data)
    # Unbounded, the 4000-scan file took 95 s here; refused, only the markers are walked.
    assert time.perf_counter() - started < 0.5


def test_deep_and_flat_images_over_the_decode_budget_are_refused():
    bomb = png_deep_gray(8000, 5000)
    assert len(bomb) < 100_000
    with pytest.raises(imaging.ImageDecodeError, match="16-bit image is 8000x5000 = 40000000 pixels, "
                       "over the limit of 10 megapixels"):
        imaging.preprocess_bytes(bomb)
    flat = encode(Image.new("RGB", (6000, 6000), (90, 100, 110)), "PNG")
    with pytest.raises(imaging.ImageDecodeError, match=r"decode budget exceeded: \d+ bytes of PNG "
                       r"inflate to 108000000 bytes of pixels \(6000x6000\)"):
        imaging.preprocess_bytes(flat)
    # A deep image under the limit is decoded, scaled to 8 bit.
    assert tuple(center(imaging.preprocess_bytes(png_deep_gray(400, 300)))) == (128, 128, 128)


def test_deep_conversion_matches_the_float_rule_for_every_16_bit_value():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = np.asarray(imaging.to_rgb(Image.fromarray(values)))
    expected = np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    assert out.shape == (256, 256, 3) and np.array_equal(out[..., 0], expected)
    assert np.array_equal(out[..., 1], expected) and np.array_equal(out[..., 2], expected)


REFUSED_FORMATS = {"ICO": "ICO", "PPM": "PPM/PGM/PBM", "PCX": None, "TGA": None, "SGI": None,
                   "DDS": "DDS", "QOI": "QOI"}


def test_only_the_accepted_formats_plugins_parse_the_bytes(monkeypatch):
    """Every other plugin Pillow has is registered (Image.init), and none of them is ever asked."""
    Image.init()
    samples = {}
    for fmt in REFUSED_FORMATS:
        try:
            samples[fmt] = encode(Image.new("RGB", (32, 32), (200, 30, 30)), fmt)
        except (KeyError, OSError, ValueError):  # no encoder in this Pillow build
            continue
    assert {"ICO", "PPM", "PCX", "TGA"} <= set(samples)
    called = []
    allowed = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF"}
    for fmt, (factory, _) in list(Image.OPEN.items()):
        if fmt in allowed or not isinstance(factory, type):
            continue
        def spy(self, _fmt=fmt):
            called.append(_fmt)
            raise AssertionError(f"{_fmt} plugin parsed untrusted bytes")
        monkeypatch.setattr(factory, "_open", spy)
    for fmt, data in samples.items():
        with pytest.raises(imaging.ImageDecodeError) as refused:
            imaging.preprocess_bytes(data)
        name = REFUSED_FORMATS[fmt]
        if name:
            assert f"image format {name} is not accepted" in str(refused.value)
    assert called == []
    # The accepted formats still open, through their own plugins only.
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"):
        assert imaging.preprocess_bytes(encode(Image.new("RGB", (64, 48), RED), fmt)).shape == (224, 224, 3)
    assert called == []


def test_warnings_as_errors_change_no_outcome():
    """`python -W error`: Pillow's DecompressionBombWarning (89-179 MP) is the same refusal."""
    import subprocess
    import sys
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('imaging', {str(_IMAGING_PATH)!r})\n"
        "imaging = importlib.util.module_from_spec(spec); spec.loader.exec_module(imaging)\n"
        "import struct, zlib\n"
        "def chunk(k, b): return struct.pack('>I', len(b)) + k + b + struct.pack('>I', zlib.crc32(k + b))\n"
        "png = (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 10000, 10000, 8, 2, 0, 0, 0))"
        " + chunk(b'IDAT', zlib.compress(b'\\0' * 1000)) + chunk(b'IEND', b''))\n"
        "try:\n    imaging.preprocess_bytes(png)\n"
        "except imaging.ImageDecodeError as exc:\n    print('REFUSED', exc)\n"
    )
    outputs = []
    for flags in ([], ["-W", "error"]):
        done = subprocess.run([sys.executable, *flags, "-c", script], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("REFUSED"), (flags, done.stdout, done.stderr)
        assert "declares 100000000 pixels" in done.stdout, done.stdout
        assert "over the limit of 40 megapixels" in done.stdout
        outputs.append(done.stdout)
    # Pillow's guard (with -W error) and ours (without) say the same, bar the sides only ours knows.
    assert outputs[0].replace(" (10000x10000)", "") == outputs[1]


def test_peak_decode_memory_per_pixel_is_what_imaging_states():
    """The worst format (WebP) decoded in a fresh process: peak RSS growth per pixel."""
    import subprocess
    import sys
    import tempfile
    side = 2000  # 4 MP: the growth is linear in pixels (measured up to 36 MP, see imaging.py)
    gradient = Image.linear_gradient("L").resize((side, side))
    data = encode(Image.merge("RGBA", [gradient] * 4), "WEBP", quality=80)
    with tempfile.NamedTemporaryFile(suffix=".webp") as handle:
        handle.write(data)
        handle.flush()
        script = (
            "import importlib.util, re\n"
            f"spec = importlib.util.spec_from_file_location('imaging', {str(_IMAGING_PATH)!r})\n"
            "imaging = importlib.util.module_from_spec(spec); spec.loader.exec_module(imaging)\n"
            f"data = open({handle.name!r}, 'rb').read()\n"
            "imaging.DECODE_FREE_BYTES = 10 ** 12  # the file is flat: measure, do not refuse\n"
            "kb = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
            "open('/proc/self/clear_refs', 'w').write('5')  # VmHWM := VmRSS\n"
            "base = kb('VmRSS')\n"
            "imaging.preprocess_bytes(data)\n"
            "print((kb('VmHWM') - base) * 1024)\n"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    per_pixel = int(done.stdout) / side ** 2
    assert 8 < per_pixel <= imaging.PEAK_DECODE_BYTES_PER_PIXEL, per_pixel
