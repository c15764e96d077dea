"""Re-quantise a published FP32 classifier version into a new INT8 version, the way `python -m export --int8` does.

    python -m export.int8 model_repository/effnet_lite0_classifier/1 --name effnet_lite0_int8 [--dry-run]

Give the uncalibrated FP32 version (calibration is fitted again after quantisation). Steps: a
calibration set with the same number of training images from every class (so the rare and weak
classes set activation ranges too), static QDQ quantisation with per-channel weights, then
a temperature fitted on the validation split for the INT8 outputs (with `--class-offsets` also
per-class offsets, which can undo per-class shifts quantisation leaves), the "not sure"
threshold, the test split and the non-waste pictures. `--dry-run` evaluates and writes the record
to --out without publishing.

`--reduce-range` quantises weights to 7 bits, ONNX Runtime's advice for x86 CPUs without VNNI
(their U8S8 kernels can saturate; `python -m export.int8_variants` measures each recipe on the CPU
at hand). `--keep-fp32 depthwise` (or `ends`) leaves those convolutions unquantised.
`--keep-calibration` takes an already calibrated FP32 version as it is: its temperature and
offsets sit in the FP32 head, so only the "not sure" threshold is chosen again on validation for
the INT8 outputs. Every record names the CPU it was measured on and the INT8 model's test
accuracy change and top-1 agreement against its FP32 source on that CPU; publishing is refused
when the agreement is under 0.9 (a broken quantisation, not a rounding difference).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from contract import UNSURE_THRESHOLD
from export.__main__ import add_calibration_arguments
from export.quantize import FP32_PARTS


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
    add_calibration_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="directory for the evaluation files")
    parser.add_argument("--dry-run", action="store_true", help="evaluate only; publish nothing")
    parser.add_argument("--reduce-range", action="store_true", help="7-bit weights (x86 CPUs without VNNI)")
    parser.add_argument("--keep-fp32", nargs="*", default=[], choices=sorted(FP32_PARTS),
                        help="body layers left in FP32 (export.quantize.FP32_PARTS)")
    parser.add_argument("--keep-calibration", action="store_true",
                        help="the FP32 version is already calibrated: keep its head, re-choose only the threshold")
    args = parser.parse_args(argv)

    from export.__main__ import balanced_calibration_set, export_variant, publish
    from export.int8_variants import cpu_description
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
    quantize_static(args.fp32_version / "model.onnx", q_raw, calib, calibrate_method=args.method,
                    reduce_range=args.reduce_range, keep_fp32=args.keep_fp32)
    base = {key: source[key] for key in ("source_run", "backbone", "params") if key in source}
    weights = "7-bit S8 (reduce_range)" if args.reduce_range else "S8"
    if args.keep_fp32:
        weights += f"; {' and '.join(args.keep_fp32)} convolutions left FP32"
    after = ("the FP32 version's calibration kept (FP32 head), threshold re-chosen on validation"
             if args.keep_calibration else "calibrated on validation after")
    base.update(quantized_from=f"{args.fp32_version.parent.name}/{args.fp32_version.name}",
                quantized_from_sha256=source.get("sha256"),
                quantization=f"static int8 (QDQ, per-channel {weights} weights, U8 activations), {args.method} "
                             f"ranges from {args.calibration_set} training images, {after}",
                calibration_images=len(calib), measured_on=cpu_description())
    if args.keep_calibration:
        base.update(_kept_calibration(q_raw, source, splits["val"], args.coverage))
    base.update(_against_fp32(args.fp32_version / "model.onnx", q_raw, splits["test"]))
    options = SimpleNamespace(no_calibrate=args.keep_calibration, coverage=args.coverage, nonwaste=args.nonwaste,
                              class_offsets=args.class_offsets, name=args.name)
    served, record = export_variant(q_raw, out, "int8", splits, classes, options, base)
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n")
    if args.dry_run:
        print(f"dry run: record in {out / 'record.json'}")
        return 0
    if record["top1_agreement_with_fp32"] < 0.9:
        print(f"export.int8: top-1 agreement with FP32 is {record['top1_agreement_with_fp32']:.3f} (< 0.9); "
              f"not publishing", file=sys.stderr)
        return 1
    target = publish(served, args.repo, args.name, record, classes)
    print(f"published {target}")
    return 0


def _kept_calibration(q_raw: Path, source: dict, val: list, coverage: float) -> dict:
    """The FP32 version's calibration record, and a threshold chosen on validation for the INT8 outputs."""
    import numpy as np

    from training.evaluate import predict
    from training.selective import choose_threshold, selective

    probs, _, _ = predict(q_raw, [p for p, _ in val])
    threshold = choose_threshold(probs, coverage)
    return {"calibration": {**source.get("calibration", {}), "kept_from_fp32": True},
            UNSURE_THRESHOLD: threshold,
            "unsure": {"fitted_on": "validation split", "target_coverage": coverage, "threshold": threshold,
                       "validation": selective(probs, np.array([label for _, label in val]), threshold)}}


def _against_fp32(fp32_onnx: Path, int8_onnx: Path, test: list) -> dict:
    """Test accuracy change and top-1 agreement of the INT8 model against its FP32 source, on this CPU."""
    import numpy as np

    from export.quantize import load_pixels, predict

    pixels = load_pixels([p for p, _ in test])
    labels = np.array([label for _, label in test])
    fp32, int8 = predict(fp32_onnx, pixels).argmax(1), predict(int8_onnx, pixels).argmax(1)
    return {"fp32_test_accuracy_same_cpu": float((fp32 == labels).mean()),
            "accuracy_change_vs_fp32": float((int8 == labels).mean() - (fp32 == labels).mean()),
            "top1_agreement_with_fp32": float((fp32 == int8).mean())}


if __name__ == "__main__":
    raise SystemExit(main())
