"""Issue 6 bad-input matrix on the real server (HTTP and gRPC) and through the bulk scorer.

Every case is sent concurrently with good images (asyncio, so the dynamic batchers put them in the
same executions) and must come back with its exact outcome: classified, or INVALID_ARGUMENT with a
message naming the problem; the good images beside them succeed and the server stays ready.
RELIABILITY.md lists the outcomes observed.
"""
from __future__ import annotations

import asyncio
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as http_aio
from PIL import Image
from tritonclient.utils import InferenceServerException

from test_preprocess import png_deep_gray, progressive_jpeg
from waste_client._results import read_results
from waste_client.cli import main as client_main

_IMAGING = Path(__file__).resolve().parent.parent / "model_repository" / "preprocess" / "1" / "imaging.py"
OK = None  # expected outcome "classified"
MAX_BYTES = 32 * 1024 * 1024  # imaging.MAX_BYTES


def photo(width=320, height=240, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int, bit_depth=8, color_type=2, idat=b"\x00" * 1000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(idat))
            + _chunk(b"IEND", b""))


def jpeg_bad_huffman() -> bytes:
    data = bytearray(encode(photo(seed=11), "JPEG", quality=90))
    dht = data.index(b"\xff\xc4")
    # The 16 code-length counts of the first table all 255: no valid Huffman code has that many.
    data[dht + 5: dht + 21] = b"\xff" * 16
    return bytes(data)


def png_bad_crc() -> bytes:
    data = bytearray(encode(photo(seed=12), "PNG"))
    data[29] ^= 0xFF  # last byte of the IHDR CRC (8 signature + 4 length + 4 type + 13 body)
    return bytes(data)


def png_16bit_rgb() -> bytes:
    rng = np.random.default_rng(13)
    rows = rng.integers(0, 65535, (64, 96, 3), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return png_header(96, 64, bit_depth=16, color_type=2, idat=raw)


def palette_with_transparency() -> bytes:
    pal = photo(seed=14).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(pal, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [photo(seed=s) for s in (15, 16, 17)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_orientation_6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display: stored landscape, shown portrait
    return encode(photo(400, 200, seed=18), "JPEG", quality=90, exif=exif.tobytes())


def big_png() -> bytes:
    """A valid ~30 MB PNG (3200x3200 noise, stored uncompressed): under MAX_BYTES and MAX_PIXELS."""
    arr = np.frombuffer(np.random.default_rng(19).bytes(3200 * 3200 * 3), np.uint8).reshape(3200, 3200, 3)
    data = encode(Image.fromarray(arr), "PNG", compress_level=0)
    assert 30_000_000 < len(data) < MAX_BYTES
    return data


#: name -> (bytes, expected): OK, or a substring the INVALID_ARGUMENT message must contain.
def build_cases() -> dict[str, tuple[bytes, str | None]]:
    big = big_png()
    return {
        "zero bytes": (b"", "empty input: 0 bytes"),
        "random bytes": (np.random.default_rng(9).bytes(3000), "not a recognised image file"),
        "text": (b"hello, this is a text file and not an image\n" * 10, "not a recognised image file"),
        "HTML": (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
                 "an HTML document"),
        "PDF": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", "a PDF document"),
        "SVG": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                b'<rect width="64" height="64"/></svg>', "an SVG (vector) image"),
        "truncated JPEG": ((lambda d: d[: len(d) // 2])(encode(photo(seed=10), "JPEG")),
                           "corrupt or truncated JPEG"),
        "JPEG corrupt Huffman table": (jpeg_bad_huffman(), "corrupt or truncated JPEG"),
        "PNG bad CRC": (png_bad_crc(), "corrupt PNG file: broken PNG file (bad header checksum"),
        "PNG 50000x50000": (png_header(50000, 50000),
                            "declares 2500000000 pixels, over the limit of 40 megapixels"),
        "1x1 image": (encode(Image.new("RGB", (1, 1)), "PNG"), "1x1 pixels, smaller than the minimum 8x8"),
        "16-bit grayscale PNG": (encode(Image.fromarray(
            np.linspace(0, 65535, 240 * 320).reshape(240, 320).astype(np.uint16)), "PNG"), OK),
        "16-bit RGB PNG": (png_16bit_rgb(), OK),
        "CMYK JPEG": (encode(photo(seed=20).convert("CMYK"), "JPEG"), OK),
        "palette PNG with transparency": (palette_with_transparency(), OK),
        "animated GIF": (animated_gif(), OK),
        "WebP": (encode(photo(seed=21), "WEBP"), OK),
        "TIFF": (encode(photo(seed=22), "TIFF"), OK),
        "EXIF orientation 6": (exif_orientation_6(), OK),
        "30 MB PNG": (big, OK),
        "33 MiB file": (big + b"\x00" * (MAX_BYTES + 1024 - len(big)), "over the limit of 33554432 bytes"),
        # Issue 13: cheap to send, seconds to decode before the decode budget (test_decode_budget.py
        # has them all, with timings); here they go through both protocols and the scorer.
        "progressive JPEG, last scan repeated 2000 times": (progressive_jpeg(1024, 1024, 2000),
                                                            "JPEG has 2010 scans, over the limit of 32"),
        "16-bit PNG declaring 40 MP": (png_deep_gray(8000, 5000), "16-bit image is 8000x5000"),
        "ICO": (encode(Image.new("RGB", (32, 32), (200, 30, 30)), "ICO"), "image format ICO is not accepted"),
    }


@pytest.fixture(scope="module")
def cases():
    return build_cases()


def good_jpeg(seed: int) -> bytes:
    return encode(photo(seed=100 + seed), "JPEG", quality=90)


async def _send_all(protocol: str, url: str, items: list[bytes]) -> list:
    """One async request per item, all in flight together; each result is an array or an exception."""
    module = grpc_aio if protocol == "grpc" else http_aio
    client = module.InferenceServerClient(url) if protocol == "grpc" else \
        module.InferenceServerClient(url, conn_limit=len(items), conn_timeout=120)
    try:
        async def one(data: bytes):
            tensor = module.InferInput("image_bytes", [1, 1], "BYTES")
            if protocol == "http":
                tensor.set_data_from_numpy(np.array([[data]], dtype=object), binary_data=True)
            else:
                tensor.set_data_from_numpy(np.array([[data]], dtype=object))
            result = await client.infer("dev", [tensor])
            return result.as_numpy("probabilities")

        return await asyncio.gather(*(one(d) for d in items), return_exceptions=True)
    finally:
        await client.close()


def _sync_client(server, protocol):
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url, network_timeout=120)


def _preprocess_counts(client, protocol):
    stats = (client.get_inference_statistics("preprocess", as_json=True) if protocol == "grpc"
             else client.get_inference_statistics("preprocess"))
    entry = stats["model_stats"][0]
    return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_case_in_one_batch_with_good_images(dev_server, cases, protocol):
    names = list(cases)
    # Interleave: a good image after every case, so each execution mixes good and bad requests.
    order = [(name, cases[name][0], cases[name][1]) for name in names]
    order = [x for i, case in enumerate(order) for x in (case, (f"good {i}", good_jpeg(i), OK))]
    _, client = _sync_client(dev_server, protocol)
    inferences_before, executions_before = _preprocess_counts(client, protocol)
    url = dev_server.grpc_url if protocol == "grpc" else dev_server.http_url
    results = asyncio.run(_send_all(protocol, url, [data for _, data, _ in order]))

    problems = []
    for (name, _, expected), result in zip(order, results):
        if expected is OK:
            if isinstance(result, BaseException):
                problems.append(f"{name}: expected classified, got {result!r}")
            elif result.shape != (1, 12) or abs(float(result.sum()) - 1) > 1e-4:
                problems.append(f"{name}: bad probabilities {result}")
            continue
        if not isinstance(result, InferenceServerException):
            problems.append(f"{name}: expected INVALID_ARGUMENT, got {result!r}")
            continue
        status = str(result.status())
        if status not in ("StatusCode.INVALID_ARGUMENT", "400"):
            problems.append(f"{name}: status {status}, message {result.message()}")
        if expected not in result.message():
            problems.append(f"{name}: message {result.message()!r} lacks {expected!r}")
    assert not problems, "\n".join(problems)

    assert client.is_server_ready() and client.is_model_ready("dev")
    inferences, executions = _preprocess_counts(client, protocol)
    # Fewer executions than requests: the batcher did group good and bad requests together.
    assert executions - executions_before < inferences - inferences_before, (
        inferences - inferences_before, executions - executions_before)


def test_exif_orientation_is_applied_before_the_letterbox(dev_server, cases):
    """The served preprocess output of the EXIF-6 photo is portrait (padded left and right)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("imaging_for_test", _IMAGING)
    imaging = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(imaging)
    data = cases["EXIF orientation 6"][0]
    client = grpcclient.InferenceServerClient(dev_server.grpc_url)
    tensor = grpcclient.InferInput("preprocess_input", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=object))
    served = client.infer("preprocess", [tensor]).as_numpy("preprocess_output")[0]
    np.testing.assert_array_equal(served, imaging.preprocess_bytes(data))
    # Stored 400x200 landscape; upright it is 200x400, so 112 columns of padding: 56 on each side.
    assert (served[:, :50] == 114).all() and (served[:, -50:] == 114).all()
    assert not (served[:5, 60:-60] == 114).all()  # no padding at the top: the image fills the height


DIRECT = {
    # name: (model, input name, datatype, array, expected message)
    "empty batch to the classifier": ("dev_classifier", "classifier_input", "UINT8",
                                      np.zeros((0, 224, 224, 3), np.uint8), "input byte size mismatch"),
    "FP32 instead of UINT8": ("dev_classifier", "classifier_input", "FP32",
                              np.zeros((1, 224, 224, 3), np.float32), "data-type is 'FP32', but model"),
    "wrong shape": ("dev_classifier", "classifier_input", "UINT8",
                    np.zeros((1, 100, 224, 3), np.uint8), "unexpected shape for input 'classifier_input'"),
    "no batch dimension": ("dev_classifier", "classifier_input", "UINT8",
                           np.zeros((224, 224, 3), np.uint8), "batch-size must be <= 64"),
    "batch over max_batch_size": ("dev_classifier", "classifier_input", "UINT8",
                                  np.zeros((65, 224, 224, 3), np.uint8), "batch-size must be <= 64"),
    "empty batch to the ensemble": ("dev", "image_bytes", "BYTES", np.zeros((0, 1), object),
                                    "expected 1 string elements for inference input 'image_bytes'"),
    "INT32 instead of BYTES": ("dev", "image_bytes", "INT32", np.zeros((1, 1), np.int32),
                               "data-type is 'INT32', but model 'dev' expects 'BYTES'"),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_wrong_tensors_straight_to_the_models_are_refused_cleanly(dev_server, protocol):
    module, client = _sync_client(dev_server, protocol)
    for name, (model, input_name, datatype, array, expected) in DIRECT.items():
        tensor = module.InferInput(input_name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, [tensor])
        assert str(info.value.status()) in ("StatusCode.INVALID_ARGUMENT", "400"), (name, info.value)
        assert expected in info.value.message(), (name, info.value.message())
    good = module.InferInput("classifier_input", [1, 224, 224, 3], "UINT8")
    good.set_data_from_numpy(np.full((1, 224, 224, 3), 114, np.uint8))
    assert client.infer("dev_classifier", [good]).as_numpy("classifier_output").shape == (1, 12)
    assert client.is_server_ready()


SUFFIX = {"PDF": ".pdf.png", "SVG": ".svg.png", "HTML": ".html.jpg", "WebP": ".webp", "TIFF": ".tif",
          "animated GIF": ".gif"}


def test_bulk_scorer_records_bad_files_as_error_rows(dev_server, cases, tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    expected = {}
    for i, (name, (data, outcome)) in enumerate(cases.items()):
        filename = f"{i:02d}_{name.replace(' ', '_')}{SUFFIX.get(name, '.png')}"
        (folder / filename).write_bytes(data)
        expected[filename] = outcome
    out = tmp_path / "results.jsonl"
    code = client_main(["score", str(folder), "--url", dev_server.grpc_url, "--model", "dev",
                        "--out", str(out), "--no-progress", "--no-table", "--in-flight", "8"])
    assert code == 1  # 1: finished, with error rows
    rows = {Path(row["path"]).name: row for row in read_results(str(out))}  # rows hold absolute paths
    assert set(rows) == set(expected)
    for filename, outcome in expected.items():
        row = rows[filename]
        if outcome is OK:
            assert not row["error"] and row["label"], row
        else:
            assert row["error"].startswith("INVALID_ARGUMENT") and outcome in row["error"], row
            assert not row["label"]
