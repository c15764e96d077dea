"""The ablation table: what each ingredient does to validation, one short run per switched-off ingredient.

    python -m training ablation BASELINE_RUN OTHER_RUN ... [--out table.md]

Each run directory is a `python -m training finetune` run (config.json, summary.json,
history.csv). A row names the config keys in which the run differs from the baseline and its
best validation numbers, so a row reads "without mixup: -0.4 pt". Runs of different lengths are
flagged, because their numbers do not compare. Validation accuracy rewards fitting the dataset's
own framing; augmentation aims at photos framed otherwise, so a run that also holds
`eval_val_shift/metrics.json` (`python -m training evaluate RUN/model.onnx --split val --shift
--out RUN/eval_val_shift`: the shift suite built from the validation split) gets that accuracy in
a column of its own. Example set of runs, each the baseline config
with one override: `mix_prob=0`, `label_smoothing=0`, `restage_prob=0 augment_strength=0`,
`class_weight_power=0`, `outlier_prob=0`, `sizes="224:N"` (no progressive resizing), `bn_frozen=false`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

#: Where a run keeps its validation shift-suite score.
VAL_SHIFT = Path("eval_val_shift") / "metrics.json"
#: Keys that never make two runs' recipes differ.
IGNORED = {"run_dir", "name", "workers", "cache_dir", "eager", "checkpoint_steps"}


def run_record(run: Path) -> dict:
    """Config and best validation numbers of one run directory."""
    config = json.loads((run / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    shift = json.loads((run / VAL_SHIFT).read_text())["plain"]["accuracy"] if (run / VAL_SHIFT).exists() else None
    return {"run": run.name, "config": config, "epochs_done": summary.get("epochs_done"),
            "epochs": summary.get("epochs"), "val_accuracy": summary["best_val_accuracy"],
            "val_min_recall": summary.get("best_val_min_recall"), "val_loss": summary["best_val_loss"],
            "val_shift_accuracy": shift}


def differences(config: dict, baseline: dict) -> str:
    """`key=value` for every recipe key in which `config` differs from `baseline`."""
    keys = sorted(k for k in set(config) | set(baseline) if k not in IGNORED and config.get(k) != baseline.get(k))
    return ", ".join(f"{k}={config.get(k)!r}" for k in keys) or "(baseline)"


def table(runs: list[Path]) -> str:
    """Markdown table, the first run the baseline; differences in points of validation accuracy."""
    records = [run_record(r) for r in runs]
    base = records[0]
    rows = ["| run | differs from baseline in | epochs | val accuracy | change (pt) | val lowest recall "
            "| val shift suite | change (pt) |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        unfinished = "" if r["epochs_done"] == r["epochs"] else " (unfinished)"
        recall = f"{r['val_min_recall']:.3f}" if r["val_min_recall"] is not None else "-"
        shift, base_shift = r["val_shift_accuracy"], base["val_shift_accuracy"]
        shift_cell = "-" if shift is None else f"{shift:.4f}"
        shift_change = "-" if shift is None or base_shift is None else f"{100 * (shift - base_shift):+.2f}"
        rows.append(f"| {r['run']} | {differences(r['config'], base['config'])} | {r['epochs_done']}/{r['epochs']}"
                    f"{unfinished} | {r['val_accuracy']:.4f} | {100 * (r['val_accuracy'] - base['val_accuracy']):+.2f} | "
                    f"{recall} | {shift_cell} | {shift_change} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, the baseline first")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    text = table(args.runs)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
