"""Train a classifier: cache the frozen bottom, fit the head, fine-tune the top, save the best model.

    python -m training.train --config training/configs/effnet_lite0.toml [key=value ...]

Writes to the run directory: config.json, manifest.csv, history.csv (one line per epoch),
summary.json, model.keras (best by validation loss) and training_curves.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from training.config import TrainConfig, parse_overrides  # noqa: E402
from training.dataset import load_split  # noqa: E402
from training.features import cached_views  # noqa: E402
from training.labels import CLASSES  # noqa: E402
from training.model import build_model, freeze_batchnorm, split_model  # noqa: E402
from training.plots import plot_history  # noqa: E402


class ViewBatches(keras.utils.PyDataset):
    """Batches of cached activations; each epoch draws one random view of every image."""

    def __init__(self, acts, labels, batch_size, seed, weights=None, shuffle=True):
        super().__init__()
        self.acts, self.labels, self.batch_size = acts, labels, batch_size
        self.weights, self.shuffle = weights, shuffle
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self):
        return int(np.ceil(len(self.labels) / self.batch_size))

    def on_epoch_end(self):
        n = len(self.labels)
        self.order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        self.view = self.rng.integers(0, self.acts.shape[0], size=n) if self.shuffle else np.zeros(n, int)

    def __getitem__(self, idx):
        sel = np.sort(self.order[idx * self.batch_size:(idx + 1) * self.batch_size])
        x = np.stack([self.acts[self.view[i], i] for i in sel]).astype(np.float32)
        y = keras.utils.to_categorical(self.labels[sel], len(CLASSES))
        if self.weights is None:
            return x, y
        return x, y, self.weights[self.labels[sel]]


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights normalised to mean 1: clothes is 9x brown-glass in this data."""
    counts = np.bincount(labels, minlength=len(CLASSES)).astype(np.float64)
    w = counts.sum() / (len(CLASSES) * np.maximum(counts, 1))
    return (w / (w * counts).sum() * counts.sum()).astype(np.float32)


def pooled(model: keras.Model, acts, batch: int = 256) -> np.ndarray:
    return np.concatenate([model.predict(np.asarray(acts[i:i + batch], np.float32), verbose=0)
                           for i in range(0, len(acts), batch)])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML file (training/configs/...)")
    parser.add_argument("overrides", nargs="*", help="key=value overriding the config")
    args = parser.parse_args(argv)
    cfg = TrainConfig.load(args.config, parse_overrides(args.overrides))
    keras.utils.set_random_seed(cfg.seed)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg.save(run / "config.json")
    shutil.copyfile(cfg.manifest, run / "manifest.csv")
    t0 = time.time()

    splits = load_split(cfg.manifest, cfg.data_dir, cfg.limit_per_class)
    y_train = np.array([label for _, label in splits["train"]])
    y_val = np.array([label for _, label in splits["val"]])
    print(f"train {len(y_train)}  val {len(y_val)}  test {len(splits['test'])}")

    model = build_model(cfg.backbone, cfg.image_size, cfg.weights, cfg.head_units, cfg.head_dropout)
    freeze_batchnorm(model)
    bottom, top = split_model(model, cfg.finetune_from)
    cache_dir = Path(cfg.cache_dir)
    train_acts = cached_views(cfg, bottom, "train", splits["train"], cfg.views, cache_dir)
    val_acts = cached_views(cfg, bottom, "val", splits["val"], 1, cache_dir)
    t_cache = time.time() - t0

    weights = class_weights(y_train) if cfg.class_weights else None
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    history: list[dict] = []

    # Phase 1: the backbone is frozen, so its pooled features are computed once per view and the
    # head trains on those alone.
    pre_head = keras.Model(model.get_layer(cfg.finetune_from).input, model.get_layer("head_pool").output)
    head_in = keras.Input(pre_head.output.shape[1:])
    x = head_in
    for name in ("head_dense", "head_bn", "head_dropout", "head_softmax"):
        x = model.get_layer(name)(x)
    head = keras.Model(head_in, x, name="head")
    feats = np.stack([pooled(pre_head, train_acts[v]) for v in range(train_acts.shape[0])])
    val_feats = pooled(pre_head, val_acts[0])
    head.compile(keras.optimizers.Adam(cfg.head_lr), loss, metrics=["accuracy"])
    for epoch in range(cfg.head_epochs):
        view = np.random.default_rng([cfg.seed, epoch]).integers(0, feats.shape[0], size=len(y_train))
        xs = feats[view, np.arange(len(y_train))]
        h = head.fit(xs, keras.utils.to_categorical(y_train, len(CLASSES)), batch_size=cfg.batch_size, epochs=1,
                     sample_weight=None if weights is None else weights[y_train],
                     validation_data=(val_feats, keras.utils.to_categorical(y_val, len(CLASSES))), verbose=0)
        row = {"phase": "head", "epoch": epoch + 1, **{k: float(v[-1]) for k, v in h.history.items()}, "lr": cfg.head_lr}
        history.append(row)
        print(json.dumps(row))

    # Phase 2: fine-tune the top blocks (BatchNorm stays in inference mode) on the cached activations.
    for layer in top.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or layer.name.startswith("head_"):
            layer.trainable = True
    freeze_batchnorm(top)
    top.compile(keras.optimizers.Adam(cfg.finetune_lr), loss, metrics=["accuracy"])
    best_path = run / "top_best.weights.h5"
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=max(1, cfg.patience // 2), verbose=1),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(best_path, monitor="val_loss", save_best_only=True, save_weights_only=True),
    ]
    if cfg.finetune_epochs:
        train_data = ViewBatches(train_acts, y_train, cfg.batch_size, cfg.seed, weights)
        val_data = ViewBatches(val_acts, y_val, cfg.batch_size, cfg.seed, shuffle=False)
        h = top.fit(train_data, validation_data=val_data, epochs=cfg.finetune_epochs, callbacks=callbacks, verbose=2)
        for epoch in range(len(h.history["loss"])):
            row = {"phase": "finetune", "epoch": cfg.head_epochs + epoch + 1,
                   **{k: float(v[epoch]) for k, v in h.history.items() if k != "learning_rate"},
                   "lr": float(h.history.get("learning_rate", [cfg.finetune_lr] * (epoch + 1))[epoch])}
            history.append(row)

    model.save(run / "model.keras")
    with open(run / "history.csv", "w") as f:
        keys = ["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]
        f.write(",".join(keys) + "\n")
        for row in history:
            f.write(",".join(str(row.get(k, "")) for k in keys) + "\n")
    plot_history(history, run / "training_curves.png")
    best_val = min(history, key=lambda r: r["val_loss"])
    summary = {
        "name": cfg.name, "backbone": cfg.backbone, "params": int(model.count_params()),
        "train_images": int(len(y_train)), "val_images": int(len(y_val)), "test_images": len(splits["test"]),
        "best_epoch": best_val["epoch"], "best_val_loss": best_val["val_loss"],
        "best_val_accuracy": best_val["val_accuracy"],
        "cache_seconds": round(t_cache, 1), "wall_seconds": round(time.time() - t0, 1),
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
