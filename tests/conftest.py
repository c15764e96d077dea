"""Shared server fixtures: `dev_server` (random-weight classifier `dev`) and `prod_server`."""
from __future__ import annotations

from pathlib import Path

import pytest

from contract import DEFAULT_MODEL, classifier_model
from export.model_repository import write_repository
from server.launch import TritonServer

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
PROD_MODEL = MODEL_REPOSITORY / classifier_model(DEFAULT_MODEL) / "1" / "model.onnx"


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory):
    """A running TritonServer with the shared models plus `dev_classifier`, `dev`, `dev_tta`.

    The classifier has random weights, so tests check mechanics (wiring, batching, errors), never
    accuracy. The repository is a temporary copy: the committed one is never written to.
    """
    repo = write_repository(tmp_path_factory.mktemp("dev_model_repository"), dev=["dev"])
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
