"""Occlusion heatmap: which part of the image the top class depends on.

Why occlusion and not Grad-CAM: Grad-CAM needs gradients of the class score with respect to a late
convolution's activations. An ONNX model served for inference gives neither the gradients nor (without
re-exporting every classifier with an extra output) the activations, and the stand-in and native
ONNX Runtime backends would both have to carry that output. Occlusion needs nothing from the model:
grey out one cell of a GRID x GRID grid at a time, classify all the copies in ONE batched request
to `<name>_classifier` (UINT8 [224,224,3], the letterboxed pixels), and the drop of the top class's
probability says how much that cell mattered. It works with every classifier the server holds,
trained or random, now and after any retraining, and costs one request of GRID**2 + 1 images
(50 for 7x7, within the classifier's max_batch_size of 64), about the price of one TTA call per
image on this CPU box. The map is coarse (32-pixel cells), which is the honest resolution of the
question "what drove the answer" for a photo of one object.

Pure NumPy here; the request itself is in `app.service`.
"""
from __future__ import annotations

import numpy as np

from contract import PAD_VALUE

#: Cells per side; 7 makes 32-pixel cells on the 224-pixel input and 49 occluded copies.
GRID = 7
#: Occluder value: the letterbox padding (CONTRACT.md), so a covered cell looks like background.
FILL = PAD_VALUE


def occluded_copies(pixels: np.ndarray, grid: int = GRID, fill: int = FILL) -> np.ndarray:
    """The image followed by ``grid**2`` copies, each with one cell set to ``fill``.

    Parameters
    ----------
    pixels : ndarray, uint8, (H, W, 3)
        The model input (letterboxed).
    grid : int
    fill : int

    Returns
    -------
    ndarray, uint8, (1 + grid**2, H, W, 3)
        Index 0 is the untouched image, index 1 + r*grid + c has cell (r, c) covered.
    """
    height, width = pixels.shape[:2]
    rows = np.linspace(0, height, grid + 1).round().astype(int)
    cols = np.linspace(0, width, grid + 1).round().astype(int)
    batch = np.repeat(pixels[None], 1 + grid * grid, axis=0)
    for r in range(grid):
        for c in range(grid):
            batch[1 + r * grid + c, rows[r]:rows[r + 1], cols[c]:cols[c + 1]] = fill
    return batch


def importance(scores: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Per-cell importance from the target class's scores over the batch of `occluded_copies`.

    Parameters
    ----------
    scores : ndarray, (1 + grid**2,)
        Probability of the explained class for the original then each occluded copy.
    grid : int

    Returns
    -------
    ndarray, float, (grid, grid)
        The probability drop when the cell is hidden, clipped at 0 (a cell whose removal raises the
        score did not drive it), divided by the largest drop: 1 marks the cell that mattered most.
        All zeros when no cell matters.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != 1 + grid * grid:
        raise ValueError(f"expected {1 + grid * grid} scores, got {scores.shape[0]}")
    drop = np.clip(scores[0] - scores[1:], 0.0, None).reshape(grid, grid)
    peak = drop.max()
    return drop / peak if peak > 0 else drop


# A perceptually ordered dark-blue -> teal -> yellow ramp (viridis' anchor colours): importance
# must read as "more", which a rainbow map does not do.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                 dtype=np.float64)


def colorize(heat: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with the ramp above."""
    x = np.clip(heat, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    frac = (x - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).round().astype(np.uint8)


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend the (grid, grid) ``heat`` map, upsampled smoothly, over the image.

    Parameters
    ----------
    pixels : ndarray, uint8, (H, W, 3)
    heat : ndarray, float, (grid, grid), values in [0, 1]
    alpha : float
        Weight of the heatmap where importance is 1; unimportant cells stay mostly visible.

    Returns
    -------
    ndarray, uint8, (H, W, 3)
    """
    from PIL import Image

    height, width = pixels.shape[:2]
    # Bilinear upsampling of the cell values so the map does not suggest 32-pixel precision edges.
    big = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8), "L")
    big = np.asarray(big.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64) / 255
    weight = (alpha * (0.35 + 0.65 * big))[..., None]
    blended = pixels.astype(np.float64) * (1 - weight) + colorize(big).astype(np.float64) * weight
    return blended.round().clip(0, 255).astype(np.uint8)
