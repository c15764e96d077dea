"""Score a split through an exported ONNX classifier with exactly the server's preprocessing.

    python -m training.evaluate MODEL.onnx [--manifest M] [--split test] [--out DIR]

Images are decoded and letterboxed by `model_repository/preprocess/1/imaging.py` (the module the
server runs) and the ONNX file is the one Triton serves, so these numbers are what the server
delivers. TTA here is the `<name>_tta` ensemble's: the mean of the image and its mirror.
Writes metrics.json (one flat record per variant) and a confusion-matrix PNG per variant.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from training.dataset import load_split
from training.labels import CLASSES
from training.plots import plot_confusion
from training.preprocessing import imaging


def wide_dark_photo(data: bytes, seed: int) -> bytes:
    """Re-stage a photo as users take them: the object on a dark table in a 16:9 landscape frame.

    The object keeps its aspect ratio and fills 55-85% of the frame's height; the result is a JPEG,
    so it goes through the server's whole decode + letterbox path like a real upload.
    """
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    img = imaging.decode_image(data)
    height = int(img.height / rng.uniform(0.55, 0.85))
    width = height * 16 // 9
    canvas = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(5, 45, size=3)))
    left = int((width - img.width) / 2 + rng.uniform(-0.25, 0.25) * (width - img.width))
    canvas.paste(img, (left, (height - img.height) // 2))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=90)
    return out.getvalue()


def onnx_session(model_path: str | Path, threads: int = 0) -> ort.InferenceSession:
    """The one way evaluation opens an ONNX classifier (CPU; `threads` 0 lets ORT choose)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def probabilities(session: ort.InferenceSession, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    """Class probabilities (N, classes) of pre-decoded uint8 NHWC pixels, `batch` images per run."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: pixels[i:i + batch]})[0]
                           for i in range(0, len(pixels), batch)])


def predict(model_path: str | Path, paths: list[str], batch: int = 32,
            wide: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Probabilities for each file, plain and mirrored; files the server would reject are reported, not skipped silently.

    `wide=True` scores each photo re-staged by `wide_dark_photo` instead of as it is.
    """
    session = onnx_session(model_path)
    plain, flipped, errors = [], [], []
    for start in tqdm(range(0, len(paths), batch), desc="evaluating", unit="batch"):
        pixels = []
        for p in paths[start:start + batch]:
            try:
                data = Path(p).read_bytes()
                if wide:
                    data = wide_dark_photo(data, seed=len(pixels) + start)
                pixels.append(imaging.preprocess_bytes(data))
            except imaging.ImageDecodeError as err:
                errors.append(f"{p}: {err}")
                pixels.append(np.full((imaging.INPUT_SIZE, imaging.INPUT_SIZE, 3), imaging.PAD_VALUE, np.uint8))
        x = np.stack(pixels)
        plain.append(probabilities(session, x, batch))
        flipped.append(probabilities(session, np.ascontiguousarray(x[:, :, ::-1]), batch))
    return np.concatenate(plain), np.concatenate(flipped), errors


def _shown(path) -> str:
    """The model path as recorded: relative to the working directory when inside it (no machine paths in reports)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return path.name


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs((pred[sel] == labels[sel]).mean() - conf[sel].mean())
    return float(ece)


def metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, weighted and macro F1, per-class precision/recall/F1, confusion matrix, ECE."""
    k = len(CLASSES)
    pred = probs.argmax(1)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (labels, pred), 1)
    tp = np.diag(cm).astype(float)
    precision = tp / np.maximum(cm.sum(0), 1)
    recall = tp / np.maximum(cm.sum(1), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    support = cm.sum(1)
    return {
        "images": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "min_recall": float(recall.min()),
        "min_recall_class": CLASSES[int(recall.argmin())],
        "ece": expected_calibration_error(probs, labels),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(CLASSES)},
        "confusion_matrix": cm.tolist(),
    }


def evaluate(model_path: str | Path, items: list[tuple[str, int]], out_dir: str | Path | None = None,
             title: str = "", wide: bool = False) -> dict:
    """Evaluate plain and TTA; return {"plain": {...}, "tta": {...}, "errors": [...]} and write files to `out_dir`."""
    paths = [p for p, _ in items]
    labels = np.array([label for _, label in items])
    plain, flipped, errors = predict(model_path, paths, wide=wide)
    result = {"model": _shown(model_path), "staging": "wide_dark_16x9" if wide else "as_is", "plain": metrics(plain, labels),
              "tta": metrics((plain + flipped) / 2, labels), "errors": errors}
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        for variant in ("plain", "tta"):
            plot_confusion(np.array(result[variant]["confusion_matrix"]), list(CLASSES),
                           out / f"confusion_{variant}.png", f"{title} {variant} (test split)".strip())
    return result


def summary_table(result: dict) -> str:
    rows = ["| variant | accuracy | weighted F1 | macro F1 | min recall | ECE |", "|---|---:|---:|---:|---:|---:|"]
    for variant in ("plain", "tta"):
        m = result[variant]
        rows.append(f"| {variant} | {m['accuracy']:.4f} | {m['weighted_f1']:.4f} | {m['macro_f1']:.4f} | "
                    f"{m['min_recall']:.3f} ({m['min_recall_class']}) | {m['ece']:.4f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="ONNX classifier (uint8 NHWC in, probabilities out)")
    parser.add_argument("--manifest", default="training/splits/garbage12_seed42.csv")
    parser.add_argument("--data-dir", default="../shared/data/garbage12")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit-per-class", type=int, default=0)
    parser.add_argument("--out", help="directory for metrics.json and confusion matrices")
    parser.add_argument("--wide", action="store_true",
                        help="re-stage every photo on a dark 16:9 frame first (robustness to how users shoot)")
    args = parser.parse_args(argv)
    items = load_split(args.manifest, args.data_dir, args.limit_per_class)[args.split]
    result = evaluate(args.model, items, args.out, title=Path(args.model).parent.parent.name, wide=args.wide)
    print(summary_table(result))
    for err in result["errors"]:
        print("error:", err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
