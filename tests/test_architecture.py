"""The rules of docs/ARCHITECTURE.md that code can check: imports flow one way, contract facts
are not restated, and only the repository writer produces config.pbtxt text."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import contract

ROOT = Path(__file__).resolve().parent.parent
#: The files allowed to spell contract facts: the source and its pinned copies (tests/test_contract.py).
CONTRACT_COPIES = {"contract/__init__.py", "client/waste_client/_contract.py",
                   "model_repository/preprocess/1/imaging.py"}
#: Directory -> top-level packages of ours it must not import (data flows one way:
#: training -> export -> model_repository -> server -> client -> app / load tests / benchmarks).
FORBIDDEN = {
    "contract": {"training", "export", "server", "client", "app", "load_tests", "benchmarks", "waste_client"},
    "training": {"export", "server", "app", "load_tests", "benchmarks", "waste_client"},
    "export": {"server", "app", "load_tests", "benchmarks", "waste_client"},
    "server": {"training", "export", "app", "load_tests", "benchmarks", "waste_client"},
    "client": {"contract", "training", "export", "server", "app", "load_tests", "benchmarks"},
    "app": {"training", "export", "server", "load_tests", "benchmarks"},
    "load_tests": {"app", "benchmarks"},
    "model_repository": {"contract", "training", "export", "server", "app", "load_tests", "benchmarks",
                         "waste_client"},
}


def _sources(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("directory", sorted(FORBIDDEN))
def test_imports_flow_one_way(directory):
    bad = [f"{p.relative_to(ROOT)}:{line} imports {module}"
           for p in _sources(directory) for line, module in _imports(p)
           if module.split(".")[0] in FORBIDDEN[directory]]
    assert not bad, "\n".join(bad)


def test_only_the_client_imports_its_private_modules():
    dirs = ("app", "benchmarks", "load_tests", "scripts", "export", "server", "training")
    bad = [f"{p.relative_to(ROOT)}:{line} imports {module}" for p in _sources(*dirs)
           for line, module in _imports(p) if module.startswith("waste_client._")]
    assert not bad, "export what others need from waste_client/__init__.py:\n" + "\n".join(bad)


def _facts() -> set[str]:
    name = contract.DEFAULT_MODEL
    return {contract.ENSEMBLE_INPUT, contract.ENSEMBLE_OUTPUT, contract.CLASSIFIER_INPUT,
            contract.CLASSIFIER_OUTPUT, contract.PREPROCESS_INPUT, contract.PREPROCESS_OUTPUT,
            contract.TTA_FLIP_INPUT, contract.TTA_FLIP_OUTPUT, contract.TTA_MEAN_OUTPUT,
            *contract.TTA_MEAN_INPUTS, name, contract.tta_model(name), contract.int8_model(name),
            contract.classifier_model(name)}


def test_no_module_restates_a_contract_fact():
    facts = _facts()
    dirs = ("app", "benchmarks", "client", "export", "load_tests", "scripts", "server", "training",
            "model_repository")
    bad = []
    for path in _sources(*dirs):
        rel = str(path.relative_to(ROOT))
        if rel in CONTRACT_COPIES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in facts:
                bad.append(f"{rel}:{node.lineno} {node.value!r}")
            # A list of image extensions is a copy of contract.IMAGE_EXTENSIONS (one name alone,
            # e.g. a report's ".png", is not).
            if isinstance(node, (ast.Set, ast.List, ast.Tuple)):
                spelled = {"." + str(e.value).lstrip(".").lower() for e in node.elts if isinstance(e, ast.Constant)}
                if len(spelled & contract.IMAGE_EXTENSIONS) >= 2:
                    bad.append(f"{rel}:{node.lineno} a list of image extensions")
    assert not bad, "import these from contract (client: waste_client._contract):\n" + "\n".join(bad)


def test_only_the_writer_writes_model_configs():
    """Nobody but export/ produces or patches config.pbtxt text (no regex over a config)."""
    dirs = ("app", "benchmarks", "load_tests", "scripts", "training", "tests")
    bad = []
    for path in _sources(*dirs):
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        for needle in ("dynamic_batching {", "instance_group [", "max_queue_size:", "default_queue_policy {"):
            if needle in text and rel not in ("tests/test_architecture.py",):
                bad.append(f"{rel}: {needle!r}")
    assert not bad, "use export.model_repository.write_repository(..., <options>):\n" + "\n".join(bad)
