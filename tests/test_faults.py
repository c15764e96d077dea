"""Issue 6 faults: a python backend stub dies; a model file is corrupt or does not match export.json.

Server killed mid bulk job and scorer SIGKILLed then resumed are in tests/test_score.py
(test_server_restart_mid_job_gives_no_error_rows, test_sigkill_then_resume_loses_nothing).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export.model_repository import write_dev_classifier, write_repository
from server.launch import TritonServer, _stub_model, child_pids, free_port, model_report, verify_exports

REPO_ROOT = Path(__file__).resolve().parent.parent
GOOD = sorted((REPO_ROOT / "samples" / "garbage12").rglob("*.jpg"))


def _repository(root: Path, names=("dev",)) -> Path:
    write_repository(root, dev=names)
    for name in names:
        path = root / f"{name}_classifier" / "1" / "model.onnx"
        (path.parent / "export.json").write_text(
            json.dumps({"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    return root


def _infer(client, model="dev", data=None):
    tensor = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data or GOOD[0].read_bytes()]], dtype=object))
    return client.infer(model, [tensor], client_timeout=30).as_numpy("probabilities")


def _stub_pids(server_pid: int, model: str) -> list[int]:
    return [pid for pid in child_pids(server_pid, b"triton_python_backend_stub") if _stub_model(pid) == model]


def test_killed_preprocess_stub_is_restarted_and_later_requests_succeed(tmp_path):
    # tritonserver 2.51 never restarts a dead stub and keeps reporting ready (server#8604); the
    # launcher's supervisor (on in `make serve`) notices the dead stub and restarts the server.
    repo = _repository(tmp_path / "repo")
    with TritonServer(repo, supervise=True) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        _infer(client)
        stubs = _stub_pids(server._process.pid, "preprocess")
        assert len(stubs) == 2, stubs  # instance_group count 2
        for pid in stubs:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        failures = []
        while True:  # requests during the restart may fail; one must succeed within seconds
            try:
                _infer(client)
                break
            except InferenceServerException as exc:
                failures.append(f"{exc.status()}: {exc.message()[:120]}")
                assert time.monotonic() - killed < 60, failures
                time.sleep(0.2)
        recovered = time.monotonic() - killed
        for i in range(20):  # and nothing is lost afterwards
            _infer(client, data=GOOD[i % len(GOOD)].read_bytes())
        assert client.is_server_ready() and client.is_model_ready("dev")
        assert server.restarts == 1
        new_stubs = _stub_pids(server._process.pid, "preprocess")
        assert len(new_stubs) == 2 and not set(new_stubs) & set(stubs)
        print(f"\nstub kill: first success {recovered:.2f} s after the kill, "
              f"{len(failures)} failed request(s) meanwhile: {failures[:2]}")


def test_corrupt_and_mismatched_models_fail_alone_and_launch_names_them(tmp_path):
    repo = _repository(tmp_path / "repo", names=("dev", "corrupt", "swapped"))
    corrupt = repo / "corrupt_classifier" / "1" / "model.onnx"
    corrupt.write_bytes(corrupt.read_bytes()[:2000])  # truncated copy: not loadable, digest differs
    (repo / "corrupt_classifier" / "1" / "export.json").unlink()  # a corrupt file with no record
    swapped = repo / "swapped_classifier" / "1" / "model.onnx"
    write_dev_classifier(repo, "swapped", seed=1)  # loadable, but not what the export recorded

    problems = verify_exports(repo)
    assert len(problems) == 1 and problems[0].startswith("swapped_classifier v1: model.onnx sha256")

    with TritonServer(repo, strict=False) as server:
        report = {name: (state, reason) for name, state, reason in model_report(server)}
        assert report["dev_classifier"][0] == "READY" and report["dev"][0] == "READY"
        assert report["corrupt_classifier"][0] != "READY"
        assert report["swapped_classifier"][0] != "READY"
        assert "does not match" in report["swapped_classifier"][1], report["swapped_classifier"]
        assert "corrupt" in report["corrupt_classifier"][1] or report["corrupt_classifier"][1]
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert _infer(client).shape == (1, 12)
        with pytest.raises(InferenceServerException):
            _infer(client, model="swapped")

    ports = [str(free_port()) for _ in range(3)]
    env = {**os.environ, "MODEL_REPOSITORY": str(repo), "HTTP_PORT": ports[0], "GRPC_PORT": ports[1],
           "METRICS_PORT": ports[2], "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "server.launch"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if "not ready" in line or "all models ready" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = "\n".join(lines)
    assert "SHA256 MISMATCH swapped_classifier v1" in text, text
    assert "2 model(s) not ready" in text or "model(s) not ready" in text, text
    for name in ("corrupt_classifier", "swapped_classifier"):
        line = next(l for l in lines if l.strip().endswith(name) or f" {name}  (" in l)
        assert "READY" not in line.split()[0], line
    assert any(l.split()[:2] == ["READY", "dev_classifier"] for l in lines), text


# --- Issue 13.3: the supervisor never gives up silently, and tritonserver dies with its launcher ---

def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in "ZX"


def _launcher(repo: Path, ports: list[str], **env) -> subprocess.Popen:
    env = {**os.environ, "MODEL_REPOSITORY": str(repo), "HTTP_PORT": ports[0], "GRPC_PORT": ports[1],
           "METRICS_PORT": ports[2], "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.Popen([sys.executable, "-m", "server.launch"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _preprocess_only(root: Path) -> Path:
    shutil.copytree(REPO_ROOT / "model_repository" / "preprocess", root / "preprocess",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_sigkilled_launcher_takes_tritonserver_and_its_stubs_with_it(tmp_path):
    repo = _preprocess_only(tmp_path / "repo")
    proc = _launcher(repo, [str(free_port()) for _ in range(3)])
    server = stubs = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "the launcher exited before serving"
            if "Ctrl-C to stop" in line:
                break
        (server,) = child_pids(proc.pid, b"tritonserver")
        stubs = child_pids(server, b"triton_python_backend_stub")
        assert len(stubs) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30  # SIGTERM: Triton's graceful exit (--exit-timeout-secs=10)
        while time.monotonic() < deadline and any(_alive(p) for p in [server, *stubs]):
            time.sleep(0.2)
        assert not any(_alive(p) for p in [server, *stubs]), "tritonserver outlived its launcher"
    finally:
        for pid in [proc.pid] + ([server] if server else []) + (stubs or []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def test_server_that_cannot_start_makes_the_launcher_exit_non_zero_after_n_attempts(tmp_path):
    ports = [free_port() for _ in range(3)]
    with socket.socket() as squatter:  # another program holds the HTTP port: every start fails
        squatter.bind(("127.0.0.1", ports[0]))
        squatter.listen()
        started = time.monotonic()
        proc = _launcher(tmp_path, [str(p) for p in ports], RESTART_ATTEMPTS="3")
        try:
            output, _ = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    took = time.monotonic() - started
    assert proc.returncode == 3, output
    for attempt in (1, 2, 3):
        assert f"start attempt {attempt} of 3 failed" in output, output
    assert "next attempt in 1.0 s" in output and "next attempt in 2.0 s" in output, output
    assert "gave up after 3 failed attempts in a row" in output, output
    assert not child_pids(proc.pid, b"tritonserver")
    print(f"\nlauncher gave up after 3 attempts in {took:.1f} s")


def test_a_failed_restart_is_retried_until_the_server_is_back(tmp_path, caplog):
    """The issue's bug: one failed restart left the supervisor blind. Now it backs off and retries."""
    caplog.set_level("INFO", logger="server.launch")
    repo = _preprocess_only(tmp_path / "repo")
    with TritonServer(repo, supervise=True, restart_backoff=0.5) as server:
        old = server._process.pid
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        try:
            os.killpg(old, signal.SIGKILL)  # tritonserver and its stubs, at once
            deadline = time.monotonic() + 5
            while True:  # take the HTTP port before the restart does (it needs seconds to bind)
                try:
                    squatter.bind(("127.0.0.1", server.http_port))
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            squatter.listen()
            deadline = time.monotonic() + 120
            while "start attempt 1 of 5 failed" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.2)
        finally:
            squatter.close()
        deadline = time.monotonic() + 120
        while not (server.is_running() and server._process.pid != old and
                   "ready again after 1 failed attempt(s)" in caplog.text):
            assert time.monotonic() < deadline and server.gave_up is None, caplog.text
            time.sleep(0.2)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_server_ready()
        assert server.restarts == 1 and server.gave_up is None


def test_launcher_defaults_keep_the_server_local_and_its_models_fixed(dev_server):
    """SECURITY.md's defaults: loopback only, no model control over the API, bounded shutdown."""
    import urllib.error
    import urllib.request

    command = TritonServer(REPO_ROOT / "model_repository").command(Path("/backends"))
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                 "--model-control-mode=none", "--exit-timeout-secs=10"):
        assert flag in command, flag
    request = urllib.request.Request(f"http://{dev_server.http_url}/v2/repository/models/dev/unload",
                                     data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 503 and b"not allowed" in refused.value.read()
    assert grpcclient.InferenceServerClient(dev_server.grpc_url).is_model_ready("dev")


def test_an_error_in_the_supervisor_is_logged_and_supervision_goes_on(tmp_path, caplog):
    """A failing check is logged with its traceback and retried; the healthy server is left alone."""
    caplog.set_level("INFO", logger="server.launch")
    repo = _preprocess_only(tmp_path / "repo")
    with TritonServer(repo, supervise=True, restart_backoff=0.2) as server:
        pid = server._process.pid
        real, calls = server._fault, []

        def flaky():
            calls.append(1)
            if len(calls) <= 2:
                raise RuntimeError("simulated failure while checking")
            return real()

        server._fault = flaky
        deadline = time.monotonic() + 30
        while len(calls) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert "checking tritonserver failed (1 of 5 in a row)" in caplog.text
        assert "checking tritonserver failed (2 of 5 in a row)" in caplog.text
        assert "RuntimeError: simulated failure while checking" in caplog.text  # the traceback
        assert server._watcher.is_alive() and server.gave_up is None
        assert server._process.pid == pid and server.restarts == 0  # not restarted for it
        # and it still supervises: a dead server is restarted
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while not (server.is_running() and server._process.pid != pid):
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.2)
        assert server.restarts == 1
