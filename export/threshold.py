"""Choose a model version's "not sure" threshold on validation and record it in its export.json.

    python -m export.threshold model_repository/effnet_lite0_classifier/2 [--coverage 0.95] [--out DIR]

The threshold is the highest top-probability that still answers `coverage` of the validation
photos (training/selective.py). Then, with it fixed, the test split's coverage and selective
accuracy and the share of generated non-waste pictures (training/nonwaste.py) answered "not sure"
are measured. export.json gets `unsure_threshold` and an `unsure` record; when the version lies in a
model repository, its ensembles' configs are written again so that they carry the threshold
(export/model_repository.py), and clients read it from the served config (a caller may override
it). The ONNX file is not touched, so its sha256 holds.
`--out` also gets the risk-coverage curve (risk_coverage.png) of validation and test.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from contract import UNSURE_THRESHOLD


def choose_and_record(version_dir: Path, splits: dict, coverage: float = 0.95, nonwaste: int = 240,
                      out: Path | None = None) -> dict:
    """Fit the threshold on `splits["val"]`, measure on `splits["test"]` and non-waste, update export.json.

    Returns
    -------
    dict
        The `unsure` record written into export.json.
    """
    from training.evaluate import evaluate_nonwaste, predict
    from training.selective import choose_threshold, plot_risk_coverage, risk_coverage, selective

    model = version_dir / "model.onnx"
    val_probs, _, _ = predict(model, [p for p, _ in splits["val"]])
    val_labels = np.array([label for _, label in splits["val"]])
    threshold = choose_threshold(val_probs, coverage)
    test_probs, _, _ = predict(model, [p for p, _ in splits["test"]])
    test_labels = np.array([label for _, label in splits["test"]])
    record = {"fitted_on": "validation split", "target_coverage": coverage, "threshold": threshold,
              "validation": selective(val_probs, val_labels, threshold),
              "test": selective(test_probs, test_labels, threshold)}
    if nonwaste:
        nw = evaluate_nonwaste(model, threshold, nonwaste)
        record["nonwaste"] = {k: nw[k] for k in ("images", "unsure_rate", "mean_top_probability", "per_kind")}
    if out:
        out.mkdir(parents=True, exist_ok=True)
        plot_risk_coverage({"validation": risk_coverage(val_probs, val_labels),
                            "test": risk_coverage(test_probs, test_labels)}, out / "risk_coverage.png",
                           {f"{coverage:.0%}": coverage})
        (out / "unsure.json").write_text(json.dumps(record, indent=2) + "\n")
    path = version_dir / "export.json"
    export = json.loads(path.read_text())
    export[UNSURE_THRESHOLD] = threshold
    export["unsure"] = record
    tmp = path.with_name(".export.json.tmp")
    tmp.write_text(json.dumps(export, indent=2) + "\n")
    os.replace(tmp, path)
    _refresh_configs(version_dir)
    return record


def _refresh_configs(version_dir: Path) -> None:
    """Rewrite the ensemble configs of the repository `version_dir` lies in (none: a loose version)."""
    from contract import CLASSIFIER_SUFFIX
    from export.model_repository import refresh_ensemble_configs

    model_dir = Path(version_dir).resolve().parent
    if model_dir.name.endswith(CLASSIFIER_SUFFIX) and (model_dir / "config.pbtxt").is_file():
        refresh_ensemble_configs(model_dir.parent, model_dir.name[: -len(CLASSIFIER_SUFFIX)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version_dir", type=Path, help="model_repository/<name>_classifier/<version>")
    parser.add_argument("--manifest", default="training/splits/garbage12_seed42.csv")
    parser.add_argument("--data-dir", default="../shared/data/garbage12")
    parser.add_argument("--coverage", type=float, default=0.95)
    parser.add_argument("--nonwaste", type=int, default=240, help="generated non-waste pictures to score (0: none)")
    parser.add_argument("--out", type=Path, help="directory for risk_coverage.png and unsure.json")
    args = parser.parse_args(argv)

    from training.dataset import load_split, resolve_classes

    labels_file = args.version_dir.parent / "labels.txt"
    classes = (tuple(labels_file.read_text().split()) if labels_file.exists()
               else resolve_classes("", args.manifest))
    splits = load_split(args.manifest, args.data_dir, 0, classes)
    record = choose_and_record(args.version_dir, splits, args.coverage, args.nonwaste, args.out)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
