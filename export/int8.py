"""Re-quantise a published FP32 classifier version into a new INT8 version, the way `python -m export --int8` does.

    python -m export.int8 model_repository/effnet_lite0_classifier/1 --name effnet_lite0_int8 [--dry-run]

Give the uncalibrated FP32 version (calibration is fitted again after quantisation). Steps: a
calibration set with the same number of training images from every class (so the rare and weak
classes set activation ranges too), static QDQ quantisation with per-channel weights, then
temperature + per-class offsets fitted on the validation split for the INT8 outputs (quantisation
shifts some classes' logits; re-fitting the offsets on validation undoes that), the "not sure"
threshold, the test split and the non-waste pictures. `--dry-run` evaluates and writes the record
to --out without publishing.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32_version", type=Path, help="model_repository/<name>_classifier/<uncalibrated version>")
    parser.add_argument("--name", required=True, help="INT8 model name (ensembles NAME and NAME_tta)")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--manifest", default="training/splits/garbage12_seed42.csv")
    parser.add_argument("--data-dir", default="../shared/data/garbage12")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--calibration-set", choices=("balanced", "stride"), default="balanced",
                        help="the same number of images from every class, or every n-th training image")
    parser.add_argument("--method", choices=("minmax", "percentile", "entropy"), default="minmax",
                        help="how activation ranges are set from the calibration images")
    parser.add_argument("--limit-per-class", type=int, default=0, help="smoke runs: N photos per class and split")
    parser.add_argument("--coverage", type=float, default=0.95)
    parser.add_argument("--nonwaste", type=int, default=240)
    parser.add_argument("--out", type=Path, default=None, help="directory for the evaluation files")
    parser.add_argument("--dry-run", action="store_true", help="evaluate only; publish nothing")
    args = parser.parse_args(argv)

    from export.__main__ import balanced_calibration_set, export_variant, publish
    from export.quantize import quantize_static
    from training.dataset import load_split, resolve_classes

    labels_file = args.fp32_version.parent / "labels.txt"
    classes = (tuple(labels_file.read_text().split()) if labels_file.exists()
               else resolve_classes("", args.manifest))
    splits = load_split(args.manifest, args.data_dir, args.limit_per_class, classes)
    source = json.loads((args.fp32_version / "export.json").read_text())
    train = splits["train"]
    calib = (balanced_calibration_set(train, args.calibration_images) if args.calibration_set == "balanced"
             else [p for p, _ in train[:: max(1, len(train) // args.calibration_images)]][:args.calibration_images])
    out = args.out or Path(tempfile.mkdtemp(prefix="int8-"))
    out.mkdir(parents=True, exist_ok=True)
    q_raw = out / "model_int8_raw.onnx"
    quantize_static(args.fp32_version / "model.onnx", q_raw, calib, calibrate_method=args.method)
    base = {key: source[key] for key in ("source_run", "backbone", "params") if key in source}
    base.update(quantized_from=f"{args.fp32_version.parent.name}/{args.fp32_version.name}",
                quantized_from_sha256=source.get("sha256"),
                quantization=f"static int8 (QDQ, per-channel S8 weights, U8 activations), {args.method} ranges "
                             f"from {args.calibration_set} training images, calibrated on validation after",
                calibration_images=len(calib))
    options = SimpleNamespace(no_calibrate=False, coverage=args.coverage, nonwaste=args.nonwaste, name=args.name)
    served, record = export_variant(q_raw, out, "int8", splits, classes, options, base)
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    if args.dry_run:
        print(f"dry run: record in {out / 'record.json'}")
        return 0
    target = publish(served, args.repo, args.name, record, classes)
    print(f"published {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
