"""export.hub: everything up to the network call, and the message when the hub cannot be reached."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")

from export import hub  # noqa: E402
from export.model_repository import write_dev_classifier, write_model_configs  # noqa: E402


@pytest.fixture
def repository(tmp_path):
    repo = tmp_path / "repo"
    write_dev_classifier(repo, "dev")
    write_model_configs(repo, "dev")
    return repo


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_plan_is_the_triton_model_directory(repository):
    plan = hub.publish_plan(repository, "dev", 1)
    assert [u.path_in_repo for u in plan] == [
        "dev_classifier/config.pbtxt", "dev_classifier/labels.txt", "dev_classifier/1/model.onnx"]
    assert all(u.local.is_file() for u in plan)


@pytest.mark.parametrize("version", [2, "latest"])
def test_plan_refuses_a_missing_or_bad_version(repository, version):
    with pytest.raises(hub.HubError, match="missing|number"):
        hub.publish_plan(repository, "dev", version)


class RecordingApi:
    """Stands in for HfApi: records what would be sent."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, [op.path_in_repo for op in operations], kwargs))
        return type("Info", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/abc"})()


def test_publish_sends_one_commit_with_model_card(repository):
    api = RecordingApi()
    url = hub.publish(repository, "dev", 1, "org/waste-dev", api=api)
    assert url.endswith("/commit/abc")
    (_, repo_id, create), (_, _, paths, commit) = api.calls
    assert repo_id == "org/waste-dev" and create["private"] and create["exist_ok"]
    assert paths == ["dev_classifier/config.pbtxt", "dev_classifier/labels.txt",
                     "dev_classifier/1/model.onnx", "README.md"]
    assert "version 1" in commit["commit_message"]


def test_publish_offline_says_the_hub_is_unreachable(repository):
    from huggingface_hub import HfApi

    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(hub.HubError) as info:
        hub.publish(repository, "dev", 1, "org/waste-dev", api=HfApi(endpoint=endpoint))
    message = str(info.value)
    assert "unreachable" in message and "nothing local was changed" in message
    assert "Traceback" not in message


def test_pull_offline_leaves_the_repository_unchanged(repository, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    before = sorted(p.relative_to(repository) for p in repository.rglob("*"))

    def download(repo_id, **kwargs):
        from huggingface_hub import snapshot_download
        return snapshot_download(repo_id, endpoint=f"http://127.0.0.1:{closed_port()}", **kwargs)

    with pytest.raises(hub.HubError, match="unreachable|offline"):
        hub.pull("org/waste-dev", "dev", repository, download=download)
    assert sorted(p.relative_to(repository) for p in repository.rglob("*")) == before


def fake_snapshot(tmp_path, repository, versions=(1,)) -> Path:
    """A directory laid out like a downloaded hub snapshot of dev_classifier."""
    snap = tmp_path / "snapshot" / "dev_classifier"
    source = repository / "dev_classifier"
    snap.mkdir(parents=True)
    for name in ("config.pbtxt", "labels.txt"):
        (snap / name).write_bytes((source / name).read_bytes())
    for v in versions:
        (snap / str(v)).mkdir()
        (snap / str(v) / "model.onnx").write_bytes((source / "1" / "model.onnx").read_bytes())
    return snap.parent


def test_pull_installs_into_a_fresh_repository_with_ensembles(tmp_path, repository):
    snapshot = fake_snapshot(tmp_path, repository, versions=(1, 3))
    fresh = tmp_path / "fresh"

    def download(repo_id, local_dir, **kwargs):
        assert kwargs["allow_patterns"][0] == "dev_classifier/*"
        return str(snapshot)

    target = hub.pull("org/waste-dev", "dev", fresh, download=download)
    assert target == fresh / "dev_classifier" / "3"
    assert (target / "model.onnx").is_file()
    assert (fresh / "dev_classifier" / "labels.txt").is_file()
    assert (fresh / "dev" / "config.pbtxt").is_file() and (fresh / "dev_tta" / "config.pbtxt").is_file()


def test_install_never_overwrites_a_version(tmp_path, repository):
    snapshot = fake_snapshot(tmp_path, repository)
    # Version 1 exists locally: the pulled one becomes the next free number.
    assert hub.install_snapshot(snapshot, "dev", repository) == repository / "dev_classifier" / "2"
    with pytest.raises(hub.HubError, match="exists already"):
        hub.install_snapshot(snapshot, "dev", repository, as_version=1)
    with pytest.raises(hub.HubError, match="not 7"):
        hub.install_snapshot(snapshot, "dev", repository, version=7)


def test_cli_reports_offline_error_as_one_line(repository, monkeypatch, capsys):
    monkeypatch.setattr(hub, "publish", lambda *a, **k: (_ for _ in ()).throw(
        hub.HubError("cannot publish: the Hugging Face Hub is unreachable")))
    assert hub.main(["publish", "dev", "--version", "1", "--repo-id", "o/r",
                     "--repository", str(repository)]) == 1
    assert capsys.readouterr().err.startswith("error: cannot publish")
