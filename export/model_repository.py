"""The one writer of Triton model repositories (docs/CONTRACT.md, docs/ARCHITECTURE.md).

Every servable repository is made here: the committed `model_repository/` (its configs), the
tests' dev repositories, the app's dev repository (`make dev-repository`), the benchmark's and
the load test's variants. Config text comes from `export.model_configs` with keyword options;
nothing edits an existing `config.pbtxt`.

For a classifier `name` a repository holds:

- `<name>_classifier/config.pbtxt` + `labels.txt` + `<version>/model.onnx` (+ `export.json`)
- `<name>/config.pbtxt` + `labels.txt` + `1/`       ensemble preprocess -> classifier
- `<name>_tta/config.pbtxt` + `labels.txt` + `1/`   ensemble preprocess -> (image, tta_flip) -> classifier x2 -> tta_mean

The ensembles' configs carry the `unsure_threshold` of the export record of the classifier version
they serve (the highest), so the configs are a function of the version directories too: publishing
a version or recording a threshold rewrites them (`refresh_ensemble_configs`).

plus the shared models `preprocess`, `tta_flip`, `tta_mean`, whose code (`1/*.py`) is copied from
the committed repository. A version directory is published atomically (`publish_version`):
written beside the model under a name Triton ignores, then renamed into place.

    python -m export.model_repository configs                 # rewrite the committed repository's configs
    python -m export.model_repository dev DEST [--name dev]   # a repository with a random-weight classifier
    python -m export.model_repository latest NAME             # the model file Triton serves for NAME
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from contract import (CLASSES, CLASSIFIER_INPUT, CLASSIFIER_OUTPUT, EXPORT_RECORD, INPUT_SIZE,
                      LABELS_FILE, PREPROCESS_MODEL, SHARED_MODELS, TTA_FLIP_MODEL, TTA_MEAN_MODEL,
                      UNSURE_THRESHOLD, classifier_model, tta_model)
from contract import file_sha256 as sha256
from export.model_configs import (BACKENDS, CLASSIFIER, Serving, check_name, classifier_config, ensemble_config,
                                  preprocess_config, tta_flip_config, tta_mean_config)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The committed repository: source of the shared models' code.
COMMITTED = REPO_ROOT / "model_repository"
MODEL_FILE = "model.onnx"
RECORD_FILE = EXPORT_RECORD

__all__ = [
    "COMMITTED", "MODEL_FILE", "RECORD_FILE", "Serving", "build_dev_classifier", "classifier_config",
    "classifier_model_name", "ensemble_config", "latest_version", "next_version", "publish_version",
    "refresh_ensemble_configs", "served_unsure_threshold", "sha256", "write_classifier_config",
    "write_dev_classifier", "write_ensemble_configs", "write_labels", "write_model_configs",
    "write_repository", "write_shared_models",
]


def classifier_model_name(name: str) -> str:
    """`effnet_lite0` -> `effnet_lite0_classifier` (``contract.classifier_model``)."""
    return classifier_model(name)


def write_labels(model_dir, classes=CLASSES) -> Path:
    """Write `labels.txt` (one class per line, index order) into `model_dir`; return its path."""
    path = Path(model_dir) / LABELS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{label}\n" for label in classes))
    return path


def _write_config(model_dir: Path, text: str, labels: bool, classes=CLASSES) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text)
    if labels:
        write_labels(model_dir, classes)
    return model_dir


def write_classifier_config(repo_dir, name: str, *, classes=CLASSES, **options) -> Path:
    """Write `<name>_classifier/config.pbtxt` and `labels.txt`; return the model directory.

    `classes` are the model's outputs in order (a run's own classes); `options` are `Serving`
    fields (instances, threads, batching, queue, accelerator, cache, warmup).
    """
    return _write_config(Path(repo_dir) / classifier_model(name),
                         classifier_config(name, num_classes=len(classes), **options), True, classes)


def served_unsure_threshold(repo_dir, name: str) -> tuple[float, str] | None:
    """The "not sure" threshold of the classifier version `name`'s ensembles serve, and where it is recorded.

    The ensembles' steps ask for no particular version (``model_version: -1``), so Triton runs the
    highest version of `<name>_classifier`: the threshold is the `unsure_threshold` of that
    version's `export.json`.

    Parameters
    ----------
    repo_dir : path
    name : str
        The classifier's ensemble name.

    Returns
    -------
    (float, str) or None
        The threshold and the record's path inside the repository
        (``"effnet_lite0_classifier/2/export.json"``); None when there is no version yet, the
        version has no record, or the record no threshold.
    """
    try:
        version_dir = latest_version(Path(repo_dir) / classifier_model(name)).parent
    except FileNotFoundError:
        return None
    record = version_dir / RECORD_FILE
    if not record.is_file():
        return None
    threshold = json.loads(record.read_text()).get(UNSURE_THRESHOLD)
    if threshold is None:
        return None
    return float(threshold), f"{classifier_model(name)}/{version_dir.name}/{RECORD_FILE}"


def write_ensemble_configs(repo_dir, name: str, *, response_cache: bool = True, classes=CLASSES) -> list[Path]:
    """Write the ensembles `<name>` and `<name>_tta` (config, labels of `classes`, empty `1/`); return their dirs.

    Their configs carry the served classifier version's threshold (`served_unsure_threshold`).
    """
    dirs = []
    unsure = served_unsure_threshold(repo_dir, name)
    for tta in (False, True):
        model_dir = Path(repo_dir) / (tta_model(name) if tta else name)
        # Triton needs a version directory even for an ensemble; `.gitkeep` lets git carry it.
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        (model_dir / "1" / ".gitkeep").touch()
        dirs.append(_write_config(model_dir, ensemble_config(name, tta=tta, response_cache=response_cache,
                                                             num_classes=len(classes), unsure=unsure),
                                  True, classes))
    return dirs


def refresh_ensemble_configs(repo_dir, name: str) -> list[Path]:
    """Rewrite `name`'s ensemble configs after its served version changed (published, or given a threshold).

    The classes are kept from the classifier's `labels.txt` (a run's own classes stay).

    Returns
    -------
    list of Path
        The two ensembles' directories.
    """
    labels = Path(repo_dir) / classifier_model(name) / LABELS_FILE
    classes = tuple(labels.read_text().split()) if labels.is_file() else CLASSES
    return write_ensemble_configs(repo_dir, name, classes=classes)


def write_model_configs(repo_dir, name: str, *, ensemble: Mapping | None = None, classes=CLASSES,
                        **classifier_options) -> list[Path]:
    """Classifier config + both ensembles for `name`: everything except the ONNX file.

    Parameters
    ----------
    repo_dir : path
        The repository.
    name : str
        The classifier's ensemble name.
    ensemble : mapping, optional
        Options of the ensembles (``response_cache``).
    classes : sequence of str
        The model's outputs in order, written to every `labels.txt` (default: the contract's 12 bins).
    **classifier_options
        `Serving` fields for the classifier.

    Returns
    -------
    list of Path
        The classifier's and the two ensembles' directories.
    """
    return [write_classifier_config(repo_dir, name, classes=classes, **classifier_options),
            *write_ensemble_configs(repo_dir, name, classes=classes, **dict(ensemble or {}))]


def write_shared_models(repo_dir, *, source=COMMITTED, preprocess: Mapping | None = None,
                        tta_flip: Mapping | None = None, tta_mean: Mapping | None = None,
                        classes=CLASSES) -> list[Path]:
    """The shared models in `repo_dir`: code copied from `source` (unless the same), configs written.

    Parameters
    ----------
    repo_dir : path
        The repository.
    source : path
        Repository holding `preprocess/1/*.py`, `tta_flip/1/model.py`, `tta_mean/1/model.py`.
    preprocess, tta_flip, tta_mean : mapping, optional
        `Serving` fields of each.
    classes : sequence of str
        The classes of the repository's classifiers: `tta_mean` averages vectors of this length.

    Returns
    -------
    list of Path
        The three model directories.
    """
    repo_dir, source = Path(repo_dir), Path(source)
    writers = {PREPROCESS_MODEL: (preprocess_config, preprocess, False),
               TTA_FLIP_MODEL: (tta_flip_config, tta_flip, False),
               TTA_MEAN_MODEL: (tta_mean_config, {"num_classes": len(classes), **dict(tta_mean or {})}, True)}
    dirs = []
    for name in SHARED_MODELS:
        write, options, labels = writers[name]
        if repo_dir.resolve() != source.resolve():
            shutil.copytree(source / name / "1", repo_dir / name / "1", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        dirs.append(_write_config(repo_dir / name, write(**dict(options or {})), labels, classes))
    return dirs


def next_version(model_dir) -> int:
    """Next free numeric version of a Triton model directory (1 if it has none yet)."""
    model_dir = Path(model_dir)
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] \
        if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def latest_version(model_dir) -> Path:
    """The model file Triton serves by default from `model_dir`: the highest numeric version's."""
    model_dir = Path(model_dir)
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] \
        if model_dir.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"{model_dir} has no version directory")
    return model_dir / str(max(versions)) / MODEL_FILE


def publish_version(model_dir, files: Mapping[str, object], version: int | None = None,
                    record: Mapping | None = None) -> Path:
    """Publish a new version directory of a model atomically; return it.

    The files are written into a staging directory beside the versions (a name Triton ignores,
    starting with '.'), then renamed to `<version>`: a server polling the repository sees either
    no version or the complete one, never a half-copied model file. An existing version is never
    overwritten.

    Parameters
    ----------
    model_dir : path
        `<repo>/<model>`.
    files : mapping
        File name in the version directory -> source path (copied) or bytes (written).
    version : int, optional
        The version number; default the next free one (retried if another writer takes it first).
    record : mapping, optional
        Written as `export.json`, with ``version``, ``sha256`` and ``bytes`` of `model.onnx` added.

    Returns
    -------
    Path
        The published version directory.

    Raises
    ------
    FileExistsError
        `version` was given and exists already.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        for file_name, content in files.items():
            target = staging / file_name
            if isinstance(content, (bytes, bytearray)):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        for _ in range(100):
            number = next_version(model_dir) if version is None else int(version)
            if record is not None:
                model = staging / MODEL_FILE
                data = {**record, "version": number}
                if model.is_file():
                    data.update(sha256=sha256(model), bytes=model.stat().st_size)
                (staging / RECORD_FILE).write_text(json.dumps(data, indent=2) + "\n")
            _fsync_tree(staging)
            target = model_dir / str(number)
            if version is not None and target.exists():
                raise FileExistsError(f"{target} exists already; versions are never overwritten")
            try:
                # rename(2) of a directory onto a missing name is atomic; onto an existing
                # non-empty one it fails, so a version is never replaced.
                os.rename(staging, target)
            except OSError:
                if not target.exists():
                    raise
                if version is not None:
                    raise FileExistsError(f"{target} exists already; versions are never overwritten") from None
                continue  # another writer took that number first: try the next one
            logger.info("published %s", target)
            return target
        raise RuntimeError(f"could not find a free version in {model_dir}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def write_repository(dest, classifiers: Mapping[str, object] | None = None, *, dev: Iterable[str] = (),
                     source=COMMITTED, classifier: Mapping | None = None, ensemble: Mapping | None = None,
                     preprocess: Mapping | None = None, tta_flip: Mapping | None = None,
                     tta_mean: Mapping | None = None, common: Mapping | None = None,
                     records: Mapping[str, Mapping] | None = None) -> Path:
    """Write a complete servable repository into `dest`; return `dest`.

    Parameters
    ----------
    dest : path
        Directory to fill (created if missing; its other content is left alone).
    classifiers : mapping, optional
        Ensemble name -> ONNX file served as version 1 of `<name>_classifier`.
    dev : iterable of str
        Names served by a random-weight classifier (`build_dev_classifier`), for tests and demos.
    source : path
        Repository the shared models' code is copied from.
    classifier, ensemble, preprocess, tta_flip, tta_mean : mapping, optional
        `Serving` options per kind of model (the ensembles take only ``response_cache``).
    common : mapping, optional
        Options applied to every model that has them, under the per-kind ones
        (``{"max_queue_size": 8}``, ``{"batching": False}``, ``{"response_cache": True}``).
    records : mapping, optional
        Ensemble name -> export record written as `export.json` of its version 1, e.g.
        ``{"dev": {"unsure_threshold": 0.5}}``: a dev model with a "not sure" threshold, which its
        ensembles' configs then carry like a real export's.

    Returns
    -------
    Path
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    common = dict(common or {})

    def merged(options, accepts_all=True, names=()):
        base = common if accepts_all else {k: v for k, v in common.items() if k in names}
        return {**base, **dict(options or {})}

    # `unsure` comes from the version's export record, never from an option.
    ensemble_names = set(inspect.signature(ensemble_config).parameters) - {"name", "tta", "unsure"}
    write_shared_models(dest, source=source, preprocess=merged(preprocess), tta_flip=merged(tta_flip),
                        tta_mean=merged(tta_mean))
    models = dict(classifiers or {})
    for name in dev:
        check_name(name)
        models[name] = None
    unknown = sorted(set(records or {}) - set(models))
    if unknown:
        raise ValueError(f"records for {unknown}, which this repository does not serve")
    for name, onnx_path in models.items():
        content = build_dev_classifier().SerializeToString() if onnx_path is None else Path(onnx_path)
        record = (records or {}).get(name)
        publish_version(dest / classifier_model(name), {MODEL_FILE: content}, version=1,
                        record=None if record is None else dict(record))
        write_model_configs(dest, name, ensemble=merged(ensemble, False, ensemble_names), **merged(classifier))
    return dest


def build_dev_classifier(seed: int = 0, num_classes: int = len(CLASSES)):
    """A tiny random-weight ONNX model with the contract's classifier I/O.

    uint8 [N,224,224,3] -> cast, ImageNet normalisation (in-graph, like the real export) ->
    NCHW -> 28x28 average pool (8x8x3 features) -> dense -> softmax [N, num_classes].
    The pooled grid keeps spatial layout, so a flipped image gives different probabilities and
    the TTA path is really exercised.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    features = 3 * (INPUT_SIZE // 28) ** 2
    initializers = [
        numpy_helper.from_array(np.array([0.485, 0.456, 0.406], np.float32) * 255, "mean"),
        numpy_helper.from_array(1 / (np.array([0.229, 0.224, 0.225], np.float32) * 255), "inv_std"),
        numpy_helper.from_array(np.array([-1, features], np.int64), "flat_shape"),
        numpy_helper.from_array(rng.normal(0, 0.05, (features, num_classes)).astype(np.float32), "weight"),
        numpy_helper.from_array(rng.normal(0, 0.1, (num_classes,)).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Cast", [CLASSIFIER_INPUT], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["x_float", "mean"], ["x_centered"]),
        helper.make_node("Mul", ["x_centered", "inv_std"], ["x_norm"]),
        helper.make_node("Transpose", ["x_norm"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["x_nchw"], ["pooled"], kernel_shape=[28, 28], strides=[28, 28]),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weight"], ["logits_nobias"]),
        helper.make_node("Add", ["logits_nobias", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [CLASSIFIER_OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "dev_classifier",
        [helper.make_tensor_value_info(CLASSIFIER_INPUT, TensorProto.UINT8, ["N", INPUT_SIZE, INPUT_SIZE, 3])],
        [helper.make_tensor_value_info(CLASSIFIER_OUTPUT, TensorProto.FLOAT, ["N", num_classes])],
        initializers,
    )
    # Opset 13 / IR 8: old enough for every onnxruntime a Triton container ships since 2021.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="waste-export-dev")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_dev_classifier(repo_dir, name: str, version: int = 1, seed: int = 0) -> Path:
    """Write a random-weight `<name>_classifier/<version>/model.onnx`; return its path.

    Only the ONNX file, written in place (an existing file is replaced: fault tests use that to
    swap a model under its record); `write_repository(dest, dev=[name])` makes a whole servable
    repository, publishing the version atomically.
    """
    check_name(name)
    path = Path(repo_dir) / classifier_model(name) / str(version) / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_dev_classifier(seed).SerializeToString())
    return path


def committed_classifiers(repo_dir=COMMITTED) -> list[str]:
    """Names of the classifiers in a repository (`<name>_classifier` directories), sorted."""
    suffix = classifier_model("")
    return sorted(p.name[: -len(suffix)] for p in Path(repo_dir).iterdir()
                  if p.is_dir() and p.name.endswith(suffix) and (p / "config.pbtxt").is_file())


def write_committed_configs(repo_dir=COMMITTED, **classifier_options) -> list[Path]:
    """Rewrite every config (and labels) of a repository laid out like the committed one.

    Defaults everywhere, unless `classifier_options` (`Serving` fields) change the classifiers':
    the container images pass ``warmup=1`` (docker/Dockerfile*), a deployment on a CPU where
    OpenVINO is faster ``backend="openvino"`` (docs/PERFORMANCE.md).
    """
    dirs = write_shared_models(repo_dir, source=repo_dir)
    for name in committed_classifiers(repo_dir):
        dirs += write_model_configs(repo_dir, name, **classifier_options)
    return dirs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.model_repository",
                                     description="Write model repositories (configs from the contract).")
    sub = parser.add_subparsers(dest="command", required=True)
    configs = sub.add_parser("configs", help="rewrite the committed repository's configs and labels")
    configs.add_argument("--repo", type=Path, default=COMMITTED)
    configs.add_argument("--warmup", type=int, default=0, metavar="BATCH",
                         help="a zero-image warm-up request of this batch size per classifier at load")
    configs.add_argument("--device", choices=("cpu", "gpu"), default=CLASSIFIER.device,
                         help="where the classifiers' instances run (the GPU image: gpu)")
    configs.add_argument("--backend", choices=BACKENDS, default=CLASSIFIER.backend,
                         help="the classifiers' runtime (docs/PERFORMANCE.md); the committed repository "
                              "keeps the default")
    dev = sub.add_parser("dev", help="write a repository serving a random-weight classifier")
    dev.add_argument("dest", type=Path)
    dev.add_argument("--name", default="dev")
    latest = sub.add_parser("latest", help="print the model file Triton serves for NAME (its highest version)")
    latest.add_argument("name")
    latest.add_argument("--repo", type=Path, default=COMMITTED)
    args = parser.parse_args(argv)
    if args.command == "latest":
        try:
            print(latest_version(args.repo / classifier_model(args.name)))
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "configs":
        options = {"warmup": args.warmup} if args.warmup else {}
        if args.backend != CLASSIFIER.backend:
            options["backend"] = args.backend
        if args.device != CLASSIFIER.device:
            options["device"] = args.device
        for model_dir in write_committed_configs(args.repo, **options):
            print(f"wrote {model_dir / 'config.pbtxt'}")
        return 0
    if (args.dest / classifier_model(args.name)).exists():
        print(f"error: {args.dest / classifier_model(args.name)} exists; choose an empty DEST", file=sys.stderr)
        return 2
    write_repository(args.dest, dev=[args.name])
    print(f"wrote {args.dest} (serves {args.name}, {tta_model(args.name)}: random weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
