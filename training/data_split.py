"""Leak-free, class-stratified train/val/test split of an image-folder dataset.

Groups
    Files linked by an exact duplicate (same sha256) or a near duplicate (phash distance
    <= the audit threshold) are joined with union-find; each connected component is a
    group and a group always lands entirely in one split, so no picture (or a re-encoded
    copy of it) is on both sides of train/test.

Stratification
    Groups are visited largest first (ties in an order shuffled by ``seed``) and each
    is given to the split whose per-class counts are furthest below their targets
    (``fraction * class total``), weighted by the group's own class counts. The result
    depends only on the file list, the audit and the seed.

Exclusions (rows kept in the manifest with ``split == "excluded"`` and a ``reason``)
    - ``unreadable``: the file does not decode.
    - ``conflicting_labels:<a>|<b>``: byte-identical files filed under different
      classes; the true class is unknown, so every copy is dropped from all splits.
    - ``exact_duplicate_of:<relpath>``: a second byte-identical copy in the same class;
      the first copy (by path) is kept, the others would only double-count in metrics.

    Near-duplicate groups that span classes are *kept* with their folder labels: in
    garbage12 they are mostly phash false positives (thin, centred objects on a white
    background, e.g. a brown bottle and a toothbrush), so only the one-side rule applies.

Command line::

    python -m training.data_split DATA_DIR --seed 42 --out runs/split/manifest.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from training.data_audit import DEFAULT_CACHE, AuditReport, UnionFind, audit as run_audit, list_images

SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
FIELDS = ("relpath", "label", "split", "group_id", "reason")


@dataclass(frozen=True)
class ManifestRow:
    relpath: str  # relative to the dataset root, "/" separators
    label: str
    split: str  # train | val | test | excluded
    group_id: str
    reason: str = ""  # why a row is excluded; empty otherwise


@dataclass
class Manifest:
    """Rows sorted by ``relpath``; one per image file of the dataset."""

    rows: list[ManifestRow] = field(default_factory=list)

    def split(self, name: str) -> list[ManifestRow]:
        return [r for r in self.rows if r.split == name]

    def items(self, name: str) -> list[tuple[str, str]]:
        """``(relpath, label)`` pairs of one split, ready for a dataset loader."""
        return [(r.relpath, r.label) for r in self.rows if r.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {label: n}}`` including ``excluded``."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in self.rows:
            out[r.split][r.label] += 1
        return {s: dict(sorted(c.items())) for s, c in out.items()}

    def to_markdown(self) -> str:
        counts = self.counts()
        labels = sorted({r.label for r in self.rows})
        cols = [s for s in (*SPLITS, EXCLUDED) if s in counts]
        lines = ["| class | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for lab in labels:
            lines.append(f"| {lab} | " + " | ".join(str(counts[s].get(lab, 0)) for s in cols) + " |")
        lines.append("| **total** | " + " | ".join(f"**{sum(counts[s].values())}**" for s in cols) + " |")
        reasons = Counter(r.reason.split(":", 1)[0] for r in self.rows if r.reason)
        if reasons:
            lines += ["", "Excluded: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))]
        return "\n".join(lines)

    def summary_markdown(self, seed: int, fractions: Sequence[float], near_threshold: int) -> str:
        """Split counts plus the grouping and exclusion rules, for the model card."""
        n_groups = len({r.group_id for r in self.rows})
        return "\n".join([
            f"## Split (seed {seed}, fractions {'/'.join(f'{f:g}' for f in fractions)})",
            "",
            f"{n_groups:,} groups = connected components of exact (sha256) and near (phash distance "
            f"<= {near_threshold}) duplicate links; every group lies in one split. Byte-identical files "
            "under two classes are excluded from all splits; extra byte-identical copies within a class "
            "are excluded (the first path is kept); near-duplicate groups spanning classes keep their "
            "folder labels.",
            "",
            self.to_markdown(),
        ])

    def save(self, path: str | os.PathLike) -> None:
        """Write CSV (``.csv``) or JSON (any other suffix)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".csv":
            with path.open("w", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(FIELDS)
                for r in self.rows:
                    w.writerow([getattr(r, k) for k in FIELDS])
        else:
            path.write_text(json.dumps([asdict(r) for r in self.rows], indent=0) + "\n")


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest written by :meth:`Manifest.save` (CSV or JSON)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            rows = [ManifestRow(**{k: d.get(k) or "" for k in FIELDS}) for d in csv.DictReader(f)]
    else:
        rows = [ManifestRow(**d) for d in json.loads(path.read_text())]
    return Manifest(rows)


def _groups(relpaths: Sequence[str], report: AuditReport) -> list[list[str]]:
    """Connected components of the exact + near duplicate links, sorted by first path."""
    index = {p: i for i, p in enumerate(relpaths)}
    uf = UnionFind(len(relpaths))
    for g in (*report.exact_groups, *report.near_groups):
        members = [index[p] for p in g if p in index]
        for m in members[1:]:
            uf.union(members[0], m)
    return sorted(sorted(relpaths[i] for i in comp) for comp in uf.components())


def _exclusions(report: AuditReport) -> dict[str, str]:
    reasons = {u["relpath"]: "unreadable" for u in report.unreadable}
    for g in report.exact_groups:
        labels = sorted({p.split("/", 1)[0] for p in g})
        if len(labels) > 1:
            for p in g:
                reasons.setdefault(p, "conflicting_labels:" + "|".join(labels))
        else:
            for p in g[1:]:  # g is sorted: the first path is the kept copy
                reasons.setdefault(p, f"exact_duplicate_of:{g[0]}")
    return reasons


def assign_groups(
    group_counts: Sequence[Counter], fractions: Sequence[float], seed: int
) -> list[int]:
    """Greedy stratified assignment of whole groups; returns a split index per group.

    Parameters
    ----------
    group_counts
        Per group, the number of kept files of each label.
    fractions
        Target share of every label per split; must sum to 1.
    seed
        Shuffles the visiting order among groups of equal size.
    """
    totals: Counter = Counter()
    for c in group_counts:
        totals.update(c)
    target = [{lab: f * n for lab, n in totals.items()} for f in fractions]
    current = [Counter() for _ in fractions]
    order = list(range(len(group_counts)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -sum(group_counts[g].values()))  # stable: shuffled within a size
    assignment = [0] * len(group_counts)
    for g in order:
        counts = group_counts[g]
        if not counts:
            continue

        def need(s: int) -> float:
            # Relative deficit of this group's labels in split s: a split that is 10 %
            # short of its target beats one that is 1 % short, whatever the sizes.
            return sum(
                n * (target[s][lab] - current[s][lab]) / target[s][lab]
                for lab, n in counts.items()
                if target[s][lab] > 0
            )

        candidates = [s for s, f in enumerate(fractions) if f > 0]
        best = max(candidates, key=lambda s: (need(s), -s))  # ties: earlier split
        assignment[g] = best
        current[best].update(counts)
    return assignment


def make_split(
    data_dir: str | os.PathLike,
    seed: int = 42,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    audit: AuditReport | None = None,
    cache_path: str | os.PathLike | None = DEFAULT_CACHE,
) -> Manifest:
    """Split ``data_dir`` into train/val/test without duplicate leakage.

    Parameters
    ----------
    data_dir
        Dataset root with one sub-folder per class.
    seed
        Same seed, same files and same audit give an identical manifest.
    fractions
        ``(train, val, test)`` shares, summing to 1.
    audit
        A report from :func:`training.data_audit.audit` for this ``data_dir``; computed
        (with the hash cache at ``cache_path``) when omitted.

    Returns
    -------
    Manifest
        Every file once, with its split (or ``excluded`` and a reason) and group id.

    Raises
    ------
    ValueError
        If ``fractions`` does not have three non-negative entries summing to 1.
    """
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    report = audit if audit is not None else run_audit(data_dir, cache_path=cache_path)
    files = list_images(data_dir)
    labels = dict(files)
    relpaths = [p for p, _ in files]
    excluded = _exclusions(report)
    groups = _groups(relpaths, report)
    width = len(str(len(groups)))
    group_counts = [Counter(labels[p] for p in g if p not in excluded) for g in groups]
    assignment = assign_groups(group_counts, fractions, seed)
    rows = []
    for gi, (g, s) in enumerate(zip(groups, assignment)):
        gid = f"g{gi:0{width}d}"
        for p in g:
            if p in excluded:
                rows.append(ManifestRow(p, labels[p], EXCLUDED, gid, excluded[p]))
            else:
                rows.append(ManifestRow(p, labels[p], SPLITS[s], gid))
    rows.sort(key=lambda r: r.relpath)
    return Manifest(rows)


def export_sample(
    manifest: Manifest,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    per_class: int = 3,
    split: str = "test",
    seed: int = 42,
) -> list[str]:
    """Copy ``per_class`` files of each class from one split into ``out_dir/<class>/``.

    Only files whose duplicate group has a single member are picked, so a bundled
    sample image has no re-encoded twin anywhere in the data. Returns the copied
    relpaths.
    """
    import shutil

    group_sizes = Counter(r.group_id for r in manifest.rows)
    by_label: dict[str, list[str]] = defaultdict(list)
    for r in manifest.rows:
        if r.split == split and group_sizes[r.group_id] == 1:
            by_label[r.label].append(r.relpath)
    rng = random.Random(seed)
    picked = []
    for label in sorted(by_label):
        for rel in sorted(rng.sample(sorted(by_label[label]), min(per_class, len(by_label[label])))):
            dst = Path(out_dir) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(data_dir) / rel, dst)
            picked.append(rel)
    return picked


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.data_split", description=__doc__.split("\n")[0])
    ap.add_argument("data_dir")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--out", default="runs/split/manifest.csv", help=".csv or .json")
    ap.add_argument("--audit", help="audit JSON to reuse (else the audit is run, with the hash cache)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="hash cache JSON ('' disables)")
    ap.add_argument("--md", help="also write the split summary (Markdown) here")
    ap.add_argument("--sample-dir", help="also copy a few test-split images per class here")
    ap.add_argument("--sample-per-class", type=int, default=3)
    args = ap.parse_args(argv)
    if not Path(args.data_dir).is_dir():
        print(f"error: {args.data_dir} is not a directory", file=sys.stderr)
        return 2
    if args.audit:
        report = AuditReport.load(args.audit)
    else:
        from training.data_audit import audit

        report = audit(args.data_dir, cache_path=args.cache or None, progress=True)
    try:
        manifest = make_split(args.data_dir, args.seed, tuple(args.fractions), audit=report)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest.save(args.out)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(
            manifest.summary_markdown(args.seed, args.fractions, report.near_threshold) + "\n"
        )
    print(manifest.to_markdown())
    print(f"\nwrote {args.out} ({len(manifest.rows)} rows, seed {args.seed})")
    if args.sample_dir:
        picked = export_sample(manifest, args.data_dir, args.sample_dir, args.sample_per_class, seed=args.seed)
        print(f"copied {len(picked)} test-split images to {args.sample_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
