"""Score a split through an exported ONNX classifier with exactly the server's preprocessing.

    python -m training evaluate MODEL.onnx [--manifest M] [--split test] [--out DIR]
    python -m training evaluate MODEL.onnx --shift [--per-photo 2]     # the shift suite (training/shift.py)
    python -m training evaluate MODEL.onnx --nonwaste 240              # + share of non-waste answered "not sure"

Images are decoded and letterboxed by `model_repository/preprocess/1/imaging.py` (the module the
server runs) and the ONNX file is the one Triton serves, so these numbers are what the server
delivers. TTA here is the `<name>_tta` ensemble's: the mean of the image and its mirror.
Writes metrics.json (one flat record per variant) and a confusion-matrix PNG per variant.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from contract import UNSURE_THRESHOLD
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


def predict_bytes(model_path: str | Path, make: Callable[[int], bytes], n: int, batch: int = 32,
                  desc: str = "evaluating") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Probabilities, plain and mirrored, for the `n` encoded images `make(0) ... make(n-1)`.

    Each image goes through the server's `preprocess_bytes`; one the server would reject is
    reported in the returned errors (and scored as a blank frame), never skipped silently.
    """
    session = onnx_session(model_path)
    plain, flipped, errors = [], [], []
    for start in tqdm(range(0, n, batch), desc=desc, unit="batch", disable=None):
        pixels = []
        for i in range(start, min(n, start + batch)):
            try:
                pixels.append(imaging.preprocess_bytes(make(i)))
            except imaging.ImageDecodeError as err:
                errors.append(f"{i}: {err}")
                pixels.append(np.full((imaging.INPUT_SIZE, imaging.INPUT_SIZE, 3), imaging.PAD_VALUE, np.uint8))
        x = np.stack(pixels)
        plain.append(probabilities(session, x, batch))
        flipped.append(probabilities(session, np.ascontiguousarray(x[:, :, ::-1]), batch))
    return np.concatenate(plain), np.concatenate(flipped), errors


def predict(model_path: str | Path, paths: list[str], batch: int = 32,
            wide: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Probabilities for each file, plain and mirrored; files the server would reject are reported, not skipped silently.

    `wide=True` scores each photo re-staged by `wide_dark_photo` instead of as it is.
    """
    def make(i: int) -> bytes:
        data = Path(paths[i]).read_bytes()
        return wide_dark_photo(data, seed=i) if wide else data

    plain, flipped, errors = predict_bytes(model_path, make, len(paths), batch)
    return plain, flipped, [f"{paths[int(e.split(':', 1)[0])]}:{e.split(':', 1)[1]}" for e in errors]


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


def metrics(probs: np.ndarray, labels: np.ndarray, classes: tuple[str, ...] = CLASSES) -> dict:
    """Accuracy, weighted and macro F1, per-class precision/recall/F1, confusion matrix, ECE."""
    k = len(classes)
    pred = probs.argmax(1)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (labels, pred), 1)
    tp = np.diag(cm).astype(float)
    precision = tp / np.maximum(cm.sum(0), 1)
    recall = tp / np.maximum(cm.sum(1), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    support = cm.sum(1)
    present = support > 0  # a limited or shifted subset may lack a class; it has no recall to report
    return {
        "images": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "min_recall": float(recall[present].min()),
        "min_recall_class": classes[int(np.flatnonzero(present)[recall[present].argmin()])],
        "ece": expected_calibration_error(probs, labels),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
    }


def shift_cases(items: list[tuple[str, int]], per_photo: int = 2) -> list[tuple[str, int, str, int]]:
    """(path, label, condition, photo index) of every image of the shift suite built from `items`."""
    from training.shift import shift_plan

    plan = shift_plan(len(items), per_photo)
    return [(path, label, cond, i) for i, (path, label) in enumerate(items) for cond in plan[i]]


def evaluate(model_path: str | Path, items: list[tuple[str, int]], out_dir: str | Path | None = None,
             title: str = "", wide: bool = False, shift: bool = False, per_photo: int = 2,
             classes: tuple[str, ...] = CLASSES, threshold: float | None = None) -> dict:
    """Evaluate plain and TTA; return {"plain": {...}, "tta": {...}, "errors": [...]} and write files to `out_dir`.

    `wide=True` scores the photos re-staged on a dark 16:9 frame; `shift=True` scores the shift suite
    (training/shift.py) instead, adding per-condition accuracy and lowest recall under "conditions".
    With a `threshold`, "selective" gives coverage and accuracy when only confident answers count.
    """
    if shift:
        from training.shift import shifted_bytes

        cases = shift_cases(items, per_photo)
        labels = np.array([c[1] for c in cases])
        plain, flipped, errors = predict_bytes(
            model_path, lambda i: shifted_bytes(Path(cases[i][0]).read_bytes(), cases[i][2], cases[i][3]),
            len(cases), desc="shift suite")
    else:
        labels = np.array([label for _, label in items])
        plain, flipped, errors = predict(model_path, [p for p, _ in items], wide=wide)
    staging = "shift_suite" if shift else "wide_dark_16x9" if wide else "as_is"
    result = {"model": _shown(model_path), "staging": staging, "plain": metrics(plain, labels, classes),
              "tta": metrics((plain + flipped) / 2, labels, classes), "errors": errors}
    if shift:
        conditions = np.array([c[2] for c in cases])
        result["per_photo"] = per_photo
        result["conditions"] = {}
        for cond in dict.fromkeys(conditions):
            sel = conditions == cond
            m = metrics(plain[sel], labels[sel], classes)
            result["conditions"][str(cond)] = {k: m[k] for k in ("images", "accuracy", "min_recall", "min_recall_class")}
    if threshold is not None:
        from training.selective import selective

        result["selective"] = selective(plain, labels, threshold)
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        for variant in ("plain", "tta"):
            plot_confusion(np.array(result[variant]["confusion_matrix"]), list(classes),
                           out / f"confusion_{variant}.png", f"{title} {variant} ({staging})".strip())
    return result


def evaluate_nonwaste(model_path: str | Path, threshold: float, n: int = 240) -> dict:
    """Share of generated non-waste pictures (training/nonwaste.py) answered "not sure", overall and per kind."""
    from training.nonwaste import nonwaste_items
    from training.selective import unsure_rate

    items = nonwaste_items(n)
    probs, _, errors = predict_bytes(model_path, lambda i: items[i][1], len(items), desc="non-waste")
    kinds = np.array([k for k, _ in items])
    return {"images": len(items), "threshold": float(threshold), "unsure_rate": unsure_rate(probs, threshold),
            "mean_top_probability": float(probs.max(1).mean()),
            "per_kind": {str(k): unsure_rate(probs[kinds == k], threshold) for k in dict.fromkeys(kinds)},
            "errors": errors}


def summary_table(result: dict) -> str:
    rows = ["| variant | accuracy | weighted F1 | macro F1 | min recall | ECE |", "|---|---:|---:|---:|---:|---:|"]
    for variant in ("plain", "tta"):
        m = result[variant]
        rows.append(f"| {variant} | {m['accuracy']:.4f} | {m['weighted_f1']:.4f} | {m['macro_f1']:.4f} | "
                    f"{m['min_recall']:.3f} ({m['min_recall_class']}) | {m['ece']:.4f} |")
    for cond, m in result.get("conditions", {}).items():
        rows.append(f"| shift: {cond} ({m['images']}) | {m['accuracy']:.4f} | | | "
                    f"{m['min_recall']:.3f} ({m['min_recall_class']}) | |")
    if "selective" in result:
        sel = result["selective"]
        rows.append(f"| answered at >= {sel['threshold']:.3f} ({sel['coverage']:.1%} coverage) | "
                    f"{sel['selective_accuracy']:.4f} | | | | |")
    return "\n".join(rows)


def model_threshold(model_path: str | Path) -> float | None:
    """The `unsure_threshold` recorded in the export.json beside an exported model, if any."""
    record = Path(model_path).parent / "export.json"
    if record.exists():
        value = json.loads(record.read_text()).get(UNSURE_THRESHOLD)
        return float(value) if value is not None else None
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="ONNX classifier (uint8 NHWC in, probabilities out)")
    parser.add_argument("--manifest", default="training/splits/garbage12_seed42.csv")
    parser.add_argument("--data-dir", default="../shared/data/garbage12")
    parser.add_argument("--classes", default="", help="comma-separated output order; default: the manifest's, sorted")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit-per-class", type=int, default=0)
    parser.add_argument("--out", help="directory for metrics.json and confusion matrices")
    staging = parser.add_mutually_exclusive_group()
    staging.add_argument("--wide", action="store_true",
                         help="re-stage every photo on a dark 16:9 frame first (robustness to how users shoot)")
    staging.add_argument("--shift", action="store_true",
                         help="the shift suite (training/shift.py): each photo under --per-photo conditions")
    parser.add_argument("--per-photo", type=int, default=2, help="shift-suite conditions per test photo")
    parser.add_argument("--threshold", type=float, default=None,
                        help='"not sure" threshold; default: unsure_threshold of the export.json beside MODEL')
    parser.add_argument("--nonwaste", type=int, default=0, metavar="N",
                        help='also score N generated non-waste pictures and report the share answered "not sure"')
    args = parser.parse_args(argv)
    from training.dataset import resolve_classes

    classes = resolve_classes(args.classes, args.manifest)
    items = load_split(args.manifest, args.data_dir, args.limit_per_class, classes)[args.split]
    threshold = args.threshold if args.threshold is not None else model_threshold(args.model)
    result = evaluate(args.model, items, None, title=Path(args.model).parent.parent.name, wide=args.wide,
                      shift=args.shift, per_photo=args.per_photo, classes=classes, threshold=threshold)
    if args.nonwaste:
        if threshold is None:
            parser.error("--nonwaste needs a threshold: --threshold or an export.json with unsure_threshold")
        result["nonwaste"] = evaluate_nonwaste(args.model, threshold, args.nonwaste)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        for variant in ("plain", "tta"):
            plot_confusion(np.array(result[variant]["confusion_matrix"]), list(classes),
                           out / f"confusion_{variant}.png", f"{variant} ({result['staging']})")
    print(summary_table(result))
    if "nonwaste" in result:
        nw = result["nonwaste"]
        print(f'non-waste answered "not sure": {nw["unsure_rate"]:.1%} of {nw["images"]} '
              f'(per kind: {", ".join(f"{k} {v:.0%}" for k, v in nw["per_kind"].items())})')
    for err in result["errors"]:
        print("error:", err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
