"""Export a training run into the Triton model repository.

    python -m export RUN_DIR --name NAME [--repo model_repository] [--int8] [--no-calibrate]

Converts the run's best Keras model to ONNX (UINT8 NHWC in, normalisation in the graph, softmax
out) and checks ONNX Runtime against Keras on real images. Then, fitted on the validation split
only (export/calibrate.py): a temperature is baked into the graph (per-class logit offsets too
with `--class-offsets`; `python -m export.offsets_check` measured that they more often cost test
accuracy than win it), and the "not sure" threshold is chosen for 95% validation coverage
(export/threshold.py). The test split is scored with the server's preprocessing, and
`<repo>/<NAME>_classifier/<next version>/model.onnx` is published with `export.json` (source
run, classes, metrics, parity, calibration, `unsure_threshold`, sha256), the classifier config,
labels (the run's classes) and the two ensembles. An existing version is never overwritten. `--int8` also publishes
`<NAME>_int8`: the uncalibrated graph statically quantised (per-channel weights, a calibration set
with the same number of training images from every class, so rare classes set ranges too), then
calibrated on validation like the FP32 model.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from contract import UNSURE_THRESHOLD

METRIC_KEYS = ("images", "accuracy", "weighted_f1", "macro_f1", "min_recall", "min_recall_class", "ece")


def publish(onnx_path: Path, repo: Path, name: str, record: dict, classes=None) -> Path:
    """Write the configs, then publish `onnx_path` as the next version (atomically); return the model file.

    The ensembles' configs are written again afterwards: they carry the `unsure_threshold` of the
    version they serve, which is now this one.
    """
    from export.model_repository import (MODEL_FILE, classifier_model_name, publish_version, write_ensemble_configs,
                                         write_model_configs)
    from training.labels import CLASSES

    classes = tuple(classes or CLASSES)
    write_model_configs(repo, name, classes=classes)
    record = {**record, "name": name, "classes": list(classes),
              "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    version_dir = publish_version(repo / classifier_model_name(name), {MODEL_FILE: onnx_path}, record=record)
    write_ensemble_configs(repo, name, classes=classes)
    return version_dir / MODEL_FILE


def balanced_calibration_set(train: list[tuple[str, int]], count: int, seed: int = 0) -> list[str]:
    """`count` training images, as many from every class (a rare class sets activation ranges too)."""
    rng = np.random.default_rng(seed)
    labels = np.array([label for _, label in train])
    per_class = max(1, count // len(np.unique(labels)))
    chosen = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        chosen += sorted(rng.choice(idx, min(per_class, len(idx)), replace=False).tolist())
    return [train[i][0] for i in sorted(chosen)]


def calibrate_for_serving(raw: Path, out: Path, splits: dict, coverage: float,
                          offsets: bool = False) -> tuple[dict, float]:
    """Fit a temperature (and class offsets if `offsets`) on validation, bake it in `out`; return the record and threshold."""
    from export.calibrate import calibrated_onnx, fit
    from training.evaluate import predict
    from training.selective import choose_threshold, selective

    val_labels = np.array([label for _, label in splits["val"]])
    val_probs, _, _ = predict(raw, [p for p, _ in splits["val"]])
    temperature, bias = fit(val_probs, val_labels, offsets=offsets)
    calibrated_onnx(raw, out, temperature, bias)
    cal_probs, _, _ = predict(out, [p for p, _ in splits["val"]])
    threshold = choose_threshold(cal_probs, coverage)
    record = {"fitted_on": "validation split", "images": int(len(val_labels)), "temperature": temperature,
              "class_offsets": [float(b) for b in bias]}
    unsure = {"fitted_on": "validation split", "target_coverage": coverage, "threshold": threshold,
              "validation": selective(cal_probs, val_labels, threshold)}
    return {"calibration": record, "unsure": unsure}, threshold


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """The calibration options every exporting command shares."""
    parser.add_argument("--coverage", type=float, default=0.95, help='validation coverage the "not sure" threshold keeps')
    parser.add_argument("--nonwaste", type=int, default=240, help='generated non-waste pictures scored for "not sure"')
    parser.add_argument("--class-offsets", action="store_true",
                        help="also fit per-class logit offsets on validation (default: temperature only; "
                             "python -m export.offsets_check measures whether they help)")


def export_variant(raw: Path, run_dir: Path, tag: str, splits: dict, classes, args, base: dict) -> tuple[Path, dict]:
    """Calibrate (unless --no-calibrate), score test and non-waste, return the ONNX to publish and its record."""
    from training.evaluate import evaluate, evaluate_nonwaste, summary_table

    record = dict(base)
    served = raw
    if not args.no_calibrate:
        served = run_dir / f"model_{tag}_calibrated.onnx"
        extra, threshold = calibrate_for_serving(raw, served, splits, args.coverage, args.class_offsets)
        record.update(extra, **{UNSURE_THRESHOLD: threshold})
    result = evaluate(served, splits["test"], run_dir / f"eval_{tag}", title=f"{args.name} {tag}", classes=classes,
                      threshold=record.get(UNSURE_THRESHOLD))
    print(summary_table(result))
    record["test"] = {v: {k: result[v][k] for k in METRIC_KEYS} for v in ("plain", "tta")}
    if "unsure" in record:
        record["unsure"]["test"] = result["selective"]
        if args.nonwaste:
            nw = evaluate_nonwaste(served, record[UNSURE_THRESHOLD], args.nonwaste)
            record["unsure"]["nonwaste"] = {k: nw[k] for k in ("images", "unsure_rate", "mean_top_probability",
                                                               "per_kind")}
    return served, record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", required=True, help="model name in the repository (ensembles NAME and NAME_tta)")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--int8", action="store_true", help="also publish a statically quantised NAME_int8")
    parser.add_argument("--calibration-images", type=int, default=300, help="INT8 range calibration images")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="publish the raw softmax: no temperature, offsets or unsure_threshold")
    add_calibration_arguments(parser)
    args = parser.parse_args(argv)

    from export.onnx_export import load_run_model, parity, to_onnx
    from training.config import TrainConfig
    from training.dataset import load_split, resolve_classes
    from training.preprocessing import imaging

    cfg = TrainConfig.load(None, json.loads((args.run_dir / "config.json").read_text()))
    classes = resolve_classes(cfg.classes, args.run_dir / "manifest.csv")
    splits = load_split(args.run_dir / "manifest.csv", cfg.data_dir, cfg.limit_per_class, classes)
    model = load_run_model(args.run_dir)
    onnx_path = to_onnx(model, args.run_dir / "model.onnx")

    sample = [p for p, _ in splits["val"][:: max(1, len(splits["val"]) // 32)]][:32]
    pixels = np.stack([imaging.preprocess_bytes(Path(p).read_bytes()) for p in sample])
    diff = parity(model, onnx_path, pixels)
    print(f"ONNX Runtime vs Keras on {len(sample)} validation images: max |diff| = {diff:.2e}")
    if diff > 1e-4:
        print("export: ONNX and Keras disagree; not publishing", file=sys.stderr)
        return 1

    summary = json.loads((args.run_dir / "summary.json").read_text()) if (args.run_dir / "summary.json").exists() else {}
    base = {"source_run": str(args.run_dir), "backbone": cfg.backbone, "params": summary.get("params"),
            "parity_max_abs_diff": diff, "parity_images": len(sample)}
    served, record = export_variant(onnx_path, args.run_dir, "fp32", splits, classes, args, base)
    target = publish(served, args.repo, args.name, record, classes)
    print(f"published {target}")

    if args.int8:
        from export.quantize import quantize_static

        calib = balanced_calibration_set(splits["train"], args.calibration_images)
        with tempfile.TemporaryDirectory() as tmp:
            q_raw = Path(tmp) / "model.onnx"
            quantize_static(onnx_path, q_raw, calib)
            q_base = {**base, "quantization": "static int8 (QDQ, per-channel S8 weights, U8 activations), ranges from "
                                              "training images balanced over classes, calibrated on validation after",
                      "calibration_images": len(calib)}
            q_served, q_record = export_variant(q_raw, args.run_dir, "int8", splits, classes, args, q_base)
            q_record["accuracy_change_vs_fp32"] = q_record["test"]["plain"]["accuracy"] - record["test"]["plain"]["accuracy"]
            q_target = publish(q_served, args.repo, f"{args.name}_int8", q_record, classes)
            print(f"published {q_target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
