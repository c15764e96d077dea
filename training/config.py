"""A run's whole configuration: one TOML file, overridden from the command line, saved in the run directory."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from contract import DEFAULT_MODEL, INPUT_SIZE


@dataclass
class TrainConfig:
    # data
    data_dir: str = "../shared/data/garbage12"
    manifest: str = "training/splits/garbage12_seed42.csv"  # made by `python -m training.data_split`
    seed: int = 42
    limit_per_class: int = 0  # 0 = all; small values make the CI smoke run
    # model
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"  # "imagenet", a file path, or "random" (only on purpose)
    # A second stage: start from a finished run's model.keras (every layer and the head), not from ImageNet.
    init_from: str = ""
    image_size: int = INPUT_SIZE  # the serving contract's; a backbone at another size cannot be served
    head_units: int = 256
    head_dropout: float = 0.3
    # Fine-tuning starts at this layer; everything below it is frozen, run once, and cached.
    finetune_from: str = "blocks_11_expand_conv"
    # augmentation: every training image is cached as `views` versions, the first one plain
    views: int = 4
    rotation: float = 0.05  # fraction of a full turn
    shift: float = 0.1
    zoom: float = 0.2
    brightness: float = 0.2
    canvas_prob: float = 0.35  # chance a view is pasted on a wider, darker canvas before the letterbox
    # optimisation
    batch_size: int = 64
    head_epochs: int = 6
    head_lr: float = 1e-3
    finetune_epochs: int = 12
    finetune_lr: float = 2e-4
    label_smoothing: float = 0.1
    class_weights: bool = True
    patience: int = 4
    # full fine-tuning (`python -m training finetune`): every layer trains on augmented pixels
    classes: str = ""  # comma-separated class names in output order; "" = the manifest's labels, sorted
    sizes: str = "224:12"  # progressive resizing as size:epochs,...; the epochs add up to the run's length
    lr: float = 1e-3  # peak learning rate after the warmup (AdamW), cosine decay to lr * lr_floor
    lr_floor: float = 0.01
    warmup_epochs: float = 1.0
    weight_decay: float = 0.02
    augment_strength: float = 1.0  # photometric changes (colour, light, blur, noise); 0 = off
    restage_prob: float = 0.5  # share of training views re-staged on a background in a 16:9/9:16/... frame
    mix_prob: float = 0.3  # share of batches mixed, half by mixup, half by cutmix
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0
    outlier_prob: float = 0.05  # share of training views replaced by generated non-waste pictures, uniform target
    class_weight_power: float = 0.5  # sample weight = (inverse class frequency) ** power, mean 1; 0 = none
    bn_frozen: bool = True  # backbone BatchNorm in inference mode (see training/finetune.py)
    # distillation (training/distill.py): a share `distill_weight` of every target is the teacher's
    # probabilities on the same view; the teacher is an exported classifier ONNX, e.g. the pair's
    teacher: str = ""
    distill_weight: float = 0.0
    workers: int = 2  # threads preparing augmented batches while the model trains
    checkpoint_steps: int = 50  # also checkpoint every N steps inside an epoch (0: only at epoch ends)
    eager: bool = False  # run the training step eagerly: faster than tracing the graph for a few tiny steps (tests)
    # output
    run_dir: str = f"runs/{DEFAULT_MODEL}"
    cache_dir: str = "cache/activations"  # cached bottom activations, reused by re-runs with the same inputs
    name: str = DEFAULT_MODEL

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict | None = None) -> "TrainConfig":
        values = tomllib.loads(Path(path).read_text()) if path else {}
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        typed = {}
        for key, value in values.items():
            kind = type(getattr(cls(), key))
            typed[key] = kind(value) if not isinstance(value, kind) else value
        return cls(**typed)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` strings from the command line; values are parsed as TOML scalars."""
    out = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw
    return out
