"""Every unavoidable copy of the serving contract equals its one source, `contract/`.

The copies exist because their readers cannot import `contract`: the separately installed client,
`imaging.py` inside NVIDIA's container, and the `config.pbtxt`/`labels.txt` files Triton reads.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import contract

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
CLIENT_COPY = ROOT / "client" / "waste_client" / "_contract.py"
SOURCE = ROOT / "contract" / "__init__.py"
SOURCE_MARKER = "# Everything below this line is repeated verbatim in client/waste_client/_contract.py.\n"
COPY_MARKER = "# Everything below this line is repeated verbatim from contract/__init__.py.\n"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _facts(module) -> dict:
    return {k: v for k, v in vars(module).items() if k.isupper()}


def _config(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _configs() -> list[Path]:
    return sorted(REPOSITORY.glob("*/config.pbtxt"))


def test_client_copy_is_the_source_verbatim():
    source = SOURCE.read_text()
    copy = CLIENT_COPY.read_text()
    assert SOURCE_MARKER in source and COPY_MARKER in copy
    assert copy.split(COPY_MARKER, 1)[1] == source.split(SOURCE_MARKER, 1)[1], (
        "client/waste_client/_contract.py differs from contract/__init__.py: run `make contract`")
    client = _load(CLIENT_COPY, "client_contract_copy")
    assert _facts(client) == _facts(contract)
    assert len(_facts(contract)) >= 20


def test_imaging_constants_equal_the_contract():
    imaging = _load(REPOSITORY / "preprocess" / "1" / "imaging.py", "imaging_contract_check")
    assert imaging.INPUT_SIZE == contract.INPUT_SIZE
    assert imaging.PAD_VALUE == contract.PAD_VALUE
    assert imaging.ALLOWED_FORMATS == contract.ALLOWED_FORMATS
    assert imaging.MAX_BYTES == contract.MAX_IMAGE_BYTES


def test_derived_facts_are_consistent():
    assert contract.NUM_CLASSES == len(contract.CLASSES) == len(set(contract.CLASSES))
    assert list(contract.CLASSES) == sorted(contract.CLASSES)
    assert all(ext.startswith(".") and ext == ext.lower() for ext in contract.IMAGE_EXTENSIONS)
    assert contract.classifier_model("x") == "x_classifier"
    assert contract.tta_model("x") == "x_tta"
    assert contract.is_image_name("dir.png/Photo.JPEG") and contract.is_image_name("s3://b/k.tif")
    assert not contract.is_image_name("notes.txt") and not contract.is_image_name("jpg")


@pytest.mark.parametrize("path", _configs(), ids=lambda p: p.parent.name)
def test_config_uses_the_contract(path):
    config = _config(path)
    assert config.name == path.parent.name
    assert config.max_batch_size == contract.MAX_BATCH_SIZE
    inputs = {t.name: t for t in config.input}
    outputs = {t.name: t for t in config.output}
    image = [contract.INPUT_SIZE, contract.INPUT_SIZE, contract.CHANNELS]
    if config.platform == "ensemble":
        assert list(inputs) == [contract.ENSEMBLE_INPUT]
        assert list(outputs) == [contract.ENSEMBLE_OUTPUT]
        assert list(outputs[contract.ENSEMBLE_OUTPUT].dims) == [contract.NUM_CLASSES]
        steps = [step.model_name for step in config.ensemble_scheduling.step]
        assert steps[0] == contract.PREPROCESS_MODEL
        assert contract.classifier_model(config.name.removesuffix(contract.TTA_SUFFIX)) in steps
    elif config.name == contract.PREPROCESS_MODEL:
        assert list(inputs) == [contract.PREPROCESS_INPUT]
        assert list(outputs[contract.PREPROCESS_OUTPUT].dims) == image
    elif config.name == contract.TTA_FLIP_MODEL:
        assert list(inputs[contract.TTA_FLIP_INPUT].dims) == image
        assert list(outputs[contract.TTA_FLIP_OUTPUT].dims) == image
    elif config.name == contract.TTA_MEAN_MODEL:
        assert tuple(inputs) == contract.TTA_MEAN_INPUTS
        assert all(list(t.dims) == [contract.NUM_CLASSES] for t in inputs.values())
        assert list(outputs[contract.TTA_MEAN_OUTPUT].dims) == [contract.NUM_CLASSES]
    else:
        assert config.name.endswith(contract.CLASSIFIER_SUFFIX)
        assert list(inputs[contract.CLASSIFIER_INPUT].dims) == image
        assert list(outputs[contract.CLASSIFIER_OUTPUT].dims) == [contract.NUM_CLASSES]
    for tensor in outputs.values():
        if tensor.label_filename:
            assert tensor.label_filename == contract.LABELS_FILE
            labels = (path.parent / contract.LABELS_FILE).read_text().splitlines()
            assert tuple(labels) == contract.CLASSES


def test_every_model_the_ensembles_name_is_in_the_repository():
    names = {p.parent.name for p in _configs()}
    assert set(contract.SHARED_MODELS) <= names
    assert {contract.DEFAULT_MODEL, contract.tta_model(contract.DEFAULT_MODEL),
            contract.int8_model(contract.DEFAULT_MODEL)} <= names
    for path in _configs():
        for step in _config(path).ensemble_scheduling.step:
            assert step.model_name in names, f"{path}: step model {step.model_name} missing"
