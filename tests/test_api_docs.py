"""Issue 15.4: every example of docs/API.md runs against a real tritonserver and does what it says.

Each fenced example sits under an HTML comment `<!-- check: NAME -->`; the test runs the block
(bash blocks with the real `curl`, python blocks with this interpreter) in a scratch directory
where `samples/` is the repository's, with the documented ports replaced by the live server's,
and hands the output to the CHECKS entry of that name.
"""
from __future__ import annotations

import ast
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contract import (CLASSES, DEFAULT_MODEL, ENSEMBLE_INPUT, ENSEMBLE_OUTPUT, EXPORT_RECORD, MAX_BATCH_SIZE,
                      NUM_CLASSES, UNSURE_THRESHOLD, classifier_model)

REPO_ROOT = Path(__file__).resolve().parent.parent
API_DOC = REPO_ROOT / "docs" / "API.md"
BLOCK = re.compile(r"<!-- check: ([\w-]+) -->\n```(\w+)\n(.*?)```", re.S)

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the examples need curl")


def examples() -> list[tuple[str, str, str]]:
    """(check name, language, code) of every checked example, in document order."""
    return BLOCK.findall(API_DOC.read_text())


def _classifications(data: list[str]) -> list[tuple[float, int, str]]:
    """'score:index:label' strings, each checked against the contract's class list."""
    parsed = []
    for item in data:
        score, index, label = item.split(":")
        assert CLASSES[int(index)] == label, item
        assert 0.0 <= float(score) <= 1.0
        parsed.append((float(score), int(index), label))
    assert [s for s, _, _ in parsed] == sorted((s for s, _, _ in parsed), reverse=True)
    return parsed


def check_health(out: str) -> None:
    assert out.split() == ["200", "200"]


def check_server_metadata(out: str) -> None:
    meta = json.loads(out)
    assert meta["name"] == "triton" and meta["version"] == "2.51.0"
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])


def check_model_metadata(out: str) -> None:
    meta = json.loads(out)
    assert meta["name"] == DEFAULT_MODEL and meta["platform"] == "ensemble"
    assert meta["inputs"] == [{"name": ENSEMBLE_INPUT, "datatype": "BYTES", "shape": [-1, 1]}]
    assert meta["outputs"] == [{"name": ENSEMBLE_OUTPUT, "datatype": "FP32", "shape": [-1, NUM_CLASSES]}]


def check_model_config(out: str) -> None:
    assert out.strip() == f'"max_batch_size":{MAX_BATCH_SIZE}'


def check_unsure_threshold(out: str) -> None:
    from export.model_repository import latest_version

    record = latest_version(REPO_ROOT / "model_repository" / classifier_model(DEFAULT_MODEL)).parent / EXPORT_RECORD
    (match,) = re.findall(r'^"unsure_threshold":\{"string_value":"([0-9.]+)"\}$', out.strip())
    assert float(match) == json.loads(record.read_text())[UNSURE_THRESHOLD]


def check_classify(out: str) -> None:
    (output,) = json.loads(out)["outputs"]
    assert output["shape"] == [1, 3]
    top = _classifications(output["data"])
    assert top[0][2] == "battery"       # the trained model on a battery photo of the test split


def check_probabilities_binary(out: str) -> None:
    header, *rows = out.splitlines()
    (output,) = json.loads(header)["outputs"]
    assert output["datatype"] == "FP32" and output["parameters"]["binary_data_size"] == 4 * NUM_CLASSES
    probabilities = [float(x) for row in rows for x in row.split()]
    assert len(probabilities) == NUM_CLASSES and math.isclose(sum(probabilities), 1.0, abs_tol=1e-4)
    assert CLASSES[probabilities.index(max(probabilities))] == "battery"


def check_batch(out: str) -> None:
    (output,) = json.loads(out)["outputs"]
    shoes = len(list((REPO_ROOT / "samples" / "garbage12" / "shoes").glob("*.jpg")))
    assert output["shape"] == [1 + shoes, 1]
    labels = [_classifications([item])[0][2] for item in output["data"]]
    assert labels[0] == "battery" and labels.count("shoes") >= shoes - 1


def check_pixels_json(out: str) -> None:
    response = json.loads(out)
    assert response["model_name"] == f"{DEFAULT_MODEL}_classifier"
    (output,) = response["outputs"]
    assert output["shape"] == [1, 2] and len(_classifications(output["data"])) == 2


def check_errors(out: str) -> None:
    bad, bad_status, unknown, unknown_status = out.strip().splitlines()
    assert bad_status == "HTTP 400" and "not a recognised image file" in json.loads(bad)["error"]
    assert unknown_status == "HTTP 404" and "no_such_model" in json.loads(unknown)["error"]


def check_grpc(out: str) -> None:
    ready, result = out.strip().splitlines()
    assert ready == "ready: True"
    model, version, labels = result.split(" ", 2)
    assert model == DEFAULT_MODEL and version.isdigit()
    top = _classifications(ast.literal_eval(labels))
    assert len(top) == 3 and top[0][2] == "battery"


def check_grpc_errors(out: str) -> None:
    bad, unknown = out.strip().splitlines()
    assert bad.startswith("INVALID_ARGUMENT ") and "not a recognised image file" in bad
    assert unknown.startswith("NOT_FOUND ") and "no_such_model" in unknown


def check_metrics(out: str) -> None:
    (line,) = out.strip().splitlines()
    assert line.startswith(f'nv_inference_request_success{{model="{DEFAULT_MODEL}",version="')
    assert float(line.rsplit(" ", 1)[1]) >= 0


CHECKS = {name.removeprefix("check_").replace("_", "-"): fn
          for name, fn in dict(globals()).items() if name.startswith("check_")}


def test_every_example_with_curl_or_grpc_is_checked():
    text = API_DOC.read_text()
    checked = examples()
    fenced_code = re.findall(r"```(?:bash|sh|python)\n", text)
    assert len(fenced_code) == len(checked), "a bash/python block of docs/API.md has no check marker"
    names = [name for name, _, _ in checked]
    assert len(names) == len(set(names)) and set(names) == set(CHECKS)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_examples")
    (root / "samples").symlink_to(REPO_ROOT / "samples")
    return root


@pytest.mark.parametrize("name, language, code", examples(), ids=[name for name, _, _ in examples()])
def test_example_runs_against_the_server(name, language, code, prod_server, scratch):
    host, http_port = prod_server.http_url.split(":")
    code = (code.replace("localhost:8000", prod_server.http_url)
                .replace("localhost:8001", prod_server.grpc_url)
                .replace("localhost:8002", prod_server.metrics_url))
    assert "localhost:" not in code, "an example uses a port the test does not substitute"
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=scratch, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    try:
        CHECKS[name](result.stdout)
    except Exception as exc:
        raise AssertionError(f"{name}: unexpected output:\n{result.stdout}") from exc
