"""The split manifest as lists of (absolute path, class index) per split."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from training.data_split import load_manifest  # the one reader of manifest files
from training.labels import CLASSES


def load_split(manifest: str | Path, data_dir: str | Path, limit_per_class: int = 0) -> dict[str, list[tuple[str, int]]]:
    """Read `manifest` (columns relpath, label, split); rows whose split is not train/val/test are excluded.

    `limit_per_class` keeps the first N of each class per split (sorted by path) for smoke runs.
    """
    data_dir = Path(data_dir)
    index = {name: i for i, name in enumerate(CLASSES)}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for row in load_manifest(manifest).rows:
        if row.split in splits:
            splits[row.split].append((str(data_dir / row.relpath), index[row.label]))
    for name, items in splits.items():
        items.sort()
        if limit_per_class:
            seen: dict[int, int] = defaultdict(int)
            kept = []
            for path, label in items:
                if seen[label] < limit_per_class:
                    seen[label] += 1
                    kept.append((path, label))
            splits[name] = kept
    return splits
