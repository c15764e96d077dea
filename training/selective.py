"""Answering "not sure": the threshold, selective accuracy, the risk-coverage curve.

A prediction is answered only when its top probability reaches the model's `unsure_threshold`
(recorded in export.json). The threshold is chosen on the validation split alone, as the highest
value that still answers at least `coverage` of validation photos; test-split numbers are
measured afterwards with it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def choose_threshold(val_probs: np.ndarray, coverage: float = 0.95) -> float:
    """Highest threshold on the top probability that answers at least `coverage` of `val_probs`.

    Parameters
    ----------
    val_probs : numpy.ndarray
        (N, K) calibrated validation probabilities.
    coverage : float
        Share of validation photos that must be answered.

    Returns
    -------
    float
        A photo is answered when its top probability is >= this value.
    """
    conf = np.sort(val_probs.max(1))[::-1]
    k = int(np.ceil(coverage * len(conf)))  # the k most confident photos must be answered
    return float(conf[max(0, min(len(conf), k) - 1)])


def selective(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Coverage (share answered) and the accuracy on the answered photos at `threshold`."""
    conf, correct = probs.max(1), probs.argmax(1) == labels
    answered = conf >= threshold
    return {"threshold": float(threshold), "coverage": float(answered.mean()),
            "selective_accuracy": float(correct[answered].mean()) if answered.any() else float("nan"),
            "answered": int(answered.sum()), "images": int(len(labels))}


def unsure_rate(probs: np.ndarray, threshold: float) -> float:
    """Share of inputs answered "not sure" (top probability below `threshold`)."""
    return float((probs.max(1) < threshold).mean()) if len(probs) else float("nan")


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and error rate among the answered photos, answering the most confident first."""
    order = np.argsort(-probs.max(1), kind="stable")
    wrong = (probs.argmax(1) != labels)[order].astype(float)
    n = np.arange(1, len(order) + 1)
    return n / len(order), np.cumsum(wrong) / n


def plot_risk_coverage(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                       marks: dict[str, float] | None = None) -> None:
    """One line per named (coverage, risk) curve; `marks` draws a vertical line at a named coverage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (cov, risk) in curves.items():
        ax.plot(cov, risk, label=name)
    for name, value in (marks or {}).items():
        ax.axvline(value, color="grey", ls="--", lw=1)
        ax.text(value, ax.get_ylim()[1] * 0.95, f" {name}", color="grey", va="top", fontsize=8)
    ax.set_xlabel("coverage (share of photos answered)")
    ax.set_ylabel("error rate among answered")
    ax.set_xlim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
