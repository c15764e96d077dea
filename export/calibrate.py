"""Post-hoc calibration fitted on the validation split, baked into a new ONNX version.

    python -m export.calibrate RUN_DIR --name effnet_lite0 [--repo model_repository] [--version N]

(`python -m export` calibrates as it exports, by a temperature only unless `--class-offsets`;
this command is for a version published without calibration and fits both, as v2 was made.)

Label smoothing leaves the network under-confident (ECE 0.09 on validation) and its class
weights do not fully even out the recall of the hardest classes. Both are fixed after training
with parameters fitted on the validation split only: a temperature T (minimising validation
NLL) and one logit offset per class (maximising validation balanced recall, offsets within ±1).
The served graph becomes softmax(log(p) / T + b). The test split is scored once, afterwards,
and the result is published as the model's next version, never over an existing one.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.onnx_export import OUTPUT_NAME

EPS = 1e-7


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _balanced_recall(z: np.ndarray, labels: np.ndarray) -> float:
    pred = z.argmax(1)
    return float(np.mean([(pred[labels == k] == k).mean() for k in np.unique(labels)]))


def fit(probs: np.ndarray, labels: np.ndarray, bound: float = 1.0, sweeps: int = 3,
        offsets: bool = True) -> tuple[float, np.ndarray]:
    """Temperature by validation NLL, then (if `offsets`) per-class offsets by coordinate ascent on balanced recall.

    A small penalty on each offset's size keeps an offset at 0 unless it buys recall. Without
    `offsets` the bias is all zeros: the calibrated graph keeps the raw model's answers.
    """
    logp = np.log(probs + EPS)
    temps = np.linspace(0.3, 1.5, 61)
    nll = [-np.log(_softmax(logp / t)[np.arange(len(labels)), labels] + 1e-12).mean() for t in temps]
    temperature = float(temps[int(np.argmin(nll))])
    bias = np.zeros(probs.shape[1])
    for _ in range(sweeps if offsets else 0):
        for k in range(len(bias)):
            best_score, best_value = _balanced_recall(logp / temperature + bias, labels), bias[k]
            for value in np.linspace(-bound, bound, 21):
                trial = bias.copy()
                trial[k] = value
                score = _balanced_recall(logp / temperature + trial, labels) - 0.002 * abs(value)
                if score > best_score + 1e-9:
                    best_score, best_value = score, value
            bias[k] = best_value
    return temperature, bias


def calibrated_onnx(src: str | Path, dst: str | Path, temperature: float, bias: np.ndarray) -> Path:
    """Append softmax(log(p + eps) / T + b) after the graph's probability output, keeping its name."""
    model = onnx.load(str(src))
    graph = model.graph
    raw = "uncalibrated_probabilities"
    for node in graph.node:
        node.output[:] = [raw if o == OUTPUT_NAME else o for o in node.output]
    graph.initializer.extend([
        numpy_helper.from_array(np.array(EPS, np.float32), "calibration_eps"),
        numpy_helper.from_array(np.array(1.0 / temperature, np.float32), "calibration_inv_temperature"),
        numpy_helper.from_array(bias.astype(np.float32), "calibration_bias"),
    ])
    graph.node.extend([
        helper.make_node("Add", [raw, "calibration_eps"], ["calibration_p"], name="calibration_add_eps"),
        helper.make_node("Log", ["calibration_p"], ["calibration_logp"], name="calibration_log"),
        helper.make_node("Mul", ["calibration_logp", "calibration_inv_temperature"], ["calibration_scaled"],
                         name="calibration_temperature"),
        helper.make_node("Add", ["calibration_scaled", "calibration_bias"], ["calibration_logits"],
                         name="calibration_bias_add"),
        helper.make_node("Softmax", ["calibration_logits"], [OUTPUT_NAME], axis=-1, name="calibration_softmax"),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", required=True, help="classifier name in the repository (NAME_classifier)")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    parser.add_argument("--version", type=int, default=1, help="uncalibrated version to start from")
    parser.add_argument("--eval-name", default="eval_fp32", help="run sub-directory for the test metrics")
    args = parser.parse_args(argv)

    from export.__main__ import publish
    from export.model_repository import classifier_model_name
    from training.config import TrainConfig
    from export.threshold import choose_and_record
    from training.dataset import load_split, resolve_classes
    from training.evaluate import evaluate, predict, summary_table

    cfg = TrainConfig.load(None, json.loads((args.run_dir / "config.json").read_text()))
    classes = resolve_classes(cfg.classes, args.run_dir / "manifest.csv")
    splits = load_split(args.run_dir / "manifest.csv", cfg.data_dir, cfg.limit_per_class, classes)
    source_dir = args.repo / classifier_model_name(args.name) / str(args.version)
    source = source_dir / "model.onnx"
    val_probs, _, _ = predict(source, [p for p, _ in splits["val"]])
    val_labels = np.array([label for _, label in splits["val"]])
    temperature, bias = fit(val_probs, val_labels)
    print(f"fitted on {len(val_labels)} validation images: T = {temperature:.3f}, offsets = {np.round(bias, 2).tolist()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = calibrated_onnx(source, Path(tmp) / "model.onnx", temperature, bias)
        result = evaluate(out, splits["test"], args.run_dir / args.eval_name, title=f"{args.name} calibrated",
                          classes=classes)
        print(summary_table(result))
        base = json.loads((source_dir / "export.json").read_text())
        record = {**base, "calibrated_from_version": args.version,
                  "calibration": {"fitted_on": "validation split", "images": int(len(val_labels)),
                                  "temperature": temperature, "class_offsets": [float(b) for b in bias]},
                  "test": {v: {k: result[v][k] for k in ("images", "accuracy", "weighted_f1", "macro_f1", "min_recall",
                                                          "ece")} for v in ("plain", "tta")}}
        target = publish(out, args.repo, args.name, record, classes)
    print(f"published {target}")
    unsure = choose_and_record(target.parent, splits, out=args.run_dir / args.eval_name)
    print(f'"not sure" below {unsure["threshold"]:.4f}: test coverage {unsure["test"]["coverage"]:.3f}, '
          f'selective accuracy {unsure["test"]["selective_accuracy"]:.4f}')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
