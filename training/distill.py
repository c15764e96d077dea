"""A served classifier as teacher: its probabilities on each training view become part of the target.

The pair (`effnet_lite0_pair`) is more accurate than the default but costs two networks per photo;
distilling it into one Lite0 aims at the pair's accuracy at the default's speed. The teacher sees the
very view the student trains on (after re-staging, mixup or cutmix), so its target follows what the
student is shown (Beyer et al., "Knowledge distillation: a good teacher is patient and consistent").

The teacher is an exported ONNX classifier (uint8 NHWC at the serving contract's size in, calibrated
probabilities out), the file the server loads; views made at a smaller size for progressive resizing
are resized up to its input size first.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from training.evaluate import onnx_session
from training.preprocessing import imaging


class Teacher:
    """Class probabilities of an exported classifier for float32 NHWC views in [0, 255] of any square size."""

    def __init__(self, model_path: str | Path, threads: int = 1):
        # One thread: the student's training step already keeps every core busy.
        self.path = Path(model_path)
        self.session = onnx_session(self.path, threads)
        inp = self.session.get_inputs()[0]
        self.input_name, self.size = inp.name, int(inp.shape[1])
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()

    def __call__(self, views: np.ndarray) -> np.ndarray:
        pixels = np.clip(np.rint(views), 0, 255).astype(np.uint8)
        if pixels.shape[1] != self.size:
            # The server's own resize (a square view fills the square: no padding).
            pixels = np.stack([imaging.letterbox(Image.fromarray(p), self.size) for p in pixels])
        return self.session.run(None, {self.input_name: pixels})[0].astype(np.float32)


def soft_targets(labels: np.ndarray, teacher_probs: np.ndarray, weight: float) -> np.ndarray:
    """`(1 - weight) * labels + weight * teacher_probs`, renormalised (a calibrated teacher may not sum to 1 exactly)."""
    probs = teacher_probs / np.maximum(teacher_probs.sum(1, keepdims=True), 1e-12)
    return ((1.0 - weight) * labels + weight * probs).astype(np.float32)
