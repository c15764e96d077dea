"""CPU runtimes for the same ONNX file: ONNX Runtime (CPU provider) against OpenVINO, in process.

Two uses, one setup (the stand-in backends' and the repository writer's settings):

- bench rows: `openvino_pixels` is row 1's loop (`rows.ort_pixels`) on an OpenVINO compiled model;
- accuracy parity: `agreement` runs both runtimes on the same photos and reports each one's accuracy,
  their top-1 agreement and the largest probability difference. As a command on the test split:

      .venv/bin/python -m benchmarks.runtimes [--model PATH.onnx] [--limit N] [--threads 1]

The third route, ONNX Runtime with its OpenVINO execution provider, needs the `onnxruntime-openvino`
wheel, which replaces `onnxruntime` (same package name); `scripts/ort_openvino_venv.sh` makes a
separate venv for it, and `ort_openvino_pixels` runs row 1's loop there in a subprocess
(`python -m benchmarks.runtimes --speed ...`, pixels passed as a .npy file).

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
        request.infer({INPUT_NAME: pixels}, share_inputs=True)  # as the stand-in backend does
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


#: The interpreter of the venv with onnxruntime-openvino (scripts/ort_openvino_venv.sh).
ORT_OPENVINO_PYTHON_ENV = "WASTE_ORT_OPENVINO_PYTHON"
DEFAULT_ORT_OPENVINO_VENV = Path(__file__).resolve().parent.parent / ".venv-ort-openvino"


def ort_openvino_python() -> Path | None:
    """The interpreter that has ONNX Runtime's OpenVINO provider, or None (the row is then skipped)."""
    import os

    candidate = Path(os.environ.get(ORT_OPENVINO_PYTHON_ENV) or DEFAULT_ORT_OPENVINO_VENV / "bin" / "python")
    return candidate if candidate.is_file() else None


def provider_speed(onnx_path, pixels: np.ndarray, batch: int, threads: int, provider: str) -> dict:
    """Row 1's loop with ONNX Runtime on `provider` ("cpu" or "openvino"): seconds and latencies.

    "openvino" appends the OpenVINO execution provider as NVIDIA's native backend does (device CPU,
    nothing else) plus `num_of_threads`, so the thread count matches the other rows.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = ["CPUExecutionProvider"]
    if provider == "openvino":
        providers.insert(0, ("OpenVINOExecutionProvider", {"device_type": "CPU", "num_of_threads": str(threads)}))
    session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    session.run([OUTPUT_NAME], {INPUT_NAME: pixels[:batch]})
    latencies = []
    with CpuMeter() as meter:
        start = time.perf_counter()
        for i in range(0, len(pixels), batch):
            t = time.perf_counter()
            session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i:i + batch]})
            latencies.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
    return {"images": int(len(pixels)), "seconds": seconds, "latencies_s": latencies, "cpu_ours": meter.ours,
            "cpu_system": meter.system, "providers": session.get_providers(), "onnxruntime": ort.__version__}


def row_from_speed(record: dict, key: str, what: str, batch: int, threads: int) -> Row:
    """A table row from `provider_speed`'s record (measured in another interpreter)."""
    note = f"batch {batch}, {threads} thread{'s' * (threads > 1)}, onnxruntime {record['onnxruntime']}"
    return Row(key, what, record["images"], record["seconds"], list(record["latencies_s"]),
               record.get("cpu_ours"), record.get("cpu_system"), note,
               {"batch": batch, "threads": threads, "providers": record["providers"]})


def ort_openvino_pixels(onnx_path, pixels: np.ndarray, batch: int, key: str, what: str, threads: int,
                        python: Path | None = None) -> Row | None:
    """Row 1's loop on ONNX Runtime + OpenVINO provider, in the separate venv; None without that venv."""
    import json as json_module
    import subprocess
    import tempfile

    python = python or ort_openvino_python()
    if python is None:
        return None
    with tempfile.TemporaryDirectory(prefix="bench-ovep-") as tmp:
        pixel_file = Path(tmp) / "pixels.npy"
        np.save(pixel_file, pixels)
        done = subprocess.run([str(python), "-m", "benchmarks.runtimes", "--speed", str(pixel_file),
                               "--model", str(onnx_path), "--batch", str(batch), "--threads", str(threads),
                               "--provider", "openvino"],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"{key}: {python} -m benchmarks.runtimes --speed failed: {done.stderr[-2000:]}")
    record = json_module.loads(done.stdout)
    if "OpenVINOExecutionProvider" not in record["providers"]:
        raise RuntimeError(f"{key}: {python} has no OpenVINO provider ({record['providers']})")
    return row_from_speed(record, key, what, batch, threads)


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

    Parameters
    ----------
    onnx_path : path
        The classifier.
    images : list of bytes
        Encoded photos.
    labels : list of int, optional
        Their class indices (adds each runtime's accuracy).
    threads : int
        Threads of each runtime.
    bf16 : bool
        Hint bfloat16 to OpenVINO (used only where the CPU has it).
    batch : int
        Photos per call.

    Returns
    -------
    dict
        `compare_outputs`'s record plus the model, the OpenVINO precision used, the CPU's bf16
        flags and the hint.
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
    parser.add_argument("--speed", metavar="PIXELS.npy",
                        help="instead: time ONNX Runtime on these pixels (the separate venv's row)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--provider", choices=("cpu", "openvino"), default="cpu")
    args = parser.parse_args(argv)
    if args.speed:
        record = provider_speed(args.model, np.load(args.speed), args.batch, args.threads, args.provider)
        print(json.dumps(record))
        return 0

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
