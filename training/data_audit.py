"""Audit an image-folder dataset: counts, unreadable files, exact and near duplicates.

The dataset layout is ``DATA_DIR/<class>/<file>``. Every file is fully decoded (a
truncated JPEG only fails when its pixels are read), hashed with sha256 of its bytes
(exact duplicates) and with a 64-bit perceptual hash (``imagehash.phash``); two files
whose perceptual hashes differ in at most ``near_threshold`` bits are near-duplicates.

Near pairs are found with multi-index hashing rather than an all-pairs scan: if two
64-bit hashes differ in at most ``t`` bits, then by pigeonhole at least one of ``t + 1``
disjoint bit-chunks is identical, so only files sharing a chunk value are compared.

Hashes are cached in a JSON file keyed by absolute path and validated by size and
mtime, so a re-run only decodes new or changed files.

Command line::

    python -m training.data_audit DATA_DIR --out audit.json [--md audit.md]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from contract import IMAGE_EXTENSIONS

IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))
DEFAULT_NEAR_THRESHOLD = 4
DEFAULT_CACHE = Path("cache") / "data_audit_hashes.json"
HASH_SIZE = 8  # imagehash.phash default: 8x8 DCT coefficients -> 64 bits
_CACHE_VERSION = 1


@dataclass(frozen=True)
class FileRecord:
    """Hashes of one file; ``error`` is set (and the hashes are empty) when it cannot be decoded."""

    relpath: str
    label: str
    size: int
    sha256: str
    phash: str = ""
    error: str = ""


@dataclass
class AuditReport:
    """Result of :func:`audit`; JSON round-trips with :meth:`to_dict` / :meth:`from_dict`.

    Paths are relative to ``data_dir`` with ``/`` separators; the label of a file is its
    first path component. Group lists are sorted so that two runs give equal reports.
    """

    data_dir: str
    near_threshold: int
    hash: str
    n_files: int
    class_counts: dict[str, int]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    # Groups of >= 2 files with identical bytes.
    exact_groups: list[list[str]] = field(default_factory=list)
    # Connected components of the "phash distance <= threshold" graph that hold at
    # least two *different* files (different sha256); exact copies are members too.
    near_groups: list[list[str]] = field(default_factory=list)
    # Exact groups whose members sit in more than one class folder.
    cross_class_exact: list[list[str]] = field(default_factory=list)
    # Near groups whose members sit in more than one class folder.
    cross_class_near: list[list[str]] = field(default_factory=list)

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AuditReport":
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AuditReport":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # -- derived numbers -------------------------------------------------------------
    def summary(self) -> dict[str, int]:
        """Flat counts, for logs and model cards."""
        return {
            "files": self.n_files,
            "unreadable": len(self.unreadable),
            "exact_groups": len(self.exact_groups),
            "exact_redundant_files": sum(len(g) - 1 for g in self.exact_groups),
            "near_groups": len(self.near_groups),
            "near_group_files": sum(len(g) for g in self.near_groups),
            "cross_class_exact_groups": len(self.cross_class_exact),
            "cross_class_exact_files": sum(len(g) for g in self.cross_class_exact),
            "cross_class_near_groups": len(self.cross_class_near),
            "cross_class_near_files": sum(len(g) for g in self.cross_class_near),
        }

    def to_markdown(self, max_examples: int = 10) -> str:
        """Human summary for the model card (counts, then a few examples of each problem)."""
        s = self.summary()
        lines = [
            f"## Data audit: `{Path(self.data_dir).name}`",
            "",
            f"Hashes: sha256 of file bytes (exact), {self.hash} with Hamming distance "
            f"<= {self.near_threshold} of 64 bits (near). Every file fully decoded.",
            "",
            "| class | files |",
            "|---|---:|",
        ]
        lines += [f"| {c} | {n:,} |" for c, n in sorted(self.class_counts.items())]
        lines += [f"| **total** | **{self.n_files:,}** |", ""]
        lines += [
            "| finding | groups | files |",
            "|---|---:|---:|",
            f"| unreadable files | - | {s['unreadable']} |",
            f"| exact duplicate groups (identical bytes) | {s['exact_groups']} | "
            f"{sum(len(g) for g in self.exact_groups)} ({s['exact_redundant_files']} redundant copies) |",
            f"| near-duplicate groups (phash) | {s['near_groups']} | {s['near_group_files']} |",
            f"| exact duplicates filed under two or more classes | {s['cross_class_exact_groups']} | "
            f"{s['cross_class_exact_files']} |",
            f"| near-duplicate groups spanning two or more classes | {s['cross_class_near_groups']} | "
            f"{s['cross_class_near_files']} |",
            "",
        ]
        sizes = sorted((len(g) for g in self.near_groups), reverse=True)
        if sizes:
            lines += [f"Largest near-duplicate groups: {', '.join(map(str, sizes[:10]))} files.", ""]

        def examples(title: str, groups: Sequence[Sequence[str]]) -> None:
            if not groups:
                return
            lines.append(f"### {title} (first {min(max_examples, len(groups))} of {len(groups)})")
            lines.append("")
            for g in groups[:max_examples]:
                lines.append("- " + ", ".join(f"`{p}`" for p in g))
            lines.append("")

        if self.unreadable:
            lines.append("### Unreadable files")
            lines.append("")
            lines += [f"- `{u['relpath']}`: {u['error']}" for u in self.unreadable[:max_examples]]
            lines.append("")
        examples("Exact duplicates across classes", self.cross_class_exact)
        examples("Near duplicates across classes", self.cross_class_near)
        return "\n".join(lines)


# ---------------------------------------------------------------------------------
# hashing
# ---------------------------------------------------------------------------------
def list_images(data_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """``(relpath, label)`` for every image file directly under a class folder, sorted."""
    root = Path(data_dir)
    out = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                out.append((f"{class_dir.name}/{f.name}", class_dir.name))
    return out


def hash_file(path: str | os.PathLike) -> tuple[str, str, str]:
    """Return ``(sha256, phash_hex, error)`` of one file; a failed decode gives an empty phash."""
    import imagehash
    from PIL import Image

    data = Path(path).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # full decode: truncated files only fail here
            ph = str(imagehash.phash(im.convert("RGB"), hash_size=HASH_SIZE))
        return sha, ph, ""
    except Exception as exc:  # any decoder failure means "unreadable", never a crash
        return sha, "", f"{type(exc).__name__}: {exc}"


class HashCache:
    """JSON cache ``{abs_path: {size, mtime_ns, sha256, phash, error}}``."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        self.dirty = False
        if self.path and self.path.exists():
            try:
                blob = json.loads(self.path.read_text())
                if blob.get("version") == _CACHE_VERSION and blob.get("hash_size") == HASH_SIZE:
                    self.entries = blob["entries"]
            except (OSError, ValueError, KeyError):
                self.entries = {}  # a corrupt cache is only a slower run

    def get(self, abspath: str, st: os.stat_result) -> dict | None:
        e = self.entries.get(abspath)
        if e and e["size"] == st.st_size and e["mtime_ns"] == st.st_mtime_ns:
            return e
        return None

    def put(self, abspath: str, st: os.stat_result, sha: str, ph: str, err: str) -> None:
        self.entries[abspath] = {
            "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha, "phash": ph, "error": err,
        }
        self.dirty = True

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": _CACHE_VERSION, "hash_size": HASH_SIZE,
                                   "entries": self.entries}))
        os.replace(tmp, self.path)


def hash_dataset(
    data_dir: str | os.PathLike,
    cache_path: str | os.PathLike | None = DEFAULT_CACHE,
    progress: bool = False,
) -> list[FileRecord]:
    """Hash every image of ``data_dir`` (using and updating the cache)."""
    root = Path(data_dir).resolve()
    files = list_images(root)
    cache = HashCache(cache_path)
    it: Iterable = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, desc="hashing", unit="img", file=sys.stderr)
    records = []
    for i, (rel, label) in enumerate(it):
        p = root / rel
        st = p.stat()
        e = cache.get(str(p), st)
        if e is None:
            sha, ph, err = hash_file(p)
            cache.put(str(p), st, sha, ph, err)
        else:
            sha, ph, err = e["sha256"], e["phash"], e["error"]
        records.append(FileRecord(rel, label, st.st_size, sha, ph, err))
        if cache.dirty and i % 2000 == 1999:
            cache.save()  # an interrupted first run keeps most of its work
    cache.save()
    return records


# ---------------------------------------------------------------------------------
# grouping
# ---------------------------------------------------------------------------------
class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # smaller index as root keeps components stable across runs
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra

    def components(self) -> list[list[int]]:
        comps: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            comps[self.find(i)].append(i)
        return sorted(comps.values(), key=lambda c: c[0])


def near_pairs(hashes: Sequence[int], threshold: int, bits: int = 64) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``threshold`` bits."""
    n_chunks = threshold + 1
    bounds = [round(k * bits / n_chunks) for k in range(n_chunks + 1)]
    masks = [((1 << (hi - lo)) - 1, lo) for lo, hi in zip(bounds, bounds[1:])]
    seen: set[tuple[int, int]] = set()
    pairs = []
    for mask, shift in masks:
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(hashes):
            buckets[(h >> shift) & mask].append(i)
        for members in buckets.values():
            for a in range(len(members)):
                ha = hashes[members[a]]
                for b in range(a + 1, len(members)):
                    i, j = members[a], members[b]
                    if (i, j) in seen:
                        continue
                    if bin(ha ^ hashes[j]).count("1") <= threshold:
                        seen.add((i, j))
                        pairs.append((i, j))
    return sorted(pairs)


def _label(relpath: str) -> str:
    return relpath.split("/", 1)[0]


def build_report(
    records: Sequence[FileRecord], data_dir: str, near_threshold: int = DEFAULT_NEAR_THRESHOLD
) -> AuditReport:
    """Group hashed files into an :class:`AuditReport` (pure: no file access)."""
    class_counts: dict[str, int] = defaultdict(int)
    for r in records:
        class_counts[r.label] += 1
    unreadable = [{"relpath": r.relpath, "error": r.error} for r in records if r.error]

    by_sha: dict[str, list[str]] = defaultdict(list)
    for r in records:
        by_sha[r.sha256].append(r.relpath)
    exact_groups = sorted(sorted(g) for g in by_sha.values() if len(g) > 1)

    # Near graph over distinct contents (one node per sha256) so exact copies cost nothing.
    readable = [r for r in records if not r.error]
    shas = sorted({r.sha256 for r in readable})
    sha_index = {s: i for i, s in enumerate(shas)}
    sha_phash = {r.sha256: int(r.phash, 16) for r in readable}
    uf = UnionFind(len(shas))
    for i, j in near_pairs([sha_phash[s] for s in shas], near_threshold):
        uf.union(i, j)
    near_groups = []
    for comp in uf.components():
        if len(comp) < 2:
            continue
        near_groups.append(sorted(p for i in comp for p in by_sha[shas[i]]))
    near_groups.sort()

    def multi_class(groups):
        return [g for g in groups if len({_label(p) for p in g}) > 1]

    return AuditReport(
        data_dir=str(data_dir),
        near_threshold=near_threshold,
        hash=f"imagehash.phash (hash_size={HASH_SIZE})",
        n_files=len(records),
        class_counts=dict(sorted(class_counts.items())),
        unreadable=unreadable,
        exact_groups=exact_groups,
        near_groups=near_groups,
        cross_class_exact=multi_class(exact_groups),
        cross_class_near=multi_class(near_groups),
    )


def audit(
    data_dir: str | os.PathLike,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    cache_path: str | os.PathLike | None = DEFAULT_CACHE,
    progress: bool = False,
) -> AuditReport:
    """Audit ``data_dir`` (one sub-folder per class).

    Parameters
    ----------
    data_dir
        Dataset root; labels are the sub-folder names.
    near_threshold
        Largest Hamming distance (of 64 phash bits) that still counts as a near-duplicate.
    cache_path
        JSON hash cache; ``None`` disables caching.
    progress
        Show a tqdm bar on stderr while hashing.

    Returns
    -------
    AuditReport
    """
    records = hash_dataset(data_dir, cache_path=cache_path, progress=progress)
    return build_report(records, str(data_dir), near_threshold)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.data_audit", description=__doc__.split("\n")[0])
    ap.add_argument("data_dir")
    ap.add_argument("--out", help="write the report as JSON here")
    ap.add_argument("--md", help="write the Markdown summary here too")
    ap.add_argument("--near-threshold", type=int, default=DEFAULT_NEAR_THRESHOLD)
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="hash cache JSON ('' disables)")
    args = ap.parse_args(argv)
    if not Path(args.data_dir).is_dir():
        print(f"error: {args.data_dir} is not a directory", file=sys.stderr)
        return 2
    report = audit(args.data_dir, args.near_threshold, args.cache or None, progress=True)
    if args.out:
        report.save(args.out)
    md = report.to_markdown()
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
