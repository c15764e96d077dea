"""The accuracy tools without training: shift suite, non-waste pictures, "not sure" threshold,
fine-tuning's pure helpers and the ablation table. Seconds, on a few photos."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((ROOT / "samples" / "garbage12").glob("*/*.jpg"))[:3]


def test_every_shift_condition_is_deterministic_and_reaches_the_server_path():
    from training.preprocessing import imaging
    from training.shift import CONDITIONS, shifted_bytes

    data = PHOTOS[0].read_bytes()
    plain = imaging.preprocess_bytes(data)
    for i, condition in enumerate(CONDITIONS):
        first = shifted_bytes(data, condition, i)
        assert first == shifted_bytes(data, condition, i), condition
        pixels = imaging.preprocess_bytes(first)
        assert pixels.shape == plain.shape and not np.array_equal(pixels, plain), condition
    assert shifted_bytes(data, "combined_phone", 1) != shifted_bytes(data, "combined_phone", 2)
    with pytest.raises(KeyError):
        shifted_bytes(data, "no such condition", 0)


def test_the_shift_plan_spreads_photos_evenly_over_conditions():
    from training.shift import CONDITIONS, shift_plan

    plan = shift_plan(1509, per_photo=2)
    assert all(len(set(p)) == 2 for p in plan)
    counts = np.unique([c for p in plan for c in p], return_counts=True)[1]
    assert len(counts) == len(CONDITIONS) and counts.max() - counts.min() <= 1
    assert plan == shift_plan(1509, per_photo=2)


def test_nonwaste_pictures_are_deterministic_cover_every_kind_and_decode():
    from training.nonwaste import KINDS, nonwaste_items
    from training.preprocessing import imaging

    items = nonwaste_items(12)
    assert items == nonwaste_items(12)
    assert {k for k, _ in items} == set(KINDS)
    assert nonwaste_items(6, seed=1) != nonwaste_items(6)
    for _, data in items:
        assert imaging.preprocess_bytes(data).shape == (imaging.INPUT_SIZE, imaging.INPUT_SIZE, 3)


def test_threshold_keeps_the_coverage_asked_for_on_validation():
    from training.selective import choose_threshold, risk_coverage, selective, unsure_rate

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5) * 0.3, 400)
    labels = np.where(rng.random(400) < 0.8, probs.argmax(1), rng.integers(0, 5, 400))
    t = choose_threshold(probs, 0.95)
    record = selective(probs, labels, t)
    assert 0.95 <= record["coverage"] < 0.96
    assert record["selective_accuracy"] >= (probs.argmax(1) == labels).mean()
    assert unsure_rate(probs, t) == pytest.approx(1 - record["coverage"])
    coverage, risk = risk_coverage(probs, labels)
    assert coverage[-1] == 1 and risk[-1] == pytest.approx(1 - (probs.argmax(1) == labels).mean())


def test_finetune_helpers():
    from training.finetune import class_weights, epoch_sizes, mix

    assert epoch_sizes("160:2,224:1") == [160, 160, 224]
    labels = np.array([0] * 90 + [1] * 10)
    w = class_weights(labels, 2, 0.5)
    assert w[labels].mean() == pytest.approx(1) and w[1] / w[0] == pytest.approx(3)
    assert (class_weights(labels, 2, 0.0) == 1).all()
    rng = np.random.default_rng(0)
    x = rng.random((8, 16, 16, 3)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 8)]
    for seed in range(6):
        mx, my, mw = mix(x, y, np.ones(8, np.float32), np.random.default_rng(seed), 0.2, 1.0)
        assert mx.shape == x.shape and np.allclose(my.sum(1), 1) and np.allclose(mw, 1)


def test_ablation_table_names_what_each_run_changed(tmp_path):
    from training.ablation import table

    for name, overrides, acc in (("base", {}, 0.98), ("no_mix", {"mix_prob": 0.0}, 0.975)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"mix_prob": 0.3, "lr": 5e-4, "run_dir": str(run), **overrides}))
        (run / "summary.json").write_text(json.dumps({"epochs_done": 2, "epochs": 2, "best_val_accuracy": acc,
                                                      "best_val_loss": 0.1, "best_val_min_recall": 0.9}))
    text = table([tmp_path / "base", tmp_path / "no_mix"])
    assert "| base | (baseline) |" in text and "mix_prob=0.0" in text and "-0.50" in text
    assert text.splitlines()[-1].endswith("| - | - |")  # no shift-suite score: no number made up

    for name, acc in (("base", 0.95), ("no_mix", 0.96)):
        (tmp_path / name / "eval_val_shift").mkdir()
        (tmp_path / name / "eval_val_shift" / "metrics.json").write_text(json.dumps({"plain": {"accuracy": acc}}))
    assert table([tmp_path / "base", tmp_path / "no_mix"]).splitlines()[-1].endswith("| 0.9600 | +1.00 |")


def test_threshold_is_recorded_in_export_json_without_touching_the_model(tmp_path):
    from contract import CLASSES
    from export.model_repository import sha256, write_dev_classifier
    from export.threshold import choose_and_record

    model = write_dev_classifier(tmp_path, "dev")
    (model.parent / "export.json").write_text(json.dumps({"sha256": sha256(model)}))
    photos = sorted((ROOT / "samples" / "garbage12").glob("*/*.jpg"))
    items = [(str(p), CLASSES.index(p.parent.name)) for p in photos]
    record = choose_and_record(model.parent, {"val": items[::2], "test": items[1::2]}, 0.9, 6, tmp_path / "out")
    export = json.loads((model.parent / "export.json").read_text())
    assert export["unsure_threshold"] == record["threshold"] and export["sha256"] == sha256(model)
    assert record["validation"]["coverage"] >= 0.9 and 0 <= record["nonwaste"]["unsure_rate"] <= 1
    assert (tmp_path / "out" / "risk_coverage.png").stat().st_size > 0
