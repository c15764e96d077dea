"""Quantise the served FP32 classifier several ways and score every variant on THIS CPU's test split.

    nice -n 5 .venv/bin/python -m export.int8_variants [--calibration-images 300] [--out DIR]

Why: ONNX Runtime's U8S8 integer kernels on x86-64 without VNNI (AVX2, AVX512 without
VNNI) can saturate, and its quantization guide recommends `reduce_range` (7-bit weights) or U8U8
there. The served INT8 scores differently on a VNNI Xeon and on an AVX2 EPYC, so each recipe is
measured here, on the same decoded pixels, next to the served FP32 and INT8 versions.

Every variant is quantised from the highest FP32 version (its temperature and class offsets sit
in the FP32 head, which stays FP32), with the same class-balanced training images
(`export.__main__.balanced_calibration_set`). Printed: one table (top-1 accuracy, macro-F1,
lowest class recall and its class, change against the served INT8, agreement with FP32), then
milliseconds per image on one thread (batches of 16, one short pass on a shared box: a rough
cost, not a benchmark). The CPU's model name and VNNI flags head the output; `--out` keeps the
variant files and a JSON record. Nothing is published.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: name -> quantize_static options; "u8s8" is today's export path (the control).
VARIANTS = {
    "u8s8": {},
    "u8s8_reduce_range": {"reduce_range": True},
    "u8u8": {"weight_type": "u8"},
    "u8u8_reduce_range": {"weight_type": "u8", "reduce_range": True},
    "s8s8": {"activation_type": "s8"},
    "u8s8_fp32_depthwise": {"keep_fp32": ("depthwise",)},
    "u8s8_reduce_range_fp32_depthwise": {"reduce_range": True, "keep_fp32": ("depthwise",)},
    "u8s8_reduce_range_fp32_ends": {"reduce_range": True, "keep_fp32": ("ends",)},
}


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """Model name and the integer-dot-product flags of this CPU (what INT8 kernels ORT picks depends on)."""
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"model_name": name, "flags": [f for f in wanted if f in flags]}


def ms_per_image(onnx_path, pixels: np.ndarray, batch: int = 16) -> float:
    """Milliseconds per image, one thread, one pass over `pixels` after one warm-up batch."""
    from training.evaluate import onnx_session, probabilities

    session = onnx_session(onnx_path, threads=1)
    probabilities(session, pixels[:batch], batch)
    start = time.perf_counter()
    probabilities(session, pixels, batch)
    return 1000.0 * (time.perf_counter() - start) / len(pixels)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--timing-images", type=int, default=64, help="0: no timing")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--model", default=None, help="served model whose FP32 and INT8 twin to compare "
                                                      "(default: the default model)")
    parser.add_argument("--out", type=Path, default=None, help="keep the variant files and record.json here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from contract import CLASSES, classifier_model, int8_model, DEFAULT_MODEL
    from export.__main__ import balanced_calibration_set
    from export.model_repository import latest_version
    from export.quantize import DATA_DIR, REPO_ROOT, SPLIT_MANIFEST, load_pixels, quantize_static
    from training.dataset import load_split
    from training.evaluate import metrics, onnx_session, probabilities

    repo = REPO_ROOT / "model_repository"
    model = args.model or DEFAULT_MODEL
    fp32_dir = latest_version(repo / classifier_model(model)).parent
    int8_dir = latest_version(repo / classifier_model(int8_model(model))).parent
    splits = load_split(SPLIT_MANIFEST, DATA_DIR)
    calibration = balanced_calibration_set(splits["train"], args.calibration_images)
    test = splits["test"]
    out = args.out or Path(tempfile.mkdtemp(prefix="int8-variants-"))
    out.mkdir(parents=True, exist_ok=True)

    cpu = cpu_description()
    print(f"CPU: {cpu['model_name']}; flags: {' '.join(cpu['flags']) or 'none of avx2/avx512/vnni/amx'}")
    logger.info("decoding %d test images", len(test))
    pixels = load_pixels([p for p, _ in test])
    labels = np.array([label for _, label in test])

    models = {f"served FP32 {fp32_dir.parent.name}/{fp32_dir.name}": fp32_dir / "model.onnx",
              f"served INT8 {int8_dir.parent.name}/{int8_dir.name}": int8_dir / "model.onnx"}
    for name in args.variants:
        target = out / f"{name}.onnx"
        logger.info("quantising %s from %s", name, fp32_dir)
        quantize_static(fp32_dir / "model.onnx", target, calibration, **VARIANTS[name])
        models[name] = target

    rows, fp32_pred = {}, None
    for name, path in models.items():
        logger.info("scoring %s", name)
        probs = probabilities(onnx_session(path), pixels, 16)
        m = metrics(probs, labels, tuple(CLASSES))
        fp32_pred = probs.argmax(1) if fp32_pred is None else fp32_pred
        rows[name] = {k: m[k] for k in ("images", "accuracy", "macro_f1", "min_recall", "min_recall_class")}
        rows[name]["agreement_with_fp32"] = float((probs.argmax(1) == fp32_pred).mean())
        if args.timing_images:
            rows[name]["ms_per_image_1_thread"] = ms_per_image(path, pixels[:args.timing_images])

    served_int8 = rows[list(models)[1]]["accuracy"]
    print(f"\n{len(test)} test images, calibration {len(calibration)} class-balanced training images\n")
    print("| model | top-1 | macro-F1 | lowest recall (class) | vs served INT8 (pt) | agrees with FP32 | ms/image, 1 thread |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        timing = f"{r['ms_per_image_1_thread']:.1f}" if "ms_per_image_1_thread" in r else "-"
        print(f"| {name} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['min_recall']:.3f} ({r['min_recall_class']}) "
              f"| {100 * (r['accuracy'] - served_int8):+.2f} | {r['agreement_with_fp32']:.3f} | {timing} |")
    record = {"cpu": cpu, "fp32": str(fp32_dir), "served_int8": str(int8_dir),
              "calibration_images": len(calibration), "variants": {k: VARIANTS[k] for k in args.variants},
              "rows": rows}
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nvariant files and record.json in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
