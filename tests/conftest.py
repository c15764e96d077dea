"""Shared fixtures: servers (`dev_server`, `unsure_server`, `prod_server`, `s3_server`) and `ctrl_c_popen`."""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from contract import DEFAULT_MODEL, UNSURE_THRESHOLD, classifier_model
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


#: The "not sure" threshold recorded for `unsure_server`'s dev classifier. Its top scores on
#: samples/garbage12 run from 0.15 to 0.79 with none between 0.49 and 0.57, so photos fall on both
#: sides of 0.5 and a rounding of the scores cannot move one across.
DEV_UNSURE_THRESHOLD = 0.5


@pytest.fixture(scope="session")
def unsure_server(tmp_path_factory):
    """A running TritonServer whose `dev` (the same random weights as `dev_server`'s) has an export
    record with `unsure_threshold` DEV_UNSURE_THRESHOLD, written by the one writer like a real export's."""
    repo = write_repository(tmp_path_factory.mktemp("unsure_model_repository"), dev=["dev"],
                            records={"dev": {UNSURE_THRESHOLD: DEV_UNSURE_THRESHOLD}})
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's standalone server, its own process on a free port).

    Yields the environment a client needs to reach it: ``AWS_ENDPOINT_URL`` and test
    credentials. Tests put it in ``os.environ`` (monkeypatch) or a subprocess's env; boto3,
    s3fs and the scorer then read ``s3://`` from it like from any S3 store.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
        yield {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ignore_sigint(signum, frame):
    pass


def popen_reachable_by_ctrl_c(*args, **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` whose child starts with SIGINT at its default, as at a terminal.

    A shell without job control (CI scripts, ``make test &``) starts background jobs with SIGINT
    ignored, and an ignored signal stays ignored across fork and exec: Python then installs no
    KeyboardInterrupt handler and the child never sees the test's Ctrl-C. A handler, unlike
    SIG_IGN, is reset to SIG_DFL by exec, so one that still ignores is installed in this process
    for the moment of the spawn (not ``preexec_fn``: unsafe with the threads a test process has).
    """
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        return subprocess.Popen(*args, **kwargs)
    signal.signal(signal.SIGINT, _ignore_sigint)
    try:
        return subprocess.Popen(*args, **kwargs)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture
def ctrl_c_popen():
    """:func:`popen_reachable_by_ctrl_c`, for tests that send a child SIGINT (a Ctrl-C)."""
    return popen_reachable_by_ctrl_c
