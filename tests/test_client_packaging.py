"""The client distribution: declared dependencies, lazily imported transports, one version, py.typed."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENT = REPO_ROOT / "client"
PACKAGE = CLIENT / "waste_client"
PYPROJECT = tomllib.loads((CLIENT / "pyproject.toml").read_text())
#: Import name -> distribution name, where they differ.
DISTRIBUTION = {"PIL": "pillow", "ray": "ray", "tqdm": "tqdm", "numpy": "numpy", "fsspec": "fsspec", "aiohttp": "aiohttp",
                "tritonclient": "tritonclient"}


def _requirement_names(requirements) -> set:
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def _third_party_imports() -> dict:
    """Top-level module -> files importing it, for every absolute non-stdlib import of the package."""
    found: dict = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("waste_client", "__future__"):
                    found.setdefault(top, set()).add(path.name)
    return found


def test_every_import_is_declared_and_every_declaration_imported():
    imports = _third_party_imports()
    base = _requirement_names(PYPROJECT["project"]["dependencies"])
    extras = {name: _requirement_names(reqs) for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()}
    declared = base.union(*extras.values())
    undeclared = {m: files for m, files in imports.items() if DISTRIBUTION.get(m, m) not in declared}
    assert not undeclared, f"imported but not declared in client/pyproject.toml: {undeclared}"
    unused = {d for d in declared if d not in {DISTRIBUTION.get(m, m) for m in imports}}
    # s3fs/gcsfs/adlfs are fsspec's plugins (loaded by URL scheme); ray[data] brings pyarrow.
    assert unused <= {"s3fs", "gcsfs", "adlfs", "pyarrow"}, f"declared but never imported: {unused}"


@pytest.mark.parametrize("protocol, absent", [
    ("grpc", ("gevent", "geventhttpclient", "aiohttp", "tritonclient.http")),
    ("http", ("grpc", "tritonclient.grpc")),
])
def test_a_protocol_never_imports_the_other_transport(protocol, absent):
    code = (
        "import sys, asyncio, waste_client\n"
        f"c = waste_client.Classifier('127.0.0.1:1', {protocol!r}, retries=0, timeout=1)\n"
        "c.is_ready(); c.close()\n"
        f"a = waste_client.AsyncClassifier('127.0.0.1:1', {protocol!r}, retries=0, timeout=1)\n"
        "asyncio.run(a.is_ready())\n"
        f"print(sorted(m for m in {absent!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CLIENT), str(REPO_ROOT)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_one_version_string_and_type_hints_shipped():
    import waste_client

    assert waste_client.__version__ == PYPROJECT["project"]["version"]
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["waste_client"]
