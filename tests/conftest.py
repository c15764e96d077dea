"""Shared server fixtures: `dev_server` (random-weight classifier `dev`) and `prod_server`."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from export.model_repository import write_dev_classifier, write_model_configs
from server.launch import TritonServer

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
PROD_MODEL = MODEL_REPOSITORY / "effnet_lite0_classifier" / "1" / "model.onnx"
#: Models of the committed repository every classifier's ensembles need.
SHARED_MODELS = ("preprocess", "tta_flip", "tta_mean")


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory):
    """A running TritonServer with the shared models plus `dev_classifier`, `dev`, `dev_tta`.

    The classifier has random weights, so tests check mechanics (wiring, batching, errors), never
    accuracy. The repository is a temporary copy: the committed one is never written to.
    """
    repo = tmp_path_factory.mktemp("dev_model_repository")
    for name in SHARED_MODELS:
        shutil.copytree(MODEL_REPOSITORY / name, repo / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    write_dev_classifier(repo, "dev")
    write_model_configs(repo, "dev")
    with TritonServer(repo) as server:
        yield server


@pytest.fixture(scope="session")
def prod_server():
    """The committed repository with the trained `effnet_lite0`; skipped until it is exported."""
    if not PROD_MODEL.is_file():
        pytest.skip(f"{PROD_MODEL.relative_to(REPO_ROOT)} missing: the trained classifier is not "
                    "exported yet (training writes it)")
    with TritonServer(MODEL_REPOSITORY) as server:
        yield server
