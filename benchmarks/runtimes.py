"""CPU runtimes for the same ONNX file: ONNX Runtime (CPU provider) against OpenVINO, in process.

Two uses, one setup (the stand-in backends' and the repository writer's settings):

- bench rows: `openvino_pixels` is row 1's loop (`rows.ort_pixels`) on an OpenVINO compiled model;
- accuracy parity: `agreement` runs both runtimes on the same photos and reports each one's accuracy,
  their top-1 agreement and the largest probability difference. As a command on the test split:

      .venv/bin/python -m benchmarks.runtimes [--model PATH.onnx] [--limit N] [--threads 1]

bfloat16: OpenVINO takes the hint everywhere and uses it only where the CPU has AVX512_BF16 or AMX;
`inference_precision` reports what the compiled model really uses, and `cpu_bf16_flags` what the CPU
offers, so a report says which of the two was measured.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import CpuMeter, Row
from contract import CLASSIFIER_INPUT as INPUT_NAME
from contract import CLASSIFIER_OUTPUT as OUTPUT_NAME
#: /proc/cpuinfo flags under which OpenVINO's CPU plugin runs bfloat16 natively.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The bfloat16 flags this CPU has (empty: OpenVINO keeps float32 despite the hint)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    return [flag for flag in BF16_FLAGS if flag in flags]


def openvino_properties(threads: int = 1, bf16: bool = True, streams: int = 1,
                        hint: str = "LATENCY") -> dict:
    """Compile properties matching the writer's openvino classifier config (one stream per instance)."""
    properties = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": streams, "PERFORMANCE_HINT": hint}
    if bf16:
        properties["INFERENCE_PRECISION_HINT"] = "bf16"
    return properties


def openvino_compiled(onnx_path, threads: int = 1, bf16: bool = True):
    """An OpenVINO CPU compiled model of `onnx_path`, set up like the stand-in openvino backend."""
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(str(onnx_path)), "CPU", openvino_properties(threads, bf16))


def inference_precision(compiled) -> str:
    """The element type ("float32", "bf16") the compiled model runs its floating-point layers in."""
    return str(compiled.get_property("INFERENCE_PRECISION_HINT")).replace("<Type: '", "").rstrip("'>")


def openvino_runner(compiled):
    """pixels [N,224,224,3] uint8 -> probabilities [N, classes], one infer request reused."""
    request = compiled.create_infer_request()

    def run(pixels: np.ndarray) -> np.ndarray:
        request.infer({INPUT_NAME: pixels})
        return request.get_tensor(OUTPUT_NAME).data.copy()

    return run


def ort_runner(session):
    def run(pixels: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]

    return run


def openvino_pixels(compiled, pixels: np.ndarray, batch: int, key: str, what: str, threads: int) -> Row:
    """Row 1's loop on OpenVINO: pre-decoded pixels, `batch` images per infer call."""
    run = openvino_runner(compiled)
    run(pixels[:batch])  # warm-up: the first call allocates
    latencies = []
    with CpuMeter() as meter:
        start = time.perf_counter()
        for i in range(0, len(pixels), batch):
            t = time.perf_counter()
            run(pixels[i:i + batch])
            latencies.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
    note = f"batch {batch}, {threads} thread{'s' * (threads > 1)}, {inference_precision(compiled)}"
    return meter.fill(Row(key, what, len(pixels), seconds, latencies, note=note,
                          params={"batch": batch, "threads": threads, "runtime": "openvino"}))


def compare_outputs(reference: np.ndarray, other: np.ndarray, labels: list[int] | None = None) -> dict:
    """Top-1 agreement, largest |difference| of probabilities and, with labels, each one's accuracy."""
    ref_top, other_top = reference.argmax(1), other.argmax(1)
    record = {"images": int(len(reference)),
              "top1_agreement": float(np.mean(ref_top == other_top)) if len(reference) else 0.0,
              "max_abs_diff": float(np.max(np.abs(reference - other))) if len(reference) else 0.0}
    if labels is not None:
        truth = np.asarray(labels)
        record["reference_accuracy"] = float(np.mean(ref_top == truth))
        record["other_accuracy"] = float(np.mean(other_top == truth))
        record["change_points"] = 100 * (record["other_accuracy"] - record["reference_accuracy"])
    return record


def agreement(onnx_path, images: list[bytes], labels: list[int] | None = None, *, threads: int = 1,
              bf16: bool = True, batch: int = 16) -> dict:
    """ONNX Runtime (reference) against OpenVINO on the same photos, through the server's preprocess.

    Returns `compare_outputs`'s record plus the OpenVINO precision used and the CPU's bf16 flags.
    """
    from benchmarks.rows import ort_session
    from training.preprocessing import imaging

    ort_run = ort_runner(ort_session(onnx_path, threads))
    compiled = openvino_compiled(onnx_path, threads, bf16)
    ov_run = openvino_runner(compiled)
    reference, other = [], []
    for i in range(0, len(images), batch):
        pixels = np.stack([imaging.preprocess_bytes(data) for data in images[i:i + batch]])
        reference.append(ort_run(pixels))
        other.append(ov_run(pixels))
    record = compare_outputs(np.concatenate(reference), np.concatenate(other), labels)
    record.update(model=str(onnx_path), openvino_precision=inference_precision(compiled),
                  cpu_bf16_flags=cpu_bf16_flags(), bf16_hint=bf16)
    return record


def main(argv=None) -> int:
    """Accuracy parity on the test split (or `--images` files): one JSON record on stdout."""
    parser = argparse.ArgumentParser(description="ONNX Runtime vs OpenVINO on the same model and photos")
    parser.add_argument("--model", help="classifier ONNX (default: the served effnet_lite0 version)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=0, help="photos of the split (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-bf16", action="store_true", help="leave OpenVINO at float32")
    args = parser.parse_args(argv)

    from contract import DEFAULT_MODEL, classifier_model
    from export.model_repository import COMMITTED, latest_version
    from export.quantize import split_items
    from training.labels import CLASSES

    items = split_items(args.split, limit=args.limit or None)
    images = [path.read_bytes() for path, _ in items]
    labels = [CLASSES.index(label) for _, label in items]
    model = args.model or latest_version(COMMITTED / classifier_model(DEFAULT_MODEL))
    record = agreement(model, images, labels, threads=args.threads,
                       bf16=not args.no_bf16)
    record["split"] = args.split
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
