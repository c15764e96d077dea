"""Cache the frozen bottom's activations for every training view, once.

The bottom runs in ONNX Runtime, not Keras: on this 2-core machine ORT ran Lite0's bottom at
66 img/s against Keras' 24 img/s (batch 32), and the cached activations are what the top
trains on, so the bottom's speed sets the length of a training run. Values agree to 7e-5.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from training.augment import keras_augmenter, load_view
from training.config import TrainConfig


def onnx_session(model: keras.Model, threads: int = 0) -> ort.InferenceSession:
    import tensorflow as tf
    import tf2onnx

    size = model.input.shape[1]
    fn = tf.function(lambda x: model(x, training=False))
    proto, _ = tf2onnx.convert.from_function(
        fn, input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name="pixels")], opset=17)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _code_digest() -> str:
    """Digest of the code that turns a file into a view: a change to it must not reuse old activations."""
    import training.augment
    from training.preprocessing import IMAGING_PATH

    h = hashlib.sha256()
    for path in (IMAGING_PATH, Path(training.augment.__file__)):
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def cache_key(cfg: TrainConfig, split: str, items: list) -> str:
    fields = [cfg.backbone, cfg.weights, cfg.image_size, cfg.finetune_from, cfg.seed, cfg.rotation, cfg.shift,
              cfg.zoom, cfg.brightness, cfg.canvas_prob, split, len(items), items[0][0] if items else "",
              _code_digest()]
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def cached_views(cfg: TrainConfig, bottom: keras.Model, split: str, items: list[tuple[str, int]],
                 views: int, cache_dir: Path, batch: int = 32) -> np.ndarray:
    """Activations of shape (views, N, h, w, c) float16; view 0 is the plain image, the others augmented."""
    out_shape = tuple(bottom.output.shape[1:])
    key = cache_key(cfg, split, items)
    path = cache_dir / f"{split}_{key}_{views}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    session = onnx_session(bottom)
    augment = keras_augmenter(cfg, cfg.seed)
    tmp = path.with_suffix(".partial.npy")
    acts = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(views, len(items)) + out_shape)
    size = cfg.image_size
    with tqdm(total=views * len(items), desc=f"caching {split} views", unit="img") as bar:
        for v in range(views):
            for start in range(0, len(items), batch):
                chunk = items[start:start + batch]
                pixels = []
                for i, (p, _) in enumerate(chunk):
                    rng = None if v == 0 else np.random.default_rng([cfg.seed, v, start + i])
                    pixels.append(load_view(p, size, rng, cfg.canvas_prob))
                x = np.stack(pixels).astype(np.float32)
                if v > 0:
                    x = np.clip(keras.ops.convert_to_numpy(augment(x, training=True)), 0, 255).astype(np.float32)
                acts[v, start:start + len(chunk)] = session.run(None, {"pixels": x})[0].astype(np.float16)
                bar.update(len(chunk))
    acts.flush()
    del acts
    tmp.rename(path)
    return np.load(path, mmap_mode="r")
