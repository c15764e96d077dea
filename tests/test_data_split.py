"""Audit and split on a small generated image-folder dataset with planted duplicates."""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from training import data_audit
from training.data_audit import AuditReport, audit
from training.data_split import EXCLUDED, SPLITS, export_sample, load_manifest, make_split

CLASSES = ("cans", "jars", "paper")
PER_CLASS = 40


def _image(rng: np.random.Generator) -> Image.Image:
    # Smooth random pictures: structure in the low frequencies phash looks at, so two
    # different pictures are far apart and a re-encoded copy stays close.
    small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((64, 64), Image.BICUBIC)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("data") / "ds"
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(PER_CLASS):
            _image(rng).save(root / c / f"{c}{i}.jpg", quality=90)
    planted = {
        # byte-identical copy in the same class
        "exact_same": ("cans/cans0.jpg", "cans/cans0_copy.jpg"),
        # byte-identical copy filed under another class
        "exact_cross": ("jars/jars1.jpg", "paper/jars1_misfiled.jpg"),
        # re-encoded at another quality and slightly brightened
        "near": ("paper/paper2.jpg", "paper/paper2_bright.jpg"),
    }
    shutil.copyfile(root / planted["exact_same"][0], root / planted["exact_same"][1])
    shutil.copyfile(root / planted["exact_cross"][0], root / planted["exact_cross"][1])
    with Image.open(root / planted["near"][0]) as im:
        ImageEnhance.Brightness(im.convert("RGB")).enhance(1.05).save(root / planted["near"][1], quality=70)
    (root / "paper" / "broken.jpg").write_bytes(b"not a jpeg")
    return root, planted


@pytest.fixture(scope="module")
def report(dataset, tmp_path_factory) -> AuditReport:
    root, _ = dataset
    return audit(root, cache_path=tmp_path_factory.mktemp("cache") / "hashes.json")


def _group_containing(groups, relpath):
    return next((set(g) for g in groups if relpath in g), set())


def test_audit_finds_planted_problems(dataset, report):
    _, planted = dataset
    assert report.n_files == 3 * PER_CLASS + 4
    assert report.class_counts == {"cans": PER_CLASS + 1, "jars": PER_CLASS, "paper": PER_CLASS + 3}
    assert [u["relpath"] for u in report.unreadable] == ["paper/broken.jpg"]
    assert sorted(map(tuple, report.exact_groups)) == sorted([planted["exact_same"], planted["exact_cross"]])
    assert report.cross_class_exact == [sorted(planted["exact_cross"])]
    assert set(planted["near"]) <= _group_containing(report.near_groups, planted["near"][0])
    # the generated pictures are otherwise unrelated: only the planted near pair links distinct bytes
    assert len(report.near_groups) == 1
    assert "exact duplicates filed under two or more classes | 1" in report.to_markdown()


def test_report_json_round_trip(report, tmp_path):
    report.save(tmp_path / "audit.json")
    assert AuditReport.load(tmp_path / "audit.json") == report


def test_cache_makes_rerun_skip_decoding(dataset, tmp_path, monkeypatch):
    root, _ = dataset
    cache = tmp_path / "hashes.json"
    first = audit(root, cache_path=cache)

    def fail(path):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(data_audit, "hash_file", fail)
    assert audit(root, cache_path=cache) == first


def test_no_group_crosses_splits_and_conflicts_are_excluded(dataset, report):
    root, planted = dataset
    m = make_split(root, seed=1, audit=report)
    assert sorted(r.relpath for r in m.rows) == sorted(
        str(p.relative_to(root)) for p in root.rglob("*.jpg")
    )
    splits_of_group = defaultdict(set)
    for r in m.rows:
        if r.split != EXCLUDED:
            splits_of_group[r.group_id].add(r.split)
    assert all(len(s) == 1 for s in splits_of_group.values())

    by_path = {r.relpath: r for r in m.rows}
    for p in planted["exact_cross"]:
        assert by_path[p].split == EXCLUDED and by_path[p].reason.startswith("conflicting_labels")
    keep, extra = planted["exact_same"]
    assert by_path[keep].split in SPLITS
    assert by_path[extra].split == EXCLUDED and by_path[extra].reason == f"exact_duplicate_of:{keep}"
    a, b = planted["near"]
    assert by_path[a].group_id == by_path[b].group_id and by_path[a].split == by_path[b].split
    assert by_path["paper/broken.jpg"].reason == "unreadable"


def test_stratification_roughly_holds(dataset, report):
    root, _ = dataset
    counts = make_split(root, seed=3, fractions=(0.5, 0.25, 0.25), audit=report).counts()
    for c in CLASSES:
        total = sum(counts[s].get(c, 0) for s in SPLITS)
        for s, f in zip(SPLITS, (0.5, 0.25, 0.25)):
            assert abs(counts[s].get(c, 0) - f * total) <= 2, (c, s, counts)


def test_same_seed_same_manifest_other_seed_differs(dataset, report):
    root, _ = dataset
    a = make_split(root, seed=7, audit=report)
    assert make_split(root, seed=7, audit=report) == a
    b = make_split(root, seed=8, audit=report)
    assert [r.split for r in b.rows] != [r.split for r in a.rows]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_manifest_round_trip(dataset, report, tmp_path, suffix):
    root, _ = dataset
    m = make_split(root, seed=5, audit=report)
    m.save(tmp_path / f"manifest{suffix}")
    assert load_manifest(tmp_path / f"manifest{suffix}") == m


def test_bad_fractions_rejected(dataset, report):
    root, _ = dataset
    with pytest.raises(ValueError):
        make_split(root, fractions=(0.8, 0.1, 0.2), audit=report)


def test_export_sample_takes_only_test_singletons(dataset, report, tmp_path):
    root, _ = dataset
    m = make_split(root, seed=2, audit=report)
    picked = export_sample(m, root, tmp_path / "sample", per_class=2, split="test")
    by_path = {r.relpath: r for r in m.rows}
    sizes = Counter(r.group_id for r in m.rows)
    assert Counter(p.split("/")[0] for p in picked) == {c: 2 for c in CLASSES}
    assert all(by_path[p].split == "test" and sizes[by_path[p].group_id] == 1 for p in picked)
    assert all((tmp_path / "sample" / p).read_bytes() == (root / p).read_bytes() for p in picked)


def test_cli_writes_manifest(dataset, tmp_path, capsys):
    from training.data_split import main

    root, _ = dataset
    out = tmp_path / "m.csv"
    assert main([str(root), "--seed", "42", "--out", str(out), "--cache", ""]) == 0
    assert "| cans |" in capsys.readouterr().out
    assert load_manifest(out).rows
