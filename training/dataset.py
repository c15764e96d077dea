"""The split manifest as lists of (absolute path, class index) per split, and the class list it implies."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from training.data_split import load_manifest  # the one reader of manifest files
from training.labels import CLASSES


def manifest_classes(manifest: str | Path) -> tuple[str, ...]:
    """The class names a manifest uses, sorted: a run's classes when its config does not list them.

    For garbage12 this is exactly `training.labels.CLASSES` (alphabetical), so models trained before
    classes became configurable keep their output order.
    """
    return tuple(sorted({row.label for row in load_manifest(manifest).rows if row.split in ("train", "val", "test")}))


def resolve_classes(configured: str, manifest: str | Path) -> tuple[str, ...]:
    """The run's classes: `configured` ("a,b,c", output order) if given, else the manifest's sorted labels.

    Raises
    ------
    ValueError
        If the manifest has a label that the configured list lacks (it would have no output).
    """
    found = manifest_classes(manifest)
    if not configured.strip():
        return found
    classes = tuple(c.strip() for c in configured.split(",") if c.strip())
    missing = sorted(set(found) - set(classes))
    if missing:
        raise ValueError(f"the manifest has classes {missing} that the config's `classes` does not list: "
                         f"add them (the order of `classes` is the model's output order) or leave `classes` empty")
    return classes


def load_split(manifest: str | Path, data_dir: str | Path, limit_per_class: int = 0,
               classes: tuple[str, ...] = CLASSES) -> dict[str, list[tuple[str, int]]]:
    """Read `manifest` (columns relpath, label, split); rows whose split is not train/val/test are excluded.

    `limit_per_class` keeps the first N of each class per split (sorted by path) for smoke runs.
    `classes` gives each label its output index.

    Raises
    ------
    ValueError
        If a label is not in `classes` (named, with the fix), instead of a bare KeyError.
    """
    data_dir = Path(data_dir)
    index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for row in load_manifest(manifest).rows:
        if row.split in splits:
            if row.label not in index:
                raise ValueError(f"{manifest}: class {row.label!r} (folder of {row.relpath}) is not one of "
                                 f"the run's classes {list(classes)}; list it in the config's `classes` "
                                 f"or leave `classes` empty to take the manifest's")
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
