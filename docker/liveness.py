"""Liveness/readiness probe: one real inference through the plain ensemble, standard library only.

`/v2/health/live` and `/ready` stay 200 when a Python backend stub is dead (tritonserver 2.51 never
restarts one, triton-inference-server/server#8604), so a probe that only asks them never restarts
a pod that fails every request. This sends a small generated PNG to the ensemble over HTTP (the
binary tensor extension) and checks that 12 probabilities come back.

    python3 /opt/waste/liveness.py [--url 127.0.0.1:8000] [--model effnet_lite0] [--timeout 8]

Exit 0: answered, or refused only because the server is busy (its queue is full or a queued
request timed out: a busy server is alive, and restarting it would make the overload worse).
Exit 1: anything else (connection refused, an error from a stub, a wrong answer, a timeout).
It runs inside NVIDIA's image, where our packages are not installed, so the contract's names are
repeated here; tests/test_deploy_files.py pins them equal to `contract`.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import urllib.error
import urllib.request
import zlib

DEFAULT_MODEL = "effnet_lite0"
ENSEMBLE_INPUT = "image_bytes"
ENSEMBLE_OUTPUT = "probabilities"
NUM_CLASSES = 12
#: Triton's messages for a request refused because the server is busy (UNAVAILABLE).
BUSY = ("Exceeds maximum queue size", "Request timeout expired")


def probe_png(side: int = 32) -> bytes:
    """A `side` x `side` RGB PNG with a diagonal gradient (not blank), built with zlib."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + bytes(((x + y) * 4) % 256 for x in range(side) for _ in range(3))
                    for y in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def infer_request(image: bytes) -> tuple[bytes, int]:
    """Body and JSON-header length of a binary-extension infer request with one BYTES element."""
    element = struct.pack("<I", len(image)) + image
    header = json.dumps({
        "inputs": [{"name": ENSEMBLE_INPUT, "shape": [1, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(element)}}],
        "outputs": [{"name": ENSEMBLE_OUTPUT, "parameters": {"binary_data": False}}],
    }).encode()
    return header + element, len(header)


def check(url: str, model: str = DEFAULT_MODEL, timeout: float = 8.0) -> tuple[bool, str]:
    """(alive, what happened) for the server at `url` (host:port of its HTTP endpoint)."""
    body, header_length = infer_request(probe_png())
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer", data=body, method="POST",
        headers={"Content-Type": "application/octet-stream",
                 "Inference-Header-Content-Length": str(header_length)})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")
        if any(reason in text for reason in BUSY):
            return True, f"busy (HTTP {exc.code}): {text[:200]}"
        return False, f"HTTP {exc.code}: {text[:300]}"
    except (OSError, ValueError) as exc:  # refused, reset, timed out, not JSON
        return False, f"no answer from {url}: {exc}"
    outputs = {o.get("name"): o for o in answer.get("outputs", [])}
    data = outputs.get(ENSEMBLE_OUTPUT, {}).get("data", [])
    if len(data) != NUM_CLASSES or not 0.98 < sum(data) < 1.02:
        return False, f"unexpected answer: {json.dumps(answer)[:300]}"
    return True, f"ok: {model} answered {NUM_CLASSES} probabilities"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port of Triton's HTTP endpoint")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the plain (not TTA) ensemble")
    parser.add_argument("--timeout", type=float, default=8.0, help="seconds for the whole request")
    args = parser.parse_args(argv)
    alive, what = check(args.url, args.model, args.timeout)
    print(what, file=sys.stdout if alive else sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
