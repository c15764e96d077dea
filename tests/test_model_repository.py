"""The one repository writer: committed configs equal its output, options give valid configs,
and a version is published atomically (issue 13 item 7)."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import contract
from export.model_configs import classifier_config, ensemble_config, preprocess_config
from export.model_repository import (COMMITTED, MODEL_FILE, RECORD_FILE, committed_classifiers,
                                     publish_version, sha256, write_committed_configs, write_repository)


def _parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name in ("config.pbtxt", "labels.txt", ".gitkeep")}


def test_committed_configs_are_what_the_writer_writes(tmp_path):
    copy = tmp_path / "repo"
    for name in [*contract.SHARED_MODELS, *(contract.classifier_model(n) for n in committed_classifiers())]:
        (copy / name).mkdir(parents=True)
        (copy / name / "config.pbtxt").write_text("stale")
    # The versions' export records, without their model files: the ensembles' thresholds come from them.
    for record in COMMITTED.glob(f"*/*/{RECORD_FILE}"):
        target = copy / record.relative_to(COMMITTED)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(record.read_bytes())
    write_committed_configs(copy)
    committed = {k: v for k, v in _tree(COMMITTED).items() if not k.endswith(".gitkeep")}
    written = {k: v for k, v in _tree(copy).items() if not k.endswith(".gitkeep")}
    assert written.keys() == committed.keys()
    for key in committed:
        assert written[key] == committed[key], (
            f"model_repository/{key} differs from the writer's output: run "
            "`python -m export.model_repository configs` (never edit a config by hand)")


def test_measurements_appear_only_in_the_measured_models_config():
    production = classifier_config(contract.DEFAULT_MODEL)
    assert "BENCHMARKS.md row V2" in production
    for other in (classifier_config(contract.int8_model(contract.DEFAULT_MODEL)),
                  classifier_config(contract.DEFAULT_MODEL, instances=1, threads=2)):
        assert "BENCHMARKS.md" not in other
        assert "count: 2" in other or "count: 1" in other


def test_every_option_gives_a_config_triton_can_parse():
    config = _parse(classifier_config(
        "x", instances=3, threads=2, preferred_batch_sizes=[4], max_queue_delay_us=500,
        max_queue_size=None, accelerator="openvino", accelerator_parameters={"precision": "FP32"},
        response_cache=True, warmup=2))
    assert config.instance_group[0].count == 3
    assert config.parameters["intra_op_thread_count"].string_value == "2"
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert not config.dynamic_batching.HasField("default_queue_policy")
    (accelerator,) = config.optimization.execution_accelerators.cpu_execution_accelerator
    assert accelerator.name == "openvino" and accelerator.parameters["precision"] == "FP32"
    assert config.response_cache.enable
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 2 and list(warmup.inputs[contract.CLASSIFIER_INPUT].dims) == [224, 224, 3]
    assert not _parse(classifier_config("x", batching=False)).HasField("dynamic_batching")
    assert _parse(ensemble_config("x", tta=True, response_cache=True)).response_cache.enable
    small = _parse(preprocess_config(max_queue_size=8))
    assert small.dynamic_batching.default_queue_policy.max_queue_size == 8
    assert _parse(classifier_config("x", device="gpu")).instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert _parse(classifier_config("x")).instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    with pytest.raises(ValueError, match="device"):
        classifier_config("x", device="tpu")
    with pytest.raises(TypeError, match="instance_count"):
        classifier_config("x", instance_count=1)
    with pytest.raises(ValueError, match="model name"):
        classifier_config("Bad Name")


def test_write_repository_makes_a_complete_variant(tmp_path):
    onnx = tmp_path / "given.onnx"
    onnx.write_bytes(b"not really onnx, copied as is")
    repo = write_repository(tmp_path / "repo", {"given": onnx}, dev=["dev"],
                            common={"max_queue_size": 8, "response_cache": True},
                            classifier={"instances": 1})
    names = {p.parent.name for p in repo.glob("*/config.pbtxt")}
    assert names == {*contract.SHARED_MODELS, "given", "given_tta", "given_classifier",
                     "dev", "dev_tta", "dev_classifier"}
    assert (repo / "given_classifier" / "1" / MODEL_FILE).read_bytes() == onnx.read_bytes()
    assert (repo / "dev_classifier" / "1" / MODEL_FILE).stat().st_size > 1000
    assert (repo / "preprocess" / "1" / "imaging.py").is_file()
    assert not list(repo.rglob("__pycache__"))
    for path in repo.glob("*/config.pbtxt"):
        config = _parse(path.read_text())
        assert config.response_cache.enable, path
        if config.platform != "ensemble":
            assert config.dynamic_batching.default_queue_policy.max_queue_size == 8, path
    assert _parse((repo / "dev_classifier" / "config.pbtxt").read_text()).instance_group[0].count == 1


def test_publish_version_never_overwrites_and_records_the_digest(tmp_path):
    model_dir = tmp_path / "m_classifier"
    first = publish_version(model_dir, {MODEL_FILE: b"one"}, record={"source_run": "r"})
    second = publish_version(model_dir, {MODEL_FILE: b"two"})
    assert (first.name, second.name) == ("1", "2")
    record = json.loads((first / RECORD_FILE).read_text())
    assert record == {"source_run": "r", "version": 1, "sha256": sha256(first / MODEL_FILE), "bytes": 3}
    with pytest.raises(FileExistsError):
        publish_version(model_dir, {MODEL_FILE: b"three"}, version=1)
    assert (first / MODEL_FILE).read_bytes() == b"one"
    with pytest.raises(FileNotFoundError):
        publish_version(model_dir, {MODEL_FILE: tmp_path / "missing.onnx"})
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2"], "a failed publish left something behind"


def test_a_watcher_never_sees_a_partial_version(tmp_path):
    """What a polling server sees while a large version is published: nothing, then all of it."""
    model_dir = tmp_path / "m_classifier"
    model_dir.mkdir()
    payload = os.urandom(1 << 20) * 48
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            version = model_dir / "1"
            if version.is_dir():
                model, record = version / MODEL_FILE, version / RECORD_FILE
                seen.append((model.is_file() and model.stat().st_size, record.is_file()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        publish_version(model_dir, {MODEL_FILE: payload}, record={})
    finally:
        done.set()
        watcher.join()
    assert all(entry == (len(payload), True) for entry in seen), seen[:3]
    assert [p.name for p in model_dir.iterdir()] == ["1"]


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    model_dir = tmp_path / "m_classifier"
    results, errors = [], []

    def publish(i):
        try:
            results.append(publish_version(model_dir, {MODEL_FILE: bytes([i]) * 1000}).name)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results, key=int) == [str(i) for i in range(1, 7)]


def test_the_gpu_image_gets_its_device_from_the_writer_not_a_text_patch(tmp_path):
    """docker/Dockerfile writes GPU configs with `configs --device gpu`; nothing edits a config's text."""
    from export.model_repository import main

    dockerfile = (COMMITTED.parent / "docker" / "Dockerfile").read_text()
    assert "--device gpu" in dockerfile and "sed " not in dockerfile
    copy = tmp_path / "repo"
    for name in [*contract.SHARED_MODELS, *(contract.classifier_model(n) for n in committed_classifiers())]:
        (copy / name).mkdir(parents=True)
        (copy / name / "config.pbtxt").write_text("stale")
    assert main(["configs", "--repo", str(copy), "--device", "gpu", "--warmup", "1"]) == 0
    for name in committed_classifiers():
        config = _parse((copy / contract.classifier_model(name) / "config.pbtxt").read_text())
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    for name in contract.SHARED_MODELS:  # Python models stay where Pillow runs
        config = _parse((copy / name / "config.pbtxt").read_text())
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def _unsure_parameter(path: Path):
    parameters = _parse(path.read_text()).parameters
    return parameters[contract.UNSURE_THRESHOLD].string_value if contract.UNSURE_THRESHOLD in parameters else None


def test_committed_ensembles_carry_the_served_versions_threshold():
    """Every ensemble a client calls has the `unsure_threshold` of the export.json of the highest
    classifier version (the one its steps run), to the last digit; no other model has one."""
    from export.model_repository import latest_version

    checked = 0
    for name in committed_classifiers():
        record = json.loads((latest_version(COMMITTED / contract.classifier_model(name)).parent
                             / RECORD_FILE).read_text())
        for ensemble in (name, contract.tta_model(name)):
            config = COMMITTED / ensemble / "config.pbtxt"
            value = _unsure_parameter(config)
            assert value is not None and float(value) == record[contract.UNSURE_THRESHOLD], config
            checked += 1
        assert _unsure_parameter(COMMITTED / contract.classifier_model(name) / "config.pbtxt") is None
    assert checked >= 4
    for name in contract.SHARED_MODELS:
        assert _unsure_parameter(COMMITTED / name / "config.pbtxt") is None


def test_a_dev_repository_gets_its_records_threshold_and_none_without(tmp_path):
    repo = write_repository(tmp_path / "repo", dev=["sure", "plain"], records={"sure": {"unsure_threshold": 0.625}})
    version = repo / "sure_classifier" / "1"
    record = json.loads((version / RECORD_FILE).read_text())
    assert record["unsure_threshold"] == 0.625 and record["sha256"] == sha256(version / MODEL_FILE)
    for ensemble in ("sure", "sure_tta"):
        text = (repo / ensemble / "config.pbtxt").read_text()
        assert _unsure_parameter(repo / ensemble / "config.pbtxt") == "0.625"
        assert "sure_classifier/1/export.json" in text  # the comment names the record
    for model in ("plain", "plain_tta", "sure_classifier"):
        assert _unsure_parameter(repo / model / "config.pbtxt") is None, model
    with pytest.raises(ValueError, match="other"):
        write_repository(tmp_path / "bad", dev=["dev"], records={"other": {}})


def test_publishing_moves_the_threshold_to_the_new_version(tmp_path):
    """`python -m export`'s publish: the ensembles follow the version they now serve."""
    from export.__main__ import publish
    from export.model_repository import build_dev_classifier

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(build_dev_classifier().SerializeToString())
    repo = tmp_path / "repo"
    publish(onnx, repo, "m", {"unsure_threshold": 0.4})
    assert _unsure_parameter(repo / "m" / "config.pbtxt") == "0.4"
    publish(onnx, repo, "m", {"unsure_threshold": 0.7729834318161011})
    assert _unsure_parameter(repo / "m_tta" / "config.pbtxt") == "0.7729834318161011"
    assert "m_classifier/2/export.json" in (repo / "m" / "config.pbtxt").read_text()
    publish(onnx, repo, "m", {})  # a version without a threshold (--no-calibrate): none is served
    assert _unsure_parameter(repo / "m" / "config.pbtxt") is None


def test_recording_a_threshold_rewrites_the_ensembles(tmp_path):
    """`python -m export.threshold VERSION_DIR` on a version in a repository leaves its configs current."""
    from export.threshold import choose_and_record

    repo = write_repository(tmp_path / "repo", dev=["dev"], records={"dev": {}})
    assert _unsure_parameter(repo / "dev" / "config.pbtxt") is None
    photos = sorted((COMMITTED.parent / "samples" / "garbage12").glob("*/*.jpg"))
    items = [(str(p), contract.CLASSES.index(p.parent.name)) for p in photos]
    record = choose_and_record(repo / "dev_classifier" / "1", {"val": items[::2], "test": items[1::2]}, 0.9, 0)
    for ensemble in ("dev", "dev_tta"):
        assert float(_unsure_parameter(repo / ensemble / "config.pbtxt")) == record["threshold"]
