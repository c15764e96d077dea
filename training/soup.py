"""Weight averaging ("model soup"): runs fine-tuned from one starting point, averaged into one network.

    python -m training soup RUN_A RUN_B [RUN ...] --run-dir runs/NAME

Runs that start from the same finished run (`init_from`, or that run itself) stay in one basin of
the loss, so the mean of their weights is a network of its own, often better than each member
(Wortsman et al., "Model soups", ICML 2022). Unlike `python -m export.average`, which runs every
member on every photo, a soup costs one network per photo: the default's speed. Batch-norm
statistics are averaged like every other weight (with `bn_frozen` they are the same ImageNet
statistics in every member).

Members must share backbone, classes and split manifest. The result is a run directory like any
other: `model.keras`, the first member's `config.json` and `manifest.csv`, and `summary.json`
naming every member (with its model's sha256) and the soup's validation metrics, so `python -m
export RUN_DIR` publishes it unchanged. Choose soups by those validation metrics, never by the test
split.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Config keys every member must share: otherwise the weights do not line up or mean different things.
SHARED = ("backbone", "classes", "image_size", "head_units")


def check_members(runs: list[Path]) -> list[dict]:
    """The members' configs; ValueError naming the first key or manifest where they differ."""
    configs = [json.loads((run / "config.json").read_text()) for run in runs]
    for run, cfg in zip(runs[1:], configs[1:]):
        for key in SHARED:
            if cfg.get(key) != configs[0].get(key):
                raise ValueError(f"{run} has {key}={cfg.get(key)!r}, {runs[0]} has {configs[0].get(key)!r}: "
                                 f"not one architecture, cannot average")
        if (run / "manifest.csv").read_bytes() != (runs[0] / "manifest.csv").read_bytes():
            raise ValueError(f"{run} and {runs[0]} were trained on different split manifests")
    return configs


def average_weights(models) -> list[np.ndarray]:
    """Element-wise mean of every weight (trainable or not) of models with one architecture."""
    weights = [model.get_weights() for model in models]
    return [np.mean([w[i] for w in weights], axis=0).astype(weights[0][i].dtype) for i in range(len(weights[0]))]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories (each with model.keras)")
    parser.add_argument("--run-dir", type=Path, required=True, help="where to write the soup's run directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if len(args.runs) < 2:
        parser.error("give at least two runs")
    if args.run_dir.exists() and any(args.run_dir.iterdir()):
        parser.error(f"{args.run_dir} is not empty; pick another --run-dir")

    import keras

    import training.backbones.registry  # noqa: F401  registers the custom layers for deserialisation
    from training.dataset import load_split
    from training.finetune import served_pixels, validate

    configs = check_members(args.runs)
    # Our own runs' files (not downloads), so Keras' safe mode stays on.
    models = [keras.saving.load_model(run / "model.keras", compile=False) for run in args.runs]
    soup = models[0]
    soup.set_weights(average_weights(models))

    run = args.run_dir
    run.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.runs[0] / "manifest.csv", run / "manifest.csv")
    (run / "config.json").write_text(json.dumps({**configs[0], "run_dir": str(run)}, indent=2) + "\n")
    soup.save(run / "model.keras")

    cfg = configs[0]
    classes = tuple(cfg["classes"].split(","))
    val = load_split(run / "manifest.csv", cfg["data_dir"], cfg.get("limit_per_class", 0), classes)["val"]
    labels = np.array([label for _, label in val])
    metrics = validate(soup, served_pixels(val, cfg["image_size"]), labels)
    members = []
    for member, member_cfg in zip(args.runs, configs):
        summary = json.loads((member / "summary.json").read_text()) if (member / "summary.json").exists() else {}
        members.append({"run": str(member), "sha256": hashlib.sha256((member / "model.keras").read_bytes()).hexdigest(),
                        "init_from": member_cfg.get("init_from", ""),
                        "best_val_accuracy": summary.get("best_val_accuracy")})
    summary = {"name": cfg.get("name"), "backbone": cfg["backbone"], "command": "soup", "classes": list(classes),
               "params": int(soup.count_params()), "members": members, "finished": True,
               "best_val_accuracy": metrics["val_accuracy"], "best_val_loss": metrics["val_loss"],
               "best_val_min_recall": metrics["val_min_recall"],
               "val_balanced_accuracy": metrics["val_balanced_accuracy"]}
    (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("soup of %d runs in %s: validation accuracy %.4f (members: %s)", len(args.runs), run,
                metrics["val_accuracy"], ", ".join(f"{m['best_val_accuracy']:.4f}" for m in members
                                                   if m["best_val_accuracy"] is not None))
    return summary


if __name__ == "__main__":
    main()
