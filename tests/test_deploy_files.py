"""What can be checked of docker/ and .devcontainer/ without a Docker engine or a cluster: the files
parse, every path they copy exists, ports and model names match the repository and the launcher,
the pods and containers are hardened (issue 13.4) and the Triton replicas scale out (issue 12.5).

Two parts run for real here: the server images' entrypoint (docker/serve.sh, with its restricted
APIs) and liveness command (docker/liveness.py) against the bundled tritonserver, and the compose
proxy's nginx.conf with Debian's nginx in front of it.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from server.launch import child_pids

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
    """(sources, destination) of every COPY/ADD from the build context (not from a build stage)."""
    result = []
    for word, args in instructions(name):
        if word in ("COPY", "ADD") and not any(w.startswith("--from") for w in words(args)):
            parts = [w for w in words(args) if not w.startswith("--")]
            result.append((parts[:-1], parts[-1]))
    return result


def stages(name: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (a FROM starts one)."""
    result: list[list[tuple[str, str]]] = []
    for word, args in instructions(name):
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, args))
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


#: The first NGC release without the August 2025 CVEs (NVIDIA's bulletin: fixed from 25.07).
FIRST_FIXED_RELEASE = (25, 7)


@pytest.mark.parametrize("name", SERVER_DOCKERFILES)
def test_server_image_is_ngc_triton_serving_the_repository(name):
    parsed = instructions(name)
    args = dict(a.split("=", 1) for w, a in parsed if w == "ARG" and "=" in a)
    *build, final = stages(name)
    base = final[0][1]
    assert base == "nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3"
    release = tuple(int(x) for x in args["TRITON_RELEASE"].split("."))
    assert release >= FIRST_FIXED_RELEASE, f"NGC {args['TRITON_RELEASE']} has the August 2025 CVEs"
    # The configs come from the one writer, with a warm-up request per classifier.
    (configs,) = build
    run = " ".join(a for w, a in configs if w == "RUN")
    assert "python -m export.model_repository configs --repo /src/model_repository --warmup 1" in run
    assert [a for w, a in final if w == "COPY" and "--from=configs" in a] == [
        "--from=configs /src/model_repository /models"]
    # The entrypoint is docker/serve.sh (run for real by test_serve_sh_restricts_...).
    (entrypoint,) = [words(a) for w, a in final if w == "ENTRYPOINT"]
    assert entrypoint == ["/opt/waste/serve.sh"]
    assert (["docker/serve.sh", "docker/liveness.py"], "/opt/waste/") in copies(name)
    serve = (DOCKER / "serve.sh").read_text()
    ports = launcher_ports()
    for flag, env, port in (("--http-port", "HTTP_PORT", "http"), ("--grpc-port", "GRPC_PORT", "grpc"),
                            ("--metrics-port", "METRICS_PORT", "metrics")):
        assert f'{flag}="${{{env}:-{ports[port]}}}"' in serve
    assert '--model-repository="${MODEL_REPOSITORY:-/models}"' in serve
    (exposed,) = [a for w, a in final if w == "EXPOSE"]
    assert sorted(int(p) for p in exposed.split()) == sorted(ports.values())
    # Not root; the health check is a real inference.
    (user,) = [a for w, a in final if w == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    healthcheck = " ".join(a for w, a in final if w == "HEALTHCHECK")
    assert "python3 /opt/waste/liveness.py" in healthcheck
    # The committed classifiers use the ONNX Runtime backend, which the NGC image ships natively.
    for config in REPOSITORY.glob("*_classifier/config.pbtxt"):
        assert 'backend: "onnxruntime"' in config.read_text()


def test_configs_parse_with_the_model_config_schema():
    """Every config, committed and as the images write them (with warm-up), parses with Triton's
    model_config.proto (2.51's, from tritonclient; r24.10 -> r26.07 only added fields)."""
    import tempfile

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from export.model_repository import write_committed_configs

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model_repository"
        shutil.copytree(REPOSITORY, copy, ignore=shutil.ignore_patterns("*.onnx", "__pycache__"))
        write_committed_configs(copy, warmup=1)
        for repo in (REPOSITORY, copy):
            for config in sorted(repo.glob("*/config.pbtxt")):
                parsed = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
                assert parsed.name == config.parent.name
                if repo is copy and config.parent.name.endswith("_classifier"):
                    assert parsed.model_warmup and parsed.model_warmup[0].batch_size == 1


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
    assert {"server", "proxy", "app", "locust"} <= set(services)
    for name, service in services.items():
        if "build" not in service:
            continue
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT, f"{name}: the build context must be the repository root"
        assert (context / build["dockerfile"]).is_file()
    ports = launcher_ports()
    # Only the TLS proxy is published to the network; Triton only its metrics, on loopback.
    assert services["server"]["ports"] == [f"127.0.0.1:{ports['metrics']}:{ports['metrics']}"]
    assert services["proxy"]["ports"] == ["8443:8443"]
    assert all(p.startswith("127.0.0.1:") for n, s in services.items() if n != "proxy"
               for p in s.get("ports", []))
    assert services["app"]["environment"]["WASTE_URL"] == f"server:{ports['http']}"
    command = services["locust"]["command"]
    assert command[command.index("--grpc-url") + 1] == f"server:{ports['grpc']}"
    assert command[command.index("--http-url") + 1] == f"server:{ports['http']}"
    gpu = yaml.safe_load((DOCKER / "docker-compose.gpu.yml").read_text())
    assert (ROOT / gpu["services"]["server"]["build"]["dockerfile"]).is_file()


def test_compose_hardening_and_proxy_wiring():
    services = compose()["services"]
    for name in ("server", "proxy", "app"):
        assert services[name]["read_only"] is True and "/tmp" in services[name]["tmpfs"], name
        assert "no-new-privileges:true" in services[name]["security_opt"], name
    assert services["server"]["healthcheck"]["test"][:3] == ["CMD", "python3", "/opt/waste/liveness.py"]
    volumes = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["proxy"]["volumes"])
    assert volumes["./nginx/nginx.conf"] == "/etc/nginx/nginx.conf"
    # nginx.conf's pid and temp paths are relative to the prefix, which must be the tmpfs.
    command = services["proxy"]["command"]
    assert command[command.index("-p") + 1] == "/tmp/" and "/tmp" in services["proxy"]["tmpfs"]
    assert (DOCKER / "nginx" / "nginx.conf").is_file()
    conf = (DOCKER / "nginx" / "nginx.conf").read_text()
    ports = launcher_ports()
    assert f"server server:{ports['http']};" in conf and f"server server:{ports['grpc']};" in conf
    assert "client_max_body_size 40m;" in conf
    subprocess.run(["sh", "-n", str(DOCKER / "nginx" / "make-cert.sh")], check=True)


def test_app_container_sets_the_upload_limit():
    from app.logic import DEFAULT_MAX_UPLOAD_MB

    (cmd,) = [words(a) for w, a in instructions("Dockerfile.app") if w == "CMD"]
    env = " ".join(a for w, a in instructions("Dockerfile.app") if w == "ENV")
    assert f"--server.maxUploadSize={DEFAULT_MAX_UPLOAD_MB}" in cmd
    assert f"WASTE_MAX_UPLOAD_MB={DEFAULT_MAX_UPLOAD_MB}" in env
    assert compose()["services"]["app"]["environment"]["WASTE_MAX_UPLOAD_MB"] == str(DEFAULT_MAX_UPLOAD_MB)
    (deployment,) = [d for d in k8s_documents("app.yaml") if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "WASTE_MAX_UPLOAD_MB", "value": str(DEFAULT_MAX_UPLOAD_MB)} in container["env"]
    (user,) = [a for w, a in instructions("Dockerfile.app") if w == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


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


def _k8s(name: str) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in k8s_documents(name)}


def test_k8s_triton_replicas_probes_and_metrics():
    docs = _k8s("triton.yaml")
    deployment, service = docs["Deployment", "waste-triton"], docs["Service", "waste-triton"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == launcher_ports()
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    # Liveness is a real inference through the plain ensemble, the image's command.
    assert container["livenessProbe"]["exec"]["command"][:2] == ["python3", "/opt/waste/liveness.py"]
    assert container["livenessProbe"]["timeoutSeconds"] > 8  # the command's own --timeout
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        k: v for k, v in ports.items() if k != "metrics"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for kind, name in (("Service", "waste-triton"), ("Service", "waste-triton-grpc"),
                       ("Service", "waste-triton-metrics")):
        assert docs[kind, name]["spec"]["selector"] == selector
    for kind, name in (("PodDisruptionBudget", "waste-triton"), ("NetworkPolicy", "waste-triton")):
        key = "podSelector" if kind == "NetworkPolicy" else "selector"
        assert docs[kind, name]["spec"][key]["matchLabels"] == selector


def test_k8s_triton_pods_are_hardened():
    deployment = _k8s("triton.yaml")["Deployment", "waste-triton"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # With a read-only root, /tmp and /dev/shm are the writable mounts.
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp", "/dev/shm"}
    # No command/args override: the image's serve.sh (restricted APIs) is what runs.
    assert "command" not in container and "args" not in container


def test_k8s_network_policy_admits_only_inference_clients_and_metrics_scrapes():
    policy = _k8s("triton.yaml")["NetworkPolicy", "waste-triton"]["spec"]
    ports = launcher_ports()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["egress"] == []
    inference, metrics = policy["ingress"]
    assert {p["port"] for p in inference["ports"]} == {ports["http"], ports["grpc"]}
    assert {"app.kubernetes.io/name": "waste-app"} in [f["podSelector"]["matchLabels"] for f in inference["from"]]
    assert [p["port"] for p in metrics["ports"]] == [ports["metrics"]]
    assert all("namespaceSelector" in f and "podSelector" not in f for f in metrics["from"])


def test_k8s_grpc_spreads_over_pods_and_scales_on_queue_time():
    docs = _k8s("triton.yaml")
    headless = docs["Service", "waste-triton-grpc"]["spec"]
    assert headless["clusterIP"] == "None"
    assert [p["port"] for p in headless["ports"]] == [launcher_ports()["grpc"]]
    # The client balances over every address the name resolves to (gRPC round_robin policy).
    from waste_client._grpc import Transport
    from waste_client._settings import ClientSettings
    args = dict(Transport(ClientSettings())._client_args()["channel_args"])
    assert args["grpc.lb_policy_name"] == "round_robin"
    hpa = docs["HorizontalPodAutoscaler", "waste-triton"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "waste-triton"}
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    (metric,) = hpa["metrics"]
    name = metric["pods"]["metric"]["name"]
    (adapter,) = k8s_documents("prometheus-adapter.yaml")
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == name
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]
    # The target is the queue time at which monitoring's TritonHighQueueTime alert starts.
    rules = (ROOT / "monitoring" / "triton_rules.yml").read_text()
    target_us = int(metric["pods"]["target"]["averageValue"])
    assert f"model:nv_inference_queue_duration_us:avg5m > {target_us}" in rules
    pdb = docs["PodDisruptionBudget", "waste-triton"]["spec"]
    assert pdb["maxUnavailable"] == 1 and hpa["minReplicas"] > pdb["maxUnavailable"]


def test_k8s_app_points_at_the_triton_service():
    docs = {d["kind"]: d for d in k8s_documents("app.yaml")}
    triton = _k8s("triton.yaml")["Service", "waste-triton"]
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["WASTE_URL"] == f"{triton['metadata']['name']}:{launcher_ports()['http']}"
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


def test_liveness_names_are_the_contract():
    import contract

    liveness = _load_liveness()
    assert liveness.DEFAULT_MODEL == contract.DEFAULT_MODEL
    assert liveness.ENSEMBLE_INPUT == contract.ENSEMBLE_INPUT
    assert liveness.ENSEMBLE_OUTPUT == contract.ENSEMBLE_OUTPUT
    assert liveness.NUM_CLASSES == contract.NUM_CLASSES


def _load_liveness():
    import importlib.util

    spec = importlib.util.spec_from_file_location("liveness", DOCKER / "liveness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- The images' entrypoint and liveness command, and the compose proxy, for real ------------------

ADMIN_KEY = "admin-key-for-tests"


@pytest.fixture(scope="module")
def served_by_serve_sh(tmp_path_factory):
    """docker/serve.sh running the bundled tritonserver on a dev repository written as the images
    write theirs (warm-up on). Yields (http_url, grpc_url, process)."""
    from export.model_repository import write_repository
    from server.backend_dir import TRITON_DIST, prepare_backend_dir, server_env, tritonserver_binary
    from server.launch import free_port

    repo = write_repository(tmp_path_factory.mktemp("serve_sh_repository"), dev=["dev"],
                            classifier={"warmup": 1})
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    env = {**server_env(), "TRITONSERVER": str(tritonserver_binary()), "MODEL_REPOSITORY": str(repo),
           "HTTP_PORT": str(ports["http"]), "GRPC_PORT": str(ports["grpc"]),
           "METRICS_PORT": str(ports["metrics"]), "TRITON_ADMIN_KEY": ADMIN_KEY}
    # What a pod adds as `args` on a CPU node, plus what the pip-installed server needs locally.
    local = [f"--backend-directory={prepare_backend_dir()}", f"--cache-directory={TRITON_DIST / 'caches'}",
             "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
             "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0",
             "--allow-gpu-metrics=false"]
    log = (tmp_path_factory.mktemp("serve_sh_log") / "tritonserver.log").open("w")
    process = subprocess.Popen(["sh", str(DOCKER / "serve.sh"), *local], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    http_url, grpc_url = f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}"
    try:
        deadline = time.monotonic() + 120
        while _status(f"http://{http_url}/v2/health/ready") != 200:
            assert process.poll() is None, Path(log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, Path(log.name).read_text()[-3000:]
            time.sleep(0.3)
        yield http_url, grpc_url, process
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        log.close()


def _status(url: str, data: bytes | None = None, headers: dict | None = None, context=None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {},
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_serve_sh_restricts_every_api_but_inference_health_metadata_and_configs(served_by_serve_sh):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    http_url, grpc_url, _ = served_by_serve_sh
    base = f"http://{http_url}"
    key = {"triton-admin-key": ADMIN_KEY}
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/dev", "/v2/models/dev/ready",
                 "/v2/models/dev/config"):
        assert _status(base + path) == 200, path
    assert _status(base + "/v2/repository/index", data=b"{}") == 200
    for path in ("/v2/models/dev/stats", "/v2/systemsharedmemory/status",
                 "/v2/cudasharedmemory/status", "/v2/trace/setting", "/v2/logging"):
        assert _status(base + path) == 403, path
        assert _status(base + path, headers=key) == 200, path
    # Model load/unload stays impossible (model control none) even though the index is open.
    assert _status(base + "/v2/repository/models/dev/unload", data=b"{}") == 503  # "not allowed"
    assert _status(base + "/v2/models/dev/ready") == 200
    client = grpcclient.InferenceServerClient(grpc_url)
    assert client.is_server_ready() and client.get_model_metadata("dev").name == "dev"
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_system_shared_memory_status()
    assert client.get_system_shared_memory_status(
        headers={"triton-grpc-protocol-triton-admin-key": ADMIN_KEY}) is not None
    # The warm-up configs the images write load and serve; configs are readable without the key
    # (the client reads the model's "not sure" threshold there).
    config = client.get_model_config("dev_classifier")
    assert config.config.model_warmup[0].batch_size == 1


def test_compose_proxy_forwards_inference_and_refuses_the_rest(served_by_serve_sh, tmp_path):
    """docker/nginx/nginx.conf in Debian's nginx, upstreams pointed at the serve.sh server."""
    import ssl

    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists() or shutil.which("openssl") is None:
        pytest.skip("nginx and openssl are needed (scripts/install_test_deps.sh)")
    http_url, grpc_url, _ = served_by_serve_sh
    certs = tmp_path / "certs"
    subprocess.run(["sh", str(DOCKER / "nginx" / "make-cert.sh"), str(certs)], check=True,
                   capture_output=True)
    from server.launch import free_port
    port = free_port()
    conf = (DOCKER / "nginx" / "nginx.conf").read_text()
    # Only what differs outside a container: addresses, paths, foreground, no root. The prefix
    # (-p) is this test's directory, as it is the tmpfs in compose.
    conf = (conf.replace("server server:8000;", f"server {http_url};")
                .replace("server server:8001;", f"server {grpc_url};")
                .replace("listen 8443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;")
                .replace("/etc/nginx/certs", str(certs))
                .replace("access_log /dev/stdout;", f"access_log {tmp_path}/access.log;")
                .replace("error_log /dev/stderr warn;", f"error_log {tmp_path}/error.log warn;"))
    (tmp_path / "nginx.conf").write_text("daemon off;\nmaster_process off;\n" + conf)
    proxy = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                              "-e", str(tmp_path / "error.log")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        context = ssl.create_default_context(cafile=str(certs / "server.crt"))
        base = f"https://localhost:{port}"
        deadline = time.monotonic() + 10
        while _status(base + "/v2/health/ready", context=context) != 200:
            assert proxy.poll() is None, proxy.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Inference over HTTPS and over gRPC with TLS, through the proxy.
        image = sorted((ROOT / "samples" / "garbage12").rglob("*.jpg"))[0].read_bytes()
        client = httpclient.InferenceServerClient(f"localhost:{port}", ssl=True,
                                                  ssl_context_factory=lambda: context)
        tensor = httpclient.InferInput("image_bytes", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=object))
        assert client.infer("dev", [tensor]).as_numpy("probabilities").shape == (1, 12)
        grpc = grpcclient.InferenceServerClient(f"localhost:{port}", ssl=True,
                                                root_certificates=str(certs / "server.crt"))
        gtensor = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
        gtensor.set_data_from_numpy(np.array([[image]], dtype=object))
        assert grpc.infer("dev", [gtensor]).as_numpy("probabilities").shape == (1, 12)
        # A model's config is readable over both protocols (the client's "not sure" threshold),
        # but only read: a POST to it is refused.
        assert _status(base + "/v2/models/dev/config", context=context) == 200
        assert grpc.get_model_config("dev").config.name == "dev"
        assert _status(base + "/v2/models/dev/config", data=b"{}", context=context) == 403
        # Everything else is refused at the proxy, whatever key a caller sends.
        key = {"triton-admin-key": ADMIN_KEY}
        for path in ("/v2/models/dev/stats", "/v2/systemsharedmemory/status",
                     "/v2/trace/setting", "/v2/logging"):
            assert _status(base + path, headers=key, context=context) == 403, path
        assert _status(base + "/v2/repository/models/dev/load", data=b"{}", context=context) == 403
        with pytest.raises(InferenceServerException):
            grpc.get_system_shared_memory_status(headers={"triton-grpc-protocol-triton-admin-key": ADMIN_KEY})
        # A body over 40 MB is refused before it reaches Triton.
        big = b"0" * (41 * 1024 * 1024)
        assert _status(base + "/v2/models/dev/infer", data=big, context=context,
                       headers={"Content-Type": "application/octet-stream"}) == 413
    finally:
        proxy.kill()
        proxy.wait()


def test_liveness_command_fails_on_a_dead_stub_while_health_says_live(served_by_serve_sh):
    """Last in this module: it kills the fixture server's preprocess stubs."""
    http_url, _, process = served_by_serve_sh
    liveness = [sys.executable, str(DOCKER / "liveness.py"), "--url", http_url, "--model", "dev"]
    ok = subprocess.run(liveness, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "answered 12 probabilities" in ok.stdout, ok.stderr
    (server,) = child_pids(process.pid, b"tritonserver") or [process.pid]
    for pid in child_pids(server, b"/preprocess/"):
        os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    dead = subprocess.run(liveness, capture_output=True, text=True, timeout=60)
    assert dead.returncode == 1 and "is not healthy" in dead.stderr, (dead.stdout, dead.stderr)
    assert _status(f"http://{http_url}/v2/health/live") == 200  # what the old probe asked


def test_the_clients_grpc_channel_spreads_requests_over_every_address_of_a_name(dev_server, tmp_path):
    """What the headless Service relies on: one gRPC target that resolves to two servers (here the
    `ipv4:` scheme, as DNS would answer for two pods) gets requests on both, with the client's
    own channel arguments (round_robin)."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from export.model_repository import write_repository
    from server.launch import TritonServer
    from waste_client._grpc import Transport
    from waste_client._settings import ClientSettings

    port = dev_server.grpc_port
    repo = write_repository(tmp_path / "repo", dev=["dev"])
    with TritonServer(repo, host="127.0.0.2", grpc_port=port) as second:
        servers = [grpcclient.InferenceServerClient(dev_server.grpc_url),
                   grpcclient.InferenceServerClient(second.grpc_url)]

        def successes() -> list[int]:
            return [int(c.get_inference_statistics("dev", as_json=True)["model_stats"][0]
                        ["inference_stats"]["success"].get("count", 0)) for c in servers]

        before = successes()
        channel_args = Transport(ClientSettings())._client_args()["channel_args"]
        client = grpcclient.InferenceServerClient(f"ipv4:127.0.0.1:{port},127.0.0.2:{port}",
                                                  channel_args=channel_args)
        image = sorted((ROOT / "samples" / "garbage12").rglob("*.jpg"))[0].read_bytes()
        for _ in range(20):
            tensor = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[image]], dtype=object))
            client.infer("dev", [tensor], client_timeout=60)
        served = [after - b for after, b in zip(successes(), before)]
        assert sum(served) == 20 and min(served) >= 5, served  # round_robin: 10 and 10
        client.close()


#: Image -> the code it runs; every package of ours that code imports must be in the image.
IMAGE_CODE = {"Dockerfile.app": ("app",), "Dockerfile.locust": ("load_tests",)}
OUR_PACKAGES = {"contract": "contract", "waste_client": "client", "app": "app", "load_tests": "load_tests"}


@pytest.mark.parametrize("name", sorted(IMAGE_CODE))
def test_client_images_carry_every_package_of_ours_their_code_imports(name):
    """A module moved to the public client or the contract must reach the image too (the Locust image
    once lacked both after its users moved to waste_client)."""
    copied = {source.rstrip("/") for sources, _ in copies(name) for source in sources}
    needed = set()
    for folder in IMAGE_CODE[name]:
        for path in (ROOT / folder).rglob("*.py"):
            needed |= {OUR_PACKAGES[m] for m in re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), re.M)
                       if m in OUR_PACKAGES}
    assert needed <= copied, f"{name} lacks {sorted(needed - copied)}"
    if "client" in needed:
        pip = " ".join(a for w, a in instructions(name) if w == "RUN" and "pip install" in a)
        assert "/srv/client" in pip, f"{name} copies the client but does not install it"


@pytest.mark.parametrize("name", ALL_DOCKERFILES)
def test_every_image_runs_as_a_non_root_user(name):
    users = [a.split(":")[0] for w, a in instructions(name) if w == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{name} runs as root"
