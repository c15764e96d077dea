"""Retraining on your own classes: a generated 3-class data folder through split, full fine-tuning
(stopped and resumed), export with calibration and "not sure" threshold, and a real tritonserver."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("circle", "square", "triangle")


def _shape_photo(kind: str, rng: np.random.Generator) -> Image.Image:
    """A coloured shape on a noisy background: easy to tell apart, different from every other one."""
    size = 96
    bg = rng.integers(120, 255, 3)
    img = Image.fromarray(np.clip(bg + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = int(rng.integers(18, 34))
    cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
    fill = tuple(int(v) for v in rng.integers(0, 110, 3))
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """Data folder -> split -> finetune (1 epoch, stop, resume, 1 more) -> export -> repository."""
    from export.__main__ import main as export_main
    from export.model_repository import write_shared_models
    from training.data_split import make_split
    from training.finetune import main as finetune_main

    tmp = tmp_path_factory.mktemp("shapes")
    data = tmp / "data"
    rng = np.random.default_rng(3)
    for kind in CLASSES:
        (data / kind).mkdir(parents=True)
        for i in range(14):
            _shape_photo(kind, rng).save(data / kind / f"{kind}{i}.jpg", quality=92)
    make_split(data, seed=1, cache_path=None).save(tmp / "manifest.csv")
    run = tmp / "run"
    args = ["--config", str(ROOT / "training/configs/tiny_ft.toml"), f"data_dir={data}",
            f"manifest={tmp / 'manifest.csv'}", f"run_dir={run}", "limit_per_class=0", "sizes=64:2",
            "lr=0.003", "checkpoint_steps=1"]
    finetune_main(args + ["--stop-after", "1"])
    after_one = json.loads((run / "checkpoints" / "epoch-001" / "state.json").read_text())
    finetune_main(["--resume", str(run)])
    repo = tmp / "repo"
    assert export_main([str(run), "--name", "shapes", "--repo", str(repo), "--nonwaste", "6"]) == 0
    write_shared_models(repo, classes=CLASSES)
    return tmp, run, repo, after_one


def test_classes_come_from_the_data_folder_and_reach_every_labels_file(shapes_run):
    _, run, repo, _ = shapes_run
    assert json.loads((run / "config.json").read_text())["classes"] == ",".join(CLASSES)
    for model in ("shapes_classifier", "shapes", "shapes_tta", "tta_mean"):
        assert (repo / model / "labels.txt").read_text().split() == list(CLASSES), model
    assert "dims: [ 3 ]" in (repo / "shapes_classifier" / "config.pbtxt").read_text()
    record = json.loads((repo / "shapes_classifier" / "1" / "export.json").read_text())
    assert record["classes"] == list(CLASSES)
    assert 0 < record["unsure_threshold"] < 1 and record["calibration"]["fitted_on"] == "validation split"


def test_a_stopped_run_resumes_where_it_stopped(shapes_run):
    _, run, _, after_one = shapes_run
    assert after_one["epoch"] == 1 and len(after_one["history"]) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["epochs_done"] == 2
    history = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]
    # The first epoch's row is the one written before the stop, not a re-run of it.
    assert float(history[1].split(",")[2]) == pytest.approx(after_one["history"][0]["loss"])
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch-002"


def test_a_second_stage_starts_from_a_finished_runs_weights(shapes_run):
    """`init_from`: every layer and the head start from the first run's model.keras. At a zero learning
    rate the trainable weights come out as they went in; from ImageNet (no init_from) they do not."""
    import keras

    from training.finetune import main as finetune_main

    tmp, run, _, _ = shapes_run
    first = keras.saving.load_model(run / "model.keras", compile=False)
    base = [f"data_dir={tmp / 'data'}", f"manifest={tmp / 'manifest.csv'}", "limit_per_class=0", "sizes=64:1",
            "lr=0.0", "weight_decay=0.0", "checkpoint_steps=0"]
    config = ["--config", str(ROOT / "training/configs/tiny_ft.toml")]
    finetune_main(config + base + [f"run_dir={tmp / 'stage2'}", f"init_from={run / 'model.keras'}"])
    finetune_main(config + base + [f"run_dir={tmp / 'fresh'}"])
    second = keras.saving.load_model(tmp / "stage2" / "model.keras", compile=False)
    fresh = keras.saving.load_model(tmp / "fresh" / "model.keras", compile=False)
    # The classifier's last Dense, trained in the first run (layer names may differ between builds).
    kernel = {name: model.layers[-1].get_weights()[0] for name, model in
              (("first", first), ("second", second), ("fresh", fresh))}
    np.testing.assert_array_equal(kernel["second"], kernel["first"])
    assert not np.array_equal(kernel["fresh"], kernel["first"])


def test_distillation_targets_are_the_teachers_probabilities_on_the_same_view(shapes_run):
    """`teacher` + `distill_weight`: the exported classifier's probabilities on each (mixed, smaller)
    view replace that share of the target, and the run records which teacher file it learned from."""
    from training.config import TrainConfig
    from training.dataset import load_split
    from training.distill import Teacher
    from training.finetune import AugmentedBatches, class_weights
    from training.finetune import main as finetune_main

    tmp, run, repo, _ = shapes_run
    onnx = repo / "shapes_classifier" / "1" / "model.onnx"
    teacher = Teacher(onnx)
    items = load_split(run / "manifest.csv", str(tmp / "data"), 0, CLASSES)["train"]
    weights = class_weights(np.array([label for _, label in items]), 3, 0.5)
    made = {}
    for share in (0.0, 0.5, 1.0):
        cfg = TrainConfig(batch_size=8, workers=1, mix_prob=1.0, outlier_prob=0.0, distill_weight=share)
        made[share] = AugmentedBatches(items, 3, cfg, 64, 0, weights, teacher=teacher if share else None)[0]
    x, hard, _ = made[0.0]
    np.testing.assert_array_equal(made[1.0][0], x)  # the teacher changes targets, never the views
    np.testing.assert_allclose(made[1.0][1], teacher(x), atol=1e-5)
    np.testing.assert_allclose(made[0.5][1], (hard + made[1.0][1]) / 2, atol=1e-5)
    assert not np.allclose(made[1.0][1], hard)

    finetune_main(["--config", str(ROOT / "training/configs/tiny_ft.toml"), f"data_dir={tmp / 'data'}",
                   f"manifest={tmp / 'manifest.csv'}", f"run_dir={tmp / 'distilled'}", "limit_per_class=0",
                   "sizes=64:1", "checkpoint_steps=0", f"teacher={onnx}", "distill_weight=0.7"])
    summary = json.loads((tmp / "distilled" / "summary.json").read_text())
    assert summary["teacher_sha256"] == teacher.sha256 and summary["finished"]


def test_a_soup_is_the_mean_of_its_members_weights_and_exports_like_a_run(shapes_run):
    """`python -m training soup`: one network whose every weight is the members' mean, validated on
    the members' split, with its members named; `python -m export` takes it like any run. Members
    of different architectures are refused."""
    import keras

    from export.__main__ import main as export_main
    from training.finetune import main as finetune_main
    from training.soup import main as soup_main

    tmp, run, repo, _ = shapes_run
    finetune_main(["--config", str(ROOT / "training/configs/tiny_ft.toml"), f"data_dir={tmp / 'data'}",
                   f"manifest={tmp / 'manifest.csv'}", f"run_dir={tmp / 'sibling'}", "limit_per_class=0",
                   "sizes=64:1", "lr=0.003", "checkpoint_steps=0", f"init_from={run / 'model.keras'}"])
    summary = soup_main([str(run), str(tmp / "sibling"), "--run-dir", str(tmp / "soup")])
    members = [keras.saving.load_model(d / "model.keras", compile=False) for d in (run, tmp / "sibling")]
    soup = keras.saving.load_model(tmp / "soup" / "model.keras", compile=False)
    first, second, mean = (m.layers[-1].get_weights()[0] for m in (*members, soup))
    assert not np.allclose(first, second)
    np.testing.assert_allclose(mean, (first + second) / 2, rtol=1e-6)
    assert [m["run"] for m in summary["members"]] == [str(run), str(tmp / "sibling")]
    assert 0 <= summary["best_val_accuracy"] <= 1 and summary["command"] == "soup"
    assert export_main([str(tmp / "soup"), "--name", "souped", "--repo", str(tmp / "soup_repo"), "--nonwaste", "0"]) == 0
    assert (tmp / "soup_repo" / "souped_classifier" / "1" / "model.onnx").is_file()

    (tmp / "other").mkdir()
    for name in ("model.keras", "manifest.csv"):
        (tmp / "other" / name).write_bytes((tmp / "sibling" / name).read_bytes())
    config = json.loads((tmp / "sibling" / "config.json").read_text())
    (tmp / "other" / "config.json").write_text(json.dumps({**config, "backbone": "efficientnet_lite2"}))
    with pytest.raises(ValueError, match="backbone"):
        soup_main([str(run), str(tmp / "other"), "--run-dir", str(tmp / "bad_soup")])


def test_the_server_answers_with_the_runs_own_classes(shapes_run):
    from server.launch import TritonServer
    from training.evaluate import predict
    from waste_client import Classifier

    tmp, _, repo, _ = shapes_run
    photos = sorted((tmp / "data").glob("*/*.jpg"))[::7]
    expected, _, _ = predict(repo / "shapes_classifier" / "1" / "model.onnx", [str(p) for p in photos])
    with TritonServer(repo) as server, Classifier(server.grpc_url, model="shapes") as clf:
        for photo, probs in zip(photos, expected):
            got = clf.classify(photo, top_k=3)
            assert got.label == CLASSES[int(probs.argmax())]
            assert sorted(label for label, _ in got.top_k) == sorted(CLASSES)


def test_a_class_without_bin_advice_gets_the_neutral_default():
    from app.logic import disposal_for, load_bins

    advice = disposal_for("triangle", load_bins())
    assert advice.bin and advice.advice and not advice.hazardous


def test_a_manifest_class_missing_from_the_configured_classes_is_named(tmp_path):
    from training.dataset import resolve_classes

    manifest = tmp_path / "m.csv"
    manifest.write_text("relpath,label,split,group_id,reason\na/1.jpg,circle,train,g1,\nb/2.jpg,star,val,g2,\n")
    assert resolve_classes("", manifest) == ("circle", "star")
    with pytest.raises(ValueError, match="star"):
        resolve_classes("circle,square", manifest)
