"""Post-training static INT8 quantization of the classifier ONNX, and its accuracy check.

    .venv/bin/python -m export.quantize model_int8.onnx [--fp32 model.onnx] [--calibration-count 128]
        [--format qdq|qoperator] [--evaluate-count 0]

Calibration images are decoded with the server's own preprocessing (`imaging.preprocess_bytes`),
so the activation ranges are those of the pixels the served model really sees. The graph's input
stays UINT8 NHWC and its output FP32 softmax: the quantized file is a drop-in `model.onnx` for
`<name>_classifier` (same names, same config.pbtxt).

Format choice (measured on this repository's 2-core Xeon with AVX512-VNNI, see BENCHMARKS.md):
QDQ with per-channel S8 weights and U8 activations is the default; ORT fuses the Q/DQ pairs into
integer kernels at session creation. `--format qoperator` writes QLinearConv etc. directly.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from contract import CLASSES, CLASSIFIER_INPUT, CLASSIFIER_OUTPUT, DEFAULT_MODEL, classifier_model

REPO_ROOT = Path(__file__).resolve().parent.parent
SPLIT_MANIFEST = REPO_ROOT / "training" / "splits" / "garbage12_seed42.csv"
DATA_DIR = (REPO_ROOT / ".." / "shared" / "data" / "garbage12").resolve()
#: The production classifier; `--fp32` defaults to the version Triton serves (the highest).
FP32_MODEL_DIR = REPO_ROOT / "model_repository" / classifier_model(DEFAULT_MODEL)
INPUT_NAME, OUTPUT_NAME = CLASSIFIER_INPUT, CLASSIFIER_OUTPUT


def split_items(split: str, manifest=SPLIT_MANIFEST, data_dir=DATA_DIR,
                limit: int | None = None, seed: int = 0) -> list[tuple[Path, str]]:
    """(path, label) of one split of the manifest; `limit` draws a seeded, class-mixed subset.

    Parameters
    ----------
    split : {"train", "val", "test"}
    manifest, data_dir : path
        The split CSV (relpath,label,split,...) and the folder `relpath` is relative to.
    limit : int, optional
        Keep this many, drawn with `seed` so that every run sees the same images.

    Returns
    -------
    list of (Path, str)
    """
    from training.dataset import load_split  # the one reader of split manifests

    rows = [(Path(path), CLASSES[index]) for path, index in load_split(manifest, data_dir)[split]]
    if limit is not None and limit < len(rows):
        order = np.random.default_rng(seed).permutation(len(rows))[:limit]
        rows = [rows[i] for i in sorted(order)]
    return rows


def load_pixels(paths: Iterable) -> np.ndarray:
    """Decode files with the server's preprocessing into one uint8 (N, 224, 224, 3) array."""
    from training.preprocessing import imaging

    return np.stack([imaging.preprocess_bytes(Path(p).read_bytes()) for p in paths])


class _PixelReader:
    """onnxruntime CalibrationDataReader over pre-decoded pixels, a few images per feed."""

    def __init__(self, pixels: np.ndarray, batch: int = 8):
        self._batches = iter([pixels[i:i + batch] for i in range(0, len(pixels), batch)])

    def get_next(self):
        chunk = next(self._batches, None)
        return None if chunk is None else {INPUT_NAME: chunk}


#: The classifier head: the dense layers and the softmax stay FP32 when `fp32_head` (the default).
HEAD_OPS = ("Gemm", "MatMul", "Softmax")


def _depthwise_convs(graph) -> list[str]:
    return [n.name for n in graph.node if n.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def _end_convs(graph) -> list[str]:
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    return convs[:1] + convs[-1:]


#: Parts of the convolutional body `keep_fp32` can leave in FP32 (by node, in the prepared graph):
#: "depthwise" - every grouped convolution: one 3x3/5x5 filter per channel, so a per-channel
#: scale has nine or 25 weights to fit and its channels' activation ranges differ most, the usual
#: place MobileNet-like networks lose accuracy to INT8; "ends" - the stem (first) and the last
#: convolution, whose errors no later layer averages out. Measured on Lite0 (MODEL_CARD.md, INT8):
#: neither helps there; FP32 depthwise convolutions even cost 1.5-1.9 pt.
FP32_PARTS = {"depthwise": _depthwise_convs, "ends": _end_convs}


def quantize_static(fp32_onnx, out_onnx, calibration_images: Sequence, *, fmt: str = "qdq",
                    per_channel: bool = True, calibrate_method: str = "minmax",
                    batch: int = 8, fp32_head: bool = True, reduce_range: bool = False,
                    activation_type: str = "u8", weight_type: str = "s8",
                    keep_fp32: Sequence[str] = ()) -> Path:
    """Quantize `fp32_onnx` to INT8 (S8 weights, U8 activations by default) and write `out_onnx`.

    Parameters
    ----------
    fp32_onnx, out_onnx : path
    calibration_images : sequence of path
        Encoded image files (training split); decoded with the server's preprocessing.
    fmt : {"qdq", "qoperator"}
        QuantizeLinear/DequantizeLinear pairs (fused by ORT at load) or QLinear* operators.
    per_channel : bool
        One weight scale per output channel: needed for depthwise convolutions, whose channels
        have very different ranges; per-tensor scales cost several accuracy points on MobileNets.
    calibrate_method : {"minmax", "percentile", "entropy"}
    batch : int
        Images per calibration feed (memory only; the ranges do not depend on it).
    fp32_head : bool
        Keep the head (dense layers, softmax) in FP32. Quantised, the softmax output is rounded to
        steps of 1/255: close classes tie (argmax then picks the lower index) and small
        probabilities become 0, which the calibration's log cannot undo; the head costs nothing
        next to the convolutions.
    reduce_range : bool
        7-bit weights. ONNX Runtime's quantization guide recommends it (or U8U8) on x86-64 CPUs
        without VNNI, whose U8S8 kernels can saturate their 16-bit intermediate sums.
    activation_type, weight_type : {"u8", "s8"}
        Integer types of activations and weights; U8/S8 is ORT's x86 default.
    keep_fp32 : sequence of str
        Keys of `FP32_PARTS`: body layers left unquantised (mixed precision).

    Returns
    -------
    Path
        `out_onnx`.

    Raises
    ------
    ValueError
        No calibration images, or an unknown format / method.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration_images:
        raise ValueError("no calibration images")
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    if fmt not in formats or calibrate_method not in methods:
        raise ValueError(f"format must be one of {sorted(formats)}, method one of {sorted(methods)}")
    if activation_type not in types or weight_type not in types:
        raise ValueError(f"activation and weight types must be one of {sorted(types)}")
    if set(keep_fp32) - set(FP32_PARTS):
        raise ValueError(f"keep_fp32 takes parts among {sorted(FP32_PARTS)}")
    out_onnx = Path(out_onnx)
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    pixels = load_pixels(calibration_images)
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        # Shape inference + constant folding first, as ORT's quantization guide asks: quantizing
        # an unoptimised tf2onnx graph leaves BatchNorm/Transpose chains as FP32 islands.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        import onnx

        graph = onnx.load(str(prepared)).graph
        exclude = [n.name for n in graph.node if n.op_type in HEAD_OPS] if fp32_head else []
        for part in keep_fp32:
            exclude += FP32_PARTS[part](graph)
        ort_quantize_static(
            str(prepared), str(out_onnx), _PixelReader(pixels, batch),
            quant_format=formats[fmt], per_channel=per_channel,
            activation_type=types[activation_type], weight_type=types[weight_type],
            reduce_range=reduce_range,
            calibrate_method=methods[calibrate_method], nodes_to_exclude=exclude,
        )
    return out_onnx


def predict(onnx_path, pixels: np.ndarray, batch: int = 16, threads: int = 0) -> np.ndarray:
    """Probabilities (N, classes) of an ONNX classifier on pre-decoded uint8 pixels."""
    from training.evaluate import onnx_session, probabilities  # the one ONNX evaluation path

    return probabilities(onnx_session(onnx_path, threads), pixels, batch)


def evaluate_onnx(onnx_path, items: Sequence[tuple], classes: Sequence[str] | None = None,
                  pixels: np.ndarray | None = None) -> dict:
    """Top-1 accuracy of an ONNX classifier on (path, label) items.

    Parameters
    ----------
    onnx_path : path
    items : sequence of (path, label)
    classes : sequence of str, optional
        Output index order; the contract's classes by default.
    pixels : ndarray, optional
        The items already decoded (to evaluate several models on one decode).

    Returns
    -------
    dict
        Flat record: model, images, accuracy, predictions (array of class indices).
    """
    classes = list(classes or CLASSES)
    if pixels is None:
        pixels = load_pixels([p for p, _ in items])
    predicted = predict(onnx_path, pixels).argmax(axis=1)
    truth = np.array([classes.index(label) for _, label in items])
    return {"model": str(onnx_path), "images": len(items),
            "accuracy": float((predicted == truth).mean()), "predictions": predicted}


def compare_int8(fp32_onnx, int8_onnx, items: Sequence[tuple]) -> dict:
    """Accuracy of both models on the same items, the change in points, and top-1 agreement."""
    pixels = load_pixels([p for p, _ in items])
    fp32 = evaluate_onnx(fp32_onnx, items, pixels=pixels)
    int8 = evaluate_onnx(int8_onnx, items, pixels=pixels)
    return {"images": len(items), "fp32_accuracy": fp32["accuracy"],
            "int8_accuracy": int8["accuracy"],
            "change_points": 100.0 * (int8["accuracy"] - fp32["accuracy"]),
            "top1_agreement": float((fp32["predictions"] == int8["predictions"]).mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="where to write the INT8 model")
    parser.add_argument("--fp32", help="FP32 ONNX (default: the highest version the repository serves)")
    parser.add_argument("--calibration-count", type=int, default=128,
                        help="training-split images used for calibration")
    parser.add_argument("--format", choices=("qdq", "qoperator"), default="qdq")
    parser.add_argument("--method", choices=("minmax", "percentile", "entropy"), default="minmax")
    parser.add_argument("--evaluate-count", type=int, default=0,
                        help="test-split images to compare FP32 and INT8 on (0: all, -1: skip)")
    args = parser.parse_args(argv)
    if args.fp32 is None:
        from export.model_repository import latest_version

        args.fp32 = str(latest_version(FP32_MODEL_DIR))
    start = time.perf_counter()
    calibration = [p for p, _ in split_items("train", limit=args.calibration_count)]
    quantize_static(args.fp32, args.out, calibration, fmt=args.format, calibrate_method=args.method)
    record = {"fp32": args.fp32, "int8": args.out, "format": args.format,
              "calibration_images": len(calibration),
              "quantize_s": round(time.perf_counter() - start, 1)}
    if args.evaluate_count >= 0:
        items = split_items("test", limit=args.evaluate_count or None)
        record.update(compare_int8(args.fp32, args.out, items))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
