"""Train -> export -> serve -> classify on the bundled sample, in a couple of minutes on 2 cores."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from training.data_split import make_split

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "garbage12"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny model trained on the bundled sample, exported into a fresh repository."""
    from export.__main__ import main as export_main
    from export.model_repository import write_repository
    from training.train import main as train_main

    tmp = tmp_path_factory.mktemp("tiny")
    manifest = make_split(SAMPLES, seed=7, cache_path=None)
    manifest.save(tmp / "manifest.csv")
    run = tmp / "run"
    train_main(["--config", str(ROOT / "training/configs/tiny.toml"), f"data_dir={SAMPLES}",
                f"manifest={tmp / 'manifest.csv'}", "limit_per_class=0", f"run_dir={run}",
                f"cache_dir={tmp / 'cache'}", "head_epochs=3"])
    repo = write_repository(tmp / "repo")  # the shared models; the export adds the classifier
    assert export_main([str(run), "--name", "tiny", "--repo", str(repo), "--nonwaste", "12"]) == 0
    return tmp, run, repo


def test_split_keeps_duplicate_groups_together(tiny_run):
    tmp, run, _ = tiny_run
    rows = list(csv.DictReader(open(run / "manifest.csv")))
    sides: dict[str, set] = {}
    for row in rows:
        sides.setdefault(row["group_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert {r["split"] for r in rows} >= {"train", "val", "test"}
    assert (run / "manifest.csv").read_text() == (tmp / "manifest.csv").read_text()


def test_run_directory_has_what_a_run_promises(tiny_run):
    _, run, repo = tiny_run
    for name in ("config.json", "manifest.csv", "history.csv", "summary.json", "model.keras",
                 "training_curves.png", "model.onnx", "eval_fp32/metrics.json", "eval_fp32/confusion_plain.png"):
        assert (run / name).is_file(), name
    record = (repo / "tiny_classifier" / "1" / "export.json").read_text()
    assert '"sha256"' in record and '"parity_max_abs_diff"' in record


def test_export_never_overwrites_a_version(tiny_run):
    from export.__main__ import main as export_main
    from export.model_repository import write_repository

    _, run, repo = tiny_run
    before = (repo / "tiny_classifier" / "1" / "model.onnx").read_bytes()
    assert export_main([str(run), "--name", "tiny", "--repo", str(repo), "--nonwaste", "0"]) == 0
    assert (repo / "tiny_classifier" / "2" / "model.onnx").is_file()
    assert (repo / "tiny_classifier" / "1" / "model.onnx").read_bytes() == before


def test_evaluation_uses_the_servers_preprocessing_and_matches_the_server(tiny_run):
    from server.launch import TritonServer
    from training.evaluate import predict
    from training.preprocessing import IMAGING_PATH, imaging
    from waste_client import Classifier

    _, run, repo = tiny_run
    assert IMAGING_PATH == ROOT / "model_repository" / "preprocess" / "1" / "imaging.py"
    assert Path(imaging.__file__).resolve() == IMAGING_PATH
    images = sorted(SAMPLES.glob("*/*.jpg"))[::9]
    # The published file: the run's ONNX with the validation-fitted calibration appended.
    plain, flipped, errors = predict(repo / "tiny_classifier" / "1" / "model.onnx", [str(p) for p in images])
    assert not errors
    with TritonServer(repo) as server, Classifier(server.grpc_url, model="tiny") as clf:
        for path, expected, mirror in zip(images, plain, flipped):
            got = clf.classify(path, top_k=12)
            scores = dict(got.top_k)
            from training.labels import CLASSES
            served = np.array([scores[c] for c in CLASSES])
            assert np.abs(served - expected).max() < 1e-4  # the server prints 6 decimals
            assert got.label == CLASSES[int(expected.argmax())]
        with Classifier(server.grpc_url, model="tiny_tta") as tta:
            got = tta.classify(images[0], top_k=12)
            served = np.array([dict(got.top_k)[c] for c in CLASSES])
            assert np.abs(served - (plain[0] + flipped[0]) / 2).max() < 1e-4
