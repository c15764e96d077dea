"""Fine-tune the whole network on augmented pixels, resumably.

    python -m training finetune --config training/configs/effnet_lite0_ft.toml [key=value ...]
    python -m training finetune --resume RUN_DIR     # continue a stopped run from its last finished epoch
    (either with --stop-after N: run N epochs now, checkpoint, stop)

Every layer trains (the `train` command trains only the top blocks over cached activations), on
views made on the fly by `training.augment.train_view` from the server's own decode, trim and
letterbox. The recipe, each part a config key so an ablation can switch it off:

- AdamW with a linear warmup and a cosine decay over the whole run (`lr`, `warmup_epochs`, `lr_floor`);
- label smoothing; mixup or cutmix on a share of the batches (`mix_prob`);
- augmentation matching the shift suite: re-staging on backgrounds in 16:9/9:16 frames,
  perspective, colour and white balance, light, blur, noise, JPEG (`restage_prob`, `augment_strength`);
- class balance by sample weights, inverse frequency to the power `class_weight_power`;
- outlier exposure: a share `outlier_prob` of the training views are generated non-waste pictures
  (training/nonwaste.py, seeds apart from the evaluation set's) with a uniform target;
- progressive resizing (`sizes = "160:4,192:3,224:3"`): the early epochs at a smaller size cost half
  the CPU; the last ones are at the served 224 px;
- distillation (`teacher`, `distill_weight`, training/distill.py): part of each target is an exported
  classifier's probabilities on the same view, e.g. the pair's, to carry its accuracy into one network;
- a second stage (`init_from = "<run>/model.keras"`): a finished run's weights, a new warmup and cosine
  decay (a warm restart), so a run whose curves were still rising goes on without repeating its epochs.

BatchNorm: the backbone's BatchNorm layers stay in inference mode (`bn_frozen = true`). Batches of
32 give noisy batch statistics, and with progressive resizing the statistics of 160 px inputs would
differ from those of the 224 px inputs served; the ImageNet statistics fit photos well. Only the
head's BatchNorm learns. `bn_frozen = false` trains them all, for comparison.

The run directory gets, after every epoch: `checkpoints/epoch-NNN/` (weights, optimizer state with
its step count, which is the schedule's position, and the run state), made in a temporary
directory and switched in by a rename, then named in `checkpoints/latest`; `history.csv` and
`summary.json`; and `model.keras` (fixed 224 px input, the best epoch by validation accuracy,
then loss), which `python -m export` reads.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from training.augment import train_view  # noqa: E402
from training.config import TrainConfig, parse_overrides  # noqa: E402
from training.dataset import load_split, resolve_classes  # noqa: E402
from training.distill import Teacher, soft_targets  # noqa: E402
from training.model import build_model, freeze_batchnorm  # noqa: E402
from training.nonwaste import KINDS, TRAIN_SEED, nonwaste_image  # noqa: E402
from training.plots import plot_history  # noqa: E402
from training.preprocessing import imaging  # noqa: E402

logger = logging.getLogger(__name__)

HISTORY_KEYS = ("epoch", "size", "loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy",
                "val_min_recall", "lr", "seconds", "images_per_second")


def epoch_sizes(spec: str) -> list[int]:
    """`"160:4,224:2"` -> `[160, 160, 160, 160, 224, 224]`: the input size of every epoch."""
    sizes: list[int] = []
    for part in spec.split(","):
        size, _, epochs = part.strip().partition(":")
        sizes += [int(size)] * int(epochs or 1)
    if not sizes:
        raise ValueError(f"sizes {spec!r} gives no epochs; write size:epochs,... e.g. 160:4,224:2")
    return sizes


def class_weights(labels: np.ndarray, num_classes: int, power: float) -> np.ndarray:
    """Per-class sample weights proportional to (1 / frequency) ** power, averaging 1 over the training set."""
    counts = np.maximum(np.bincount(labels, minlength=num_classes), 1).astype(np.float64)
    w = (counts.sum() / counts) ** power
    return (w * counts.sum() / (w * counts).sum()).astype(np.float32)


class AugmentedBatches(keras.utils.PyDataset):
    """One epoch of augmented batches; batch `i` of epoch `e` is the same whenever it is made (resume-safe)."""

    def __init__(self, items, num_classes: int, cfg: TrainConfig, size: int, epoch: int, weights: np.ndarray,
                 start: int = 0, teacher: Teacher | None = None):
        super().__init__(workers=cfg.workers, use_multiprocessing=False, max_queue_size=max(2, 2 * cfg.workers))
        self.items, self.num_classes, self.cfg, self.size, self.epoch = items, num_classes, cfg, size, epoch
        self.weights, self.start = weights, start  # `start`: batches already trained before a mid-epoch stop
        self.teacher = teacher
        self.order = np.random.default_rng([cfg.seed, epoch]).permutation(len(items))

    @property
    def steps(self) -> int:
        # The last partial batch is dropped: every step then has the same shape and a mixing partner.
        return max(1, len(self.items) // self.cfg.batch_size)

    def __len__(self) -> int:
        return self.steps - self.start

    def __getitem__(self, idx):
        cfg = self.cfg
        idx += self.start
        rng = np.random.default_rng([cfg.seed, self.epoch, idx])
        sel = self.order[idx * cfg.batch_size:(idx + 1) * cfg.batch_size]
        x = np.stack([train_view(Path(self.items[i][0]).read_bytes(), self.size, rng, cfg.augment_strength,
                                 cfg.restage_prob) for i in sel]).astype(np.float32)
        labels = np.array([self.items[i][1] for i in sel])
        y = np.eye(self.num_classes, dtype=np.float32)[labels]
        w = self.weights[labels]
        # Outlier exposure: a few non-waste pictures with a uniform target teach the model to spread its
        # probability when there is no item, which the "not sure" threshold relies on.
        for j in np.flatnonzero(rng.random(len(sel)) < cfg.outlier_prob):
            kind = KINDS[int(rng.integers(len(KINDS)))]
            side = 2 * self.size
            shape = (side, side) if rng.random() < 0.4 else ((side * 16 // 9, side) if rng.random() < 0.5
                                                              else (side, side * 16 // 9))
            picture = nonwaste_image(np.random.default_rng([TRAIN_SEED, self.epoch, idx, int(j)]), kind, shape)
            x[j] = imaging.letterbox(imaging.trim_background(picture), self.size)
            y[j], w[j] = 1.0 / self.num_classes, 1.0
        if rng.random() < cfg.mix_prob:
            x, y, w = mix(x, y, w, rng, cfg.mixup_alpha, cfg.cutmix_alpha)
        if self.teacher is not None:
            y = soft_targets(y, self.teacher(x), cfg.distill_weight)
        return x, y, w


class StepLog(keras.callbacks.Callback):
    """A log line every `every` steps (step, seconds per step, loss): an epoch can take an hour on a shared CPU."""

    def __init__(self, epoch: int, data: AugmentedBatches, every: int = 25):
        super().__init__()
        self.epoch, self.data, self.every, self.t0 = epoch, data, every, time.time()

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0:
            rate = (time.time() - self.t0) / (batch + 1)
            step, steps = self.data.start + batch + 1, self.data.steps
            logger.info("epoch %d step %d/%d: %.1f s/step, about %.0f min left in the epoch, loss %.4f",
                        self.epoch, step, steps, rate, rate * (steps - step) / 60,
                        float((logs or {}).get("loss", float("nan"))))


class StepCheckpoint(keras.callbacks.Callback):
    """A checkpoint every `every` steps inside an epoch, so a stop loses at most that many steps.

    Batches are a function of (epoch, step), so a run resumed here sees the batches it would have
    seen; only the dropout masks differ from an uninterrupted run.
    """

    def __init__(self, run: Path, epoch_index: int, data: AugmentedBatches, state: dict, every: int):
        super().__init__()
        self.run, self.epoch_index, self.data, self.state, self.every = run, epoch_index, data, state, every
        self.t0 = time.time()

    def on_train_batch_end(self, batch, logs=None):
        step = self.data.start + batch + 1
        if self.every and step % self.every == 0 and step < self.data.steps:
            state = {**self.state, "step": step,
                     "partial_seconds": self.state.get("partial_seconds", 0.0) + round(time.time() - self.t0, 1)}
            save_checkpoint(self.run, f"epoch-{self.epoch_index + 1:03d}-step-{step:05d}", self.model,
                            self.model.optimizer, state)


def mix(x, y, w, rng: np.random.Generator, mixup_alpha: float, cutmix_alpha: float):
    """Mixup (blend two images) or cutmix (paste a box of one into the other), chosen at random; targets follow the area."""
    perm = rng.permutation(len(x))
    if rng.random() < 0.5:
        lam = float(rng.beta(mixup_alpha, mixup_alpha))
        x = lam * x + (1 - lam) * x[perm]
    else:
        lam = float(rng.beta(cutmix_alpha, cutmix_alpha))
        h, wd = x.shape[1:3]
        ch, cw = int(h * np.sqrt(1 - lam)), int(wd * np.sqrt(1 - lam))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, wd - cw + 1))
        x = x.copy()
        x[:, top:top + ch, left:left + cw] = x[perm, top:top + ch, left:left + cw]
        lam = 1 - ch * cw / (h * wd)
    return x, lam * y + (1 - lam) * y[perm], lam * w + (1 - lam) * w[perm]


def served_pixels(items, size: int) -> np.ndarray:
    """The split exactly as the server would see it (decode, trim, letterbox), uint8."""
    return np.stack([imaging.preprocess_bytes(Path(p).read_bytes(), size=size) for p, _ in items])


def validate(model: keras.Model, pixels: np.ndarray, labels: np.ndarray, batch: int = 64) -> dict:
    """Accuracy, NLL (no smoothing), balanced accuracy and lowest class recall of `model` on `pixels`."""
    probs = np.concatenate([np.asarray(model.predict_on_batch(pixels[i:i + batch].astype(np.float32)))
                            for i in range(0, len(pixels), batch)])
    pred = probs.argmax(1)
    recalls = [float((pred[labels == k] == k).mean()) for k in np.unique(labels)]
    return {"val_loss": float(-np.log(probs[np.arange(len(labels)), labels] + 1e-7).mean()),
            "val_accuracy": float((pred == labels).mean()),
            "val_balanced_accuracy": float(np.mean(recalls)), "val_min_recall": float(min(recalls))}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(run: Path, label: str, model: keras.Model, optimizer, state: dict) -> Path:
    """Weights, optimizer variables (step count included) and `state` as checkpoint `label`; older ones removed."""
    ckpts = run / "checkpoints"
    ckpts.mkdir(exist_ok=True)
    tmp = ckpts / f".{label}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_weights(tmp / "model.weights.h5")
    np.savez(tmp / "optimizer.npz", *[np.asarray(v.numpy()) for v in optimizer.variables])
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    final = ckpts / label
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_atomic(ckpts / "latest", final.name + "\n")
    for old in ckpts.glob("epoch-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run: Path, model: keras.Model, optimizer) -> dict:
    """Restore what `save_checkpoint` wrote last; return its state."""
    final = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    optimizer.build(model.trainable_variables)
    model.load_weights(final / "model.weights.h5")
    saved = np.load(final / "optimizer.npz")
    values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) != len(optimizer.variables):
        raise RuntimeError(f"{final}: optimizer state has {len(values)} variables, the model needs "
                           f"{len(optimizer.variables)}; was the config changed?")
    for var, value in zip(optimizer.variables, values):
        var.assign(value)
    return json.loads((final / "state.json").read_text())


def save_served_model(run: Path, model: keras.Model, twin: keras.Model) -> None:
    """Copy the trained weights into the fixed-size twin and save it as `model.keras` (atomically)."""
    twin.set_weights(model.get_weights())
    tmp = run / ".model.partial.keras"
    twin.save(tmp)
    os.replace(tmp, run / "model.keras")


def write_history(run: Path, history: list[dict]) -> None:
    tmp = run / ".history.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_KEYS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, run / "history.csv")
    plot_history([{**r, "phase": "full"} for r in history], run / "training_curves.png")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML file (training/configs/...)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run from its last checkpoint")
    parser.add_argument("--stop-after", type=int, default=0, metavar="N",
                        help="stop after N epochs in this call (resumable); 0 = run to the end")
    parser.add_argument("overrides", nargs="*", help="key=value overriding the config (not with --resume)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.resume:
        if args.config or args.overrides:
            parser.error("--resume takes the run's saved config; give no --config or overrides")
        cfg = TrainConfig.load(None, json.loads((args.resume / "config.json").read_text()))
        run = args.resume
        if not (run / "checkpoints" / "latest").exists():
            parser.error(f"{run} has no checkpoint to resume; start it again without --resume")
    else:
        cfg = TrainConfig.load(args.config, parse_overrides(args.overrides))
        run = Path(cfg.run_dir)
        if (run / "checkpoints" / "latest").exists():
            parser.error(f"{run} already holds a run; continue it with --resume {run} or pick another run_dir")
        run.mkdir(parents=True, exist_ok=True)
        cfg.classes = ",".join(resolve_classes(cfg.classes, cfg.manifest))
        cfg.save(run / "config.json")
        shutil.copyfile(cfg.manifest, run / "manifest.csv")

    classes = tuple(cfg.classes.split(","))
    sizes = epoch_sizes(cfg.sizes)
    splits = load_split(run / "manifest.csv", cfg.data_dir, cfg.limit_per_class, classes)
    y_train = np.array([label for _, label in splits["train"]])
    y_val = np.array([label for _, label in splits["val"]])
    logger.info("classes %s; train %d, val %d, test %d; %d epochs at sizes %s", classes, len(y_train), len(y_val),
                len(splits["test"]), len(sizes), cfg.sizes)

    model = build_model(cfg.backbone, cfg.image_size, cfg.weights, cfg.head_units, cfg.head_dropout,
                        len(classes), dynamic=True)
    twin = build_model(cfg.backbone, cfg.image_size, "random", cfg.head_units, cfg.head_dropout, len(classes))
    if cfg.init_from:
        # Our own run's file (not a download), so Keras' safe mode stays on.
        model.set_weights(keras.saving.load_model(cfg.init_from, compile=False).get_weights())
        logger.info("weights from %s", cfg.init_from)
    if cfg.bn_frozen:
        freeze_batchnorm(model)
    steps = max(1, len(y_train) // cfg.batch_size)
    warmup = int(cfg.warmup_epochs * steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.lr * 0.01, decay_steps=max(1, len(sizes) * steps - warmup), alpha=cfg.lr_floor,
        warmup_target=cfg.lr, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(optimizer, keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=["accuracy"], run_eagerly=cfg.eager)

    state = {"epoch": 0, "step": 0, "history": [], "best": None, "elapsed_seconds": 0.0}
    if args.resume:
        state = load_checkpoint(run, model, optimizer)
        logger.info("resumed %s after epoch %d + %d steps (optimizer step %d)", run, state["epoch"],
                    state.get("step", 0), int(optimizer.iterations))
    weights = class_weights(y_train, len(classes), cfg.class_weight_power)
    teacher = Teacher(cfg.teacher) if cfg.teacher and cfg.distill_weight > 0 else None
    if teacher:
        logger.info("teacher %s (sha256 %s), weight %.2f", cfg.teacher, teacher.sha256[:12], cfg.distill_weight)
    val_pixels = served_pixels(splits["val"], cfg.image_size)

    last = len(sizes) if not args.stop_after else min(len(sizes), state["epoch"] + args.stop_after)
    for epoch in range(state["epoch"], last):
        t0 = time.time()
        keras.utils.set_random_seed(cfg.seed * 1000 + epoch)  # dropout masks: a resumed epoch repeats exactly
        data = AugmentedBatches(splits["train"], len(classes), cfg, sizes[epoch], epoch, weights,
                                start=state.pop("step", 0), teacher=teacher)
        tty = sys.stderr.isatty()
        callbacks = [StepCheckpoint(run, epoch, data, state, cfg.checkpoint_steps)]
        fit = model.fit(data, epochs=1, verbose=1 if tty else 2,
                        callbacks=callbacks if tty else callbacks + [StepLog(epoch + 1, data)])
        row = {"epoch": epoch + 1, "size": sizes[epoch], "loss": float(fit.history["loss"][-1]),
               "accuracy": float(fit.history["accuracy"][-1]), **validate(model, val_pixels, y_val),
               "lr": float(keras.ops.convert_to_numpy(optimizer.learning_rate))}
        row["seconds"] = round(time.time() - t0 + state.pop("partial_seconds", 0.0), 1)
        row["images_per_second"] = round(data.steps * cfg.batch_size / row["seconds"], 1)
        state["history"].append(row)
        best = state["best"]
        if best is None or (row["val_accuracy"], -row["val_loss"]) > (best["val_accuracy"], -best["val_loss"]):
            state["best"] = row
            save_served_model(run, model, twin)
        state["epoch"] = epoch + 1
        state["elapsed_seconds"] = round(state["elapsed_seconds"] + row["seconds"], 1)
        save_checkpoint(run, f"epoch-{epoch + 1:03d}", model, optimizer, state)
        write_history(run, state["history"])
        summary = {"name": cfg.name, "backbone": cfg.backbone, "command": "finetune", "classes": list(classes),
                   "params": int(model.count_params()), "train_images": int(len(y_train)),
                   "val_images": int(len(y_val)), "test_images": len(splits["test"]),
                   "epochs_done": epoch + 1, "epochs": len(sizes), "finished": epoch + 1 == len(sizes),
                   "best_epoch": state["best"]["epoch"], "best_val_accuracy": state["best"]["val_accuracy"],
                   "best_val_loss": state["best"]["val_loss"], "best_val_min_recall": state["best"]["val_min_recall"],
                   "wall_seconds": state["elapsed_seconds"],
                   **({"teacher": cfg.teacher, "teacher_sha256": teacher.sha256} if teacher else {})}
        _write_atomic(run / "summary.json", json.dumps(summary, indent=2) + "\n")
        print(json.dumps(row), flush=True)
    return json.loads((run / "summary.json").read_text())


if __name__ == "__main__":
    main()
