"""What can be checked of docker/ and .devcontainer/ without a Docker engine or a cluster: the files
parse, every path they copy exists, ports and model names match the repository and the launcher."""
from __future__ import annotations

import glob
import json
import re
import shlex
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
REPOSITORY = ROOT / "model_repository"
SERVER_DOCKERFILES = ("Dockerfile", "Dockerfile.cpu")
ALL_DOCKERFILES = (*SERVER_DOCKERFILES, "Dockerfile.app", "Dockerfile.locust")


def launcher_ports() -> dict[str, int]:
    """The default ports of `python -m server.launch`, read from its source."""
    source = (ROOT / "server" / "launch.py").read_text()
    found = dict(re.findall(r'"(HTTP_PORT|GRPC_PORT|METRICS_PORT)", "(\d+)"', source))
    assert len(found) == 3, "server/launch.py no longer reads HTTP/GRPC/METRICS_PORT"
    return {k.split("_")[0].lower(): int(v) for k, v in found.items()}


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (DOCKER / name).read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    parsed = []
    for line in lines:
        word, _, rest = line.partition(" ")
        parsed.append((word.upper(), rest.strip()))
    return parsed


def words(arguments: str) -> list[str]:
    """Exec-form JSON or shell-form words of an instruction."""
    if arguments.startswith("["):
        return json.loads(arguments)
    return shlex.split(arguments)


def copies(name: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY/ADD from the build context."""
    result = []
    for word, args in instructions(name):
        if word in ("COPY", "ADD"):
            parts = [w for w in words(args) if not w.startswith("--")]
            assert not any(w.startswith("--from") for w in words(args))
            result.append((parts[:-1], parts[-1]))
    return result


def dockerignore_allows(name: str, path: str) -> bool:
    """Whether `<Dockerfile>.dockerignore` (a '*' then '!dir/' allow-list) lets `path` in."""
    patterns = [p.strip() for p in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", "the ignore files are allow-lists"
    return any(p.startswith("!") and path.rstrip("/").startswith(p[1:].rstrip("/")) for p in patterns)


@pytest.mark.parametrize("name", ALL_DOCKERFILES)
def test_dockerfile_parses_and_copied_paths_exist(name):
    parsed = instructions(name)
    assert any(word == "FROM" for word, _ in parsed)
    assert any(word in ("CMD", "ENTRYPOINT") for word, _ in parsed)
    known = {"ARG", "FROM", "RUN", "COPY", "ADD", "ENV", "EXPOSE", "HEALTHCHECK", "CMD",
             "ENTRYPOINT", "WORKDIR", "USER", "LABEL"}
    assert {word for word, _ in parsed} <= known
    assert copies(name), f"{name} copies nothing"
    for sources, _ in copies(name):
        for source in sources:
            assert glob.glob(str(ROOT / source)), f"{name}: COPY source {source} does not exist"
            assert dockerignore_allows(name, source), f"{name}.dockerignore excludes {source}"


def ngc_release_to_triton(release: str) -> str:
    """NGC `YY.MM` -> Triton `2.N` (23.01 is 2.30, one minor per month)."""
    year, month = (int(x) for x in release.split("."))
    return f"2.{30 + 12 * (year - 23) + month - 1}"


@pytest.mark.parametrize("name", SERVER_DOCKERFILES)
def test_server_image_is_ngc_triton_serving_the_repository(name):
    parsed = instructions(name)
    args = dict(a.split("=", 1) for w, a in parsed if w == "ARG" and "=" in a)
    (base,) = [a for w, a in parsed if w == "FROM"]
    assert base == "nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3"
    assert ngc_release_to_triton(args["TRITON_RELEASE"]) == "2.51"
    (model_copy,) = [(s, d) for s, d in copies(name) if s == ["model_repository"]]
    (cmd,) = [words(a) for w, a in parsed if w == "CMD"]
    assert cmd[0] == "tritonserver" and f"--model-repository={model_copy[1]}" in cmd
    ports = launcher_ports()
    assert {f"--http-port={ports['http']}", f"--grpc-port={ports['grpc']}",
            f"--metrics-port={ports['metrics']}"} <= set(cmd)
    (exposed,) = [a for w, a in parsed if w == "EXPOSE"]
    assert sorted(int(p) for p in exposed.split()) == sorted(ports.values())
    healthcheck = " ".join(a for w, a in parsed if w == "HEALTHCHECK")
    assert f"localhost:{ports['http']}/v2/health/ready" in healthcheck
    # The committed classifiers use the ONNX Runtime backend, which the NGC image ships natively.
    for config in REPOSITORY.glob("*_classifier/config.pbtxt"):
        assert 'backend: "onnxruntime"' in config.read_text()


def test_the_python_backend_models_get_their_imports():
    imports = set()
    for model in REPOSITORY.glob("*/1/*.py"):
        imports |= set(re.findall(r"^(?:from|import) (\w+)", model.read_text(), re.M))
    third_party = imports - {"__future__", "io", "json", "os", "sys", "typing", "pathlib", "math",
                             "triton_python_backend_utils", "imaging", "dataclasses", "functools",
                             "time", "logging", "collections", "itertools", "re", "threading"}
    pip = " ".join(a for w, a in instructions("Dockerfile") if w == "RUN" and "pip install" in a)
    for module in third_party:
        assert {"PIL": "pillow"}.get(module, module) in pip, f"{module} is not installed in the image"


def served_model_names() -> set[str]:
    names = set()
    for config in REPOSITORY.glob("*/config.pbtxt"):
        (name,) = re.findall(r'^name: "([^"]+)"', config.read_text(), re.M)
        assert name == config.parent.name
        names.add(name)
    return names


def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_services_build_existing_files_and_match_ports():
    services = compose()["services"]
    assert {"server", "app", "locust"} <= set(services)
    for name, service in services.items():
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT, f"{name}: the build context must be the repository root"
        assert (context / build["dockerfile"]).is_file()
    ports = launcher_ports()
    published = {int(p.split(":")[-1]) for p in services["server"]["ports"]}
    assert published == set(ports.values())
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    assert services["app"]["environment"]["WASTE_SERVER_URL"] == f"server:{ports['http']}"
    command = services["locust"]["command"]
    assert command[command.index("--grpc-url") + 1] == f"server:{ports['grpc']}"
    assert command[command.index("--http-url") + 1] == f"server:{ports['http']}"
    gpu = yaml.safe_load((DOCKER / "docker-compose.gpu.yml").read_text())
    assert (ROOT / gpu["services"]["server"]["build"]["dockerfile"]).is_file()


def test_model_names_in_deploy_files_are_served():
    """Every model a deploy file asks for is in the repository, with its _classifier and _tta."""
    services = compose()["services"]
    locust = services["locust"]["command"]
    asked = {services["app"]["environment"]["WASTE_MODEL"], locust[locust.index("--model") + 1]}
    for doc in k8s_documents("app.yaml"):
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            asked |= {e["value"] for e in container.get("env", []) if e["name"] == "WASTE_MODEL"}
    asked.add(re.search(r"WASTE_MODEL=(\S+)", (DOCKER / "Dockerfile.app").read_text()).group(1))
    names = served_model_names()
    for model in asked:
        assert {model, f"{model}_classifier", f"{model}_tta"} <= names, model


def k8s_documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DOCKER / "k8s" / name).read_text()) if d]


def test_k8s_triton_replicas_probes_and_metrics():
    docs = {d["kind"]: d for d in k8s_documents("triton.yaml")}
    deployment, service = docs["Deployment"], docs["Service"]
    assert deployment["spec"]["replicas"] >= 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == launcher_ports()
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector


def test_k8s_app_points_at_the_triton_service():
    docs = {d["kind"]: d for d in k8s_documents("app.yaml")}
    (triton,) = [d for d in k8s_documents("triton.yaml") if d["kind"] == "Service"]
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["WASTE_SERVER_URL"] == f"{triton['metadata']['name']}:{launcher_ports()['http']}"
    assert container["readinessProbe"]["httpGet"]["path"] == "/_stcore/health"


def test_devcontainer_matches_make_setup():
    config = json.loads((ROOT / ".devcontainer" / "devcontainer.json").read_text())
    assert "make setup" in config["postCreateCommand"]
    assert "scripts/install_test_deps.sh" in config["postCreateCommand"]
    # The bundled tritonserver's python-backend stub exists per Python version: same as the venv.
    import sys
    assert f"python:1-{sys.version_info.major}.{sys.version_info.minor}-bookworm" in config["image"]
    assert {8000, 8001, 8002, 8501} <= set(config["forwardPorts"])


def test_install_script_is_valid_bash_and_idempotent_guarded():
    script = ROOT / "scripts" / "install_test_deps.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    # which packages and binaries: tests/test_install_test_deps.py
    assert "chromium" in text and "chromium-driver" in text and "chromedriver" in text


def test_dockerfile_release_matches_the_bundled_server(dev_server):
    """The NGC tag is the release of the tritonserver the tests run (from the server's metadata)."""
    with urllib.request.urlopen(f"http://{dev_server.http_url}/v2", timeout=5) as response:
        version = json.loads(response.read())["version"]
    args = dict(a.split("=", 1) for w, a in instructions("Dockerfile") if w == "ARG" and "=" in a)
    assert version.startswith(ngc_release_to_triton(args["TRITON_RELEASE"]) + ".")
