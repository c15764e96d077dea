"""Publish a classifier version to a Hugging Face Hub repository, and pull one into the model repository.

The hub repository holds the Triton model directory as it is, so a pull is a copy:

    <name>_classifier/config.pbtxt
    <name>_classifier/labels.txt
    <name>_classifier/<version>/model.onnx
    README.md                                  (a short model card)

    .venv/bin/python -m export.hub publish effnet_lite0 --version 1 --repo-id ORG/waste-effnet-lite0
    .venv/bin/python -m export.hub pull ORG/waste-effnet-lite0 --name effnet_lite0

A pull also writes the `<name>` and `<name>_tta` ensembles when the repository lacks them, so the
pulled classifier is servable at once. Everything up to the network call (what is sent, where a pulled
model lands) is plain code tested offline; every failure to reach the hub becomes one `HubError` with a
message saying so and that nothing local was changed. The token comes from `HF_TOKEN` or
`huggingface-cli login`, as huggingface_hub reads it.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

from export.model_repository import classifier_model_name, next_version, publish_version, write_ensemble_configs

T = TypeVar("T")
MODEL_FILE = "model.onnx"
DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


class HubError(RuntimeError):
    """Publishing or pulling failed; the message says why and what was (not) changed."""


@dataclass(frozen=True)
class Upload:
    """One file of a publish: where it is here and where it goes in the hub repository."""

    local: Path
    path_in_repo: str


def publish_plan(repository, name: str, version: int | str) -> List[Upload]:
    """The files a publish of ``<name>_classifier`` version ``version`` uploads.

    Parameters
    ----------
    repository : path
        The Triton model repository.
    name : str
        Classifier name without suffix (``effnet_lite0``).
    version : int or str

    Returns
    -------
    list of Upload

    Raises
    ------
    HubError
        The model directory, its config, labels or the version's ONNX file is missing.
    """
    model = classifier_model_name(name)
    model_dir = Path(repository) / model
    version = str(version)
    if not version.isdigit():
        raise HubError(f"version must be a number, not {version!r}")
    required = [model_dir / "config.pbtxt", model_dir / "labels.txt", model_dir / version / MODEL_FILE]
    missing = [str(p) for p in required if not p.is_file()]
    if missing:
        raise HubError(f"cannot publish {model} version {version}: missing {', '.join(missing)}")
    plan = [Upload(p, p.relative_to(model_dir.parent).as_posix()) for p in required]
    # Anything else of the version (external-data tensors of a large ONNX, a quantized sibling).
    for extra in sorted((model_dir / version).rglob("*")):
        if extra.is_file() and extra.name != MODEL_FILE and "__pycache__" not in extra.parts:
            plan.append(Upload(extra, extra.relative_to(model_dir.parent).as_posix()))
    return plan


def model_card(name: str, version: int | str, labels: List[str]) -> str:
    """README.md of the hub repository."""
    model = classifier_model_name(name)
    return (f"---\nlibrary_name: onnx\ntags: [image-classification, triton, waste-sorting]\n---\n"
            f"# {model}\n\nWaste-photo classifier ({len(labels)} classes) as a Triton model directory: "
            f"copy `{model}/` into a model repository (or `python -m export.hub pull`).\n\n"
            f"- input `classifier_input` UINT8 [224, 224, 3] RGB, letterboxed (pad 114), "
            f"normalisation inside the graph\n- output `classifier_output` FP32 [{len(labels)}] "
            f"softmax\n- latest published version: {version}\n- classes: {', '.join(labels)}\n")


def publish(repository, name: str, version: int | str, repo_id: str, *, token: Optional[str] = None,
            revision: Optional[str] = None, private: bool = True, api=None) -> str:
    """Upload ``<name>_classifier`` version ``version`` to the hub repository ``repo_id``.

    One commit holds the config, labels, the version directory and the model card; the repository
    is created (private by default) when it does not exist.

    Parameters
    ----------
    repository : path
    name : str
    version : int or str
    repo_id : str
        ``"org/name"``.
    token, revision : str, optional
    private : bool
    api : huggingface_hub.HfApi, optional
        For tests and other endpoints; default ``HfApi()``.

    Returns
    -------
    str
        The commit URL.

    Raises
    ------
    HubError
        Missing files, or the hub cannot be reached or refuses.
    """
    plan = publish_plan(repository, name, version)
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi()
    labels = (Path(repository) / classifier_model_name(name) / "labels.txt").read_text().split()
    operations = [CommitOperationAdd(path_in_repo=u.path_in_repo, path_or_fileobj=str(u.local))
                  for u in plan]
    operations.append(CommitOperationAdd(path_in_repo="README.md",
                                         path_or_fileobj=model_card(name, version, labels).encode()))
    what = f"publish {classifier_model_name(name)} v{version} to {repo_id}"
    _network(what, lambda: api.create_repo(repo_id, token=token, private=private, exist_ok=True))
    info = _network(what, lambda: api.create_commit(
        repo_id, operations, commit_message=f"{classifier_model_name(name)} version {version}",
        token=token, revision=revision))
    return str(getattr(info, "commit_url", info))


def pull(repo_id: str, name: str, repository=DEFAULT_REPOSITORY, *, version: Optional[int] = None,
         as_version: Optional[int] = None, revision: Optional[str] = None,
         token: Optional[str] = None, download: Optional[Callable[..., str]] = None) -> Path:
    """Download ``<name>_classifier`` from the hub and install it into ``repository``.

    Parameters
    ----------
    repo_id : str
    name : str
    repository : path
    version : int, optional
        The hub's version to take; default its highest.
    as_version : int, optional
        Local version number; default the hub's number if free, else the next free one.
    revision, token : str, optional
    download : callable, optional
        ``huggingface_hub.snapshot_download`` (replaceable for tests).

    Returns
    -------
    Path
        The installed version directory.

    Raises
    ------
    HubError
        The hub cannot be reached or has no such model; the repository is then unchanged.
    """
    if download is None:
        from huggingface_hub import snapshot_download as download
    model = classifier_model_name(name)
    with tempfile.TemporaryDirectory(prefix="hub-pull-") as scratch:
        snapshot = _network(f"pull {model} from {repo_id}", lambda: download(
            repo_id, revision=revision, token=token, local_dir=scratch,
            allow_patterns=[f"{model}/*", f"{model}/**"]))
        return install_snapshot(snapshot, name, repository, version=version, as_version=as_version)


def install_snapshot(snapshot, name: str, repository, *, version: Optional[int] = None,
                     as_version: Optional[int] = None) -> Path:
    """Copy ``<name>_classifier`` from a downloaded hub snapshot into the model repository.

    Writes config and labels from the snapshot (they describe the pulled weights), copies the
    version directory, and writes the ensembles when missing. Never overwrites a version directory.

    Returns
    -------
    Path
        The installed version directory.

    Raises
    ------
    HubError
        The snapshot lacks the model or the version, or the local version exists already.
    """
    model = classifier_model_name(name)
    source = Path(snapshot) / model
    versions = sorted(int(p.name) for p in source.iterdir() if p.is_dir() and p.name.isdigit()) \
        if source.is_dir() else []
    if not versions:
        raise HubError(f"the hub snapshot has no {model}/<version>/ directory")
    version = versions[-1] if version is None else int(version)
    if version not in versions:
        raise HubError(f"the hub has {model} versions {versions}, not {version}")
    for required in ("config.pbtxt", "labels.txt", f"{version}/{MODEL_FILE}"):
        if not (source / required).is_file():
            raise HubError(f"the hub snapshot lacks {model}/{required}")
    target_dir = Path(repository) / model
    if as_version is None:
        as_version = version if not (target_dir / str(version)).exists() else next_version(target_dir)
    if (target_dir / str(as_version)).exists():
        raise HubError(f"{target_dir / str(as_version)} exists already; choose another --as-version")
    files = {p.name: p for p in (source / str(version)).iterdir() if p.is_file()}
    # Published atomically: a server polling the repository never sees a half-written version.
    target = publish_version(target_dir, files, version=as_version)
    for name_ in ("config.pbtxt", "labels.txt"):
        shutil.copy2(source / name_, target_dir / name_)
    if not (Path(repository) / name / "config.pbtxt").is_file() or \
            not (Path(repository) / f"{name}_tta" / "config.pbtxt").is_file():
        write_ensemble_configs(repository, name)
    return target


def _endpoint() -> str:
    try:
        from huggingface_hub import constants
        return constants.ENDPOINT
    except Exception:  # noqa: BLE001
        return "https://huggingface.co"


def _network(what: str, call: Callable[[], T]) -> T:
    """Run one hub call; any failure becomes a HubError that says whether the hub was reachable."""
    try:
        return call()
    except HubError:
        raise
    except Exception as exc:  # noqa: BLE001 - huggingface_hub, httpx and OS errors alike
        raise HubError(_describe(what, exc)) from exc


def _describe(what: str, exc: BaseException) -> str:
    from huggingface_hub import errors

    endpoint = _endpoint()
    unchanged = "nothing local was changed"
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    from huggingface_hub import constants

    if isinstance(exc, errors.OfflineModeIsEnabled) or getattr(constants, "HF_HUB_OFFLINE", False):
        return (f"cannot {what}: offline mode is on (HF_HUB_OFFLINE=1); unset it on a machine that "
                f"can reach {endpoint}; {unchanged}")
    if status in (401, 403):
        return (f"cannot {what}: the hub refused the credentials (HTTP {status}); set HF_TOKEN or run "
                f"`huggingface-cli login` with a token that can write there; {unchanged}")
    if isinstance(exc, (errors.RepositoryNotFoundError, errors.RevisionNotFoundError)) or status == 404:
        return f"cannot {what}: no such repository or revision on {endpoint} ({exc}); {unchanged}"
    if status is not None:
        return f"cannot {what}: the hub answered HTTP {status}: {exc}; {unchanged}"
    # Connection refused, DNS failure, timeout, or no cached copy when offline: the hub is unreachable.
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (f"cannot {what}: the Hugging Face Hub at {endpoint} is unreachable from this machine "
            f"({type(exc).__name__}: {reason}). Check the network, a proxy or HF_ENDPOINT, or copy "
            f"the model directory by hand; {unchanged}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.hub", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="upload <name>_classifier/<version> to a hub repository")
    pub.add_argument("name")
    pub.add_argument("--version", required=True)
    pub.add_argument("--repo-id", required=True)
    pub.add_argument("--repository", default=str(DEFAULT_REPOSITORY))
    pub.add_argument("--revision")
    pub.add_argument("--public", action="store_true", help="create the hub repository public")
    get = sub.add_parser("pull", help="download <name>_classifier into the model repository")
    get.add_argument("repo_id")
    get.add_argument("--name", required=True)
    get.add_argument("--version", type=int)
    get.add_argument("--as-version", type=int)
    get.add_argument("--repository", default=str(DEFAULT_REPOSITORY))
    get.add_argument("--revision")
    args = parser.parse_args(argv)
    try:
        if args.command == "publish":
            url = publish(args.repository, args.name, args.version, args.repo_id,
                          revision=args.revision, private=not args.public)
            print(f"published: {url}")
        else:
            path = pull(args.repo_id, args.name, args.repository, version=args.version,
                        as_version=args.as_version, revision=args.revision)
            print(f"installed: {path}")
    except HubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
