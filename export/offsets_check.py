"""Do validation-fitted class offsets help on the test split? Temperature only against temperature + offsets.

    python -m export.offsets_check SERVED.onnx [SERVED.onnx ...] [--mean 0,1 ...] [--out record.json]

Each argument is a published classifier (its `export.json` beside it holds the temperature and
offsets it was calibrated with). Its uncalibrated softmax is recovered from its served
probabilities (softmax(T * (log q - b))), so no training run is needed. `--mean I,J` adds the mean
of the served outputs of arguments I and J, which is exactly what `python -m export.average`
calibrates. For every candidate, `export.calibrate.fit` is fitted on the validation split, and
the test split is scored three ways: raw, temperature only, temperature + class offsets. The
last column is the offsets' gain in validation balanced recall on one stratified half of
validation when fitted on the other (both directions): whether a check within validation could
have told which models the offsets help. Printed as a table; `--out` keeps the numbers.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from contract import EXPORT_RECORD
from export.calibrate import EPS, _balanced_recall, _softmax, fit

log = logging.getLogger(__name__)


def uncalibrated(served: np.ndarray, calibration: dict) -> np.ndarray:
    """The softmax a calibrated graph started from: served = softmax(log(p) / T + b) inverted."""
    bias = np.asarray(calibration["class_offsets"], dtype=np.float64)
    return _softmax(calibration["temperature"] * (np.log(served + EPS) - bias))


def calibrate(probs: np.ndarray, temperature: float, bias: np.ndarray) -> np.ndarray:
    return _softmax(np.log(probs + EPS) / temperature + bias)


def stratified_halves(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of every other image of each class (deterministic)."""
    first = np.zeros(len(labels), bool)
    for k in np.unique(labels):
        first[np.flatnonzero(labels == k)[::2]] = True
    return first


def held_out_gains(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """Offsets fitted on one half of validation: their balanced-recall gain on the other half, both ways."""
    first = stratified_halves(labels)
    gains = []
    for fit_on, score_on in ((first, ~first), (~first, first)):
        temperature, bias = fit(probs[fit_on], labels[fit_on])
        logp = np.log(probs[score_on] + EPS) / temperature
        gains.append(_balanced_recall(logp + bias, labels[score_on]) - _balanced_recall(logp, labels[score_on]))
    return gains


def compare(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], classes) -> dict:
    """Fit on `probs["val"]`; test metrics raw, temperature only, and with offsets; the held-out gains."""
    from training.evaluate import metrics

    temperature, bias = fit(probs["val"], labels["val"])
    ways = {"raw": probs["test"], "temperature": calibrate(probs["test"], temperature, 0 * bias),
            "temperature_offsets": calibrate(probs["test"], temperature, bias)}
    keys = ("accuracy", "macro_f1", "min_recall", "min_recall_class", "ece")
    scored = {way: metrics(p, labels["test"], classes) for way, p in ways.items()}
    return {"temperature": temperature, "class_offsets": [round(float(b), 2) for b in bias],
            "held_out_gains": [round(g, 4) for g in held_out_gains(probs["val"], labels["val"])],
            "test": {way: {k: m[k] for k in keys} for way, m in scored.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="published classifiers' model.onnx")
    parser.add_argument("--mean", action="append", default=[], metavar="I,J",
                        help="also the mean of the served outputs of models I and J (0-based)")
    parser.add_argument("--manifest", default="training/splits/garbage12_seed42.csv")
    parser.add_argument("--data-dir", default="../shared/data/garbage12")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from export.quantize import load_pixels
    from training.dataset import load_split, resolve_classes
    from training.evaluate import onnx_session, probabilities

    classes = resolve_classes("", args.manifest)
    splits = load_split(args.manifest, args.data_dir, 0, classes)
    labels = {s: np.array([label for _, label in splits[s]]) for s in ("val", "test")}
    pixels = {s: load_pixels([p for p, _ in splits[s]]) for s in ("val", "test")}
    served, names, candidates = [], [], {}
    for index, path in enumerate(args.models):
        record = json.loads((path.parent / EXPORT_RECORD).read_text())
        log.info("scoring %s", path)
        session = onnx_session(path)
        served.append({s: probabilities(session, pixels[s]) for s in ("val", "test")})
        # The index keeps two published versions of one name (in two repositories) apart.
        names.append(f"[{index}] {record.get('name', path.parent.parent.name)} v{path.parent.name}")
        candidates[names[-1]] = {s: uncalibrated(served[-1][s], record["calibration"]) for s in ("val", "test")}
    for pair in args.mean:
        i, j = (int(x) for x in pair.split(","))
        candidates[f"mean of {names[i]} and {names[j]}"] = {s: (served[i][s] + served[j][s]) / 2
                                                            for s in ("val", "test")}

    results = {name: compare(probs, labels, classes) for name, probs in candidates.items()}
    print("| candidate (fitted on validation) | test: raw | temperature only | temperature + offsets | "
          "offsets' change (pt) | lowest recall T / T+offsets | held-out gains in validation |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        t = r["test"]
        change = 100 * (t["temperature_offsets"]["accuracy"] - t["temperature"]["accuracy"])
        print(f"| {name} | {t['raw']['accuracy']:.4f} | {t['temperature']['accuracy']:.4f} | "
              f"{t['temperature_offsets']['accuracy']:.4f} | {change:+.2f} | "
              f"{t['temperature']['min_recall']:.3f} / {t['temperature_offsets']['min_recall']:.3f} | "
              f"{' / '.join(f'{g:+.4f}' for g in r['held_out_gains'])} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"models": [str(p) for p in args.models], "means": args.mean,
                                        "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
