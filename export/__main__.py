"""Export a training run into the Triton model repository.

    python -m export RUN_DIR --name NAME [--repo model_repository] [--int8]

Converts the run's best Keras model to ONNX (UINT8 NHWC in, normalisation in the graph, softmax
out), checks ONNX Runtime against Keras on real images, evaluates the test split with the
server's preprocessing, and writes `<repo>/<NAME>_classifier/<next version>/model.onnx` with
`export.json` (source run, metrics, parity, sha256) beside it, the classifier config, labels and
the two ensembles. An existing version is never overwritten. `--int8` also publishes
`<NAME>_int8`, statically quantised with calibration on training images, with its own metrics.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def publish(onnx_path: Path, repo: Path, name: str, record: dict) -> Path:
    """Write the configs, then publish `onnx_path` as the next version (atomically); return the model file."""
    from export.model_repository import MODEL_FILE, classifier_model_name, publish_version, write_model_configs

    write_model_configs(repo, name)
    record = {**record, "name": name, "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    version_dir = publish_version(repo / classifier_model_name(name), {MODEL_FILE: onnx_path}, record=record)
    return version_dir / MODEL_FILE


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", required=True, help="model name in the repository (ensembles NAME and NAME_tta)")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--int8", action="store_true", help="also publish a statically quantised NAME_int8")
    parser.add_argument("--calibration-images", type=int, default=300)
    args = parser.parse_args(argv)

    from export.onnx_export import load_run_model, parity, to_onnx
    from training.config import TrainConfig
    from training.dataset import load_split
    from training.evaluate import evaluate, summary_table
    from training.preprocessing import imaging

    cfg = TrainConfig.load(None, json.loads((args.run_dir / "config.json").read_text()))
    splits = load_split(args.run_dir / "manifest.csv", cfg.data_dir, cfg.limit_per_class)
    model = load_run_model(args.run_dir)
    onnx_path = to_onnx(model, args.run_dir / "model.onnx")

    sample = [p for p, _ in splits["val"][:: max(1, len(splits["val"]) // 32)]][:32]
    pixels = np.stack([imaging.preprocess_bytes(Path(p).read_bytes()) for p in sample])
    diff = parity(model, onnx_path, pixels)
    print(f"ONNX Runtime vs Keras on {len(sample)} validation images: max |diff| = {diff:.2e}")
    if diff > 1e-4:
        print("export: ONNX and Keras disagree; not publishing", file=sys.stderr)
        return 1

    result = evaluate(onnx_path, splits["test"], args.run_dir / "eval_fp32", title=f"{args.name} FP32")
    print(summary_table(result))
    summary = json.loads((args.run_dir / "summary.json").read_text()) if (args.run_dir / "summary.json").exists() else {}
    record = {"source_run": str(args.run_dir), "backbone": cfg.backbone, "params": summary.get("params"),
              "parity_max_abs_diff": diff, "parity_images": len(sample),
              "test": {v: {k: result[v][k] for k in ("images", "accuracy", "weighted_f1", "macro_f1", "min_recall", "ece")}
                       for v in ("plain", "tta")}}
    target = publish(onnx_path, args.repo, args.name, record)
    print(f"published {target}")

    if args.int8:
        from export.quantize import quantize_static

        calib = [p for p, _ in splits["train"][:: max(1, len(splits["train"]) // args.calibration_images)]]
        with tempfile.TemporaryDirectory() as tmp:
            q_path = Path(tmp) / "model.onnx"
            quantize_static(onnx_path, q_path, calib[: args.calibration_images])
            q_result = evaluate(q_path, splits["test"], args.run_dir / "eval_int8", title=f"{args.name} INT8")
            print(summary_table(q_result))
            q_record = {**record, "quantization": "static int8, calibrated on training images",
                        "calibration_images": min(len(calib), args.calibration_images),
                        "test": {v: {k: q_result[v][k] for k in ("images", "accuracy", "weighted_f1", "macro_f1",
                                                                  "min_recall", "ece")} for v in ("plain", "tta")},
                        "accuracy_change_vs_fp32": q_result["plain"]["accuracy"] - result["plain"]["accuracy"]}
            q_target = publish(q_path, args.repo, f"{args.name}_int8", q_record)
            print(f"published {q_target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
