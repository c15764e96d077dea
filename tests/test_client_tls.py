"""TLS and credentials in the client, through a real nginx in front of the real `dev_server`.

The test makes a CA, a server certificate (for 127.0.0.1), a client certificate and an unrelated
"wrong" CA with the openssl command, then starts Debian's nginx in the foreground with its own
prefix on free loopback ports: HTTPS -> Triton HTTP (`proxy_pass`) and gRPC over TLS -> Triton gRPC
(`grpc_pass`), each once with a server certificate only and once requiring a client certificate
(mutual TLS, 403 without one). nginx refuses a request without credentials (401) or with wrong ones (403), as the
proxy SECURITY.md describes would.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from waste_client import (AsyncClassifier, Classifier, ClassifierError, ClientSettings, add_connection_arguments,
                          settings_from_args)

REPO_ROOT = Path(__file__).resolve().parent.parent
IMAGE = sorted((REPO_ROOT / "samples" / "garbage12").rglob("*.jpg"))[0]
LABELS = (REPO_ROOT / "model_repository" / "effnet_lite0" / "labels.txt").read_text().split()
API_KEY = "key-for-tests"
BEARER = "token-for-tests"
BASIC = "user:pass-for-tests"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None or shutil.which("openssl") is None,
                                reason="nginx and openssl are needed (scripts/install_test_deps.sh)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)


def _leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca.pem signs server.pem (127.0.0.1, localhost) and client.pem; wrong-ca.pem signs nothing we use."""
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "wrong-ca")
    _leaf(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return d


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 64m;
    ssl_certificate {pki}/server.pem;
    ssl_certificate_key {pki}/server.key;

    # 0 none, 1 right, 2 wrong; any right credential lets the request through.
    map $http_x_api_key $key_state {{ "" 0; "{api_key}" 1; default 2; }}
    map $http_authorization $authz_state {{ "" 0; "Bearer {bearer}" 1; "Basic {basic}" 1; default 2; }}
    map "$key_state$authz_state" $refuse {{ "00" 401; "10" 0; "01" 0; "11" 0; "12" 0; "21" 0; default 403; }}

    server {{
        listen 127.0.0.1:{https} ssl;
        location / {{
            if ($refuse = 401) {{ return 401; }}
            if ($refuse = 403) {{ return 403; }}
            proxy_pass http://{triton_http};
            proxy_http_version 1.1;
        }}
    }}
    server {{
        listen 127.0.0.1:{grpcs} ssl http2;
        location / {{
            if ($refuse = 401) {{ return 401; }}
            if ($refuse = 403) {{ return 403; }}
            grpc_pass grpc://{triton_grpc};
        }}
    }}
    # A proxy whose upstream is down (502) and one shedding load (429): both retried elsewhere.
    server {{
        listen 127.0.0.1:{https_502} ssl;
        location / {{ proxy_pass http://{dead}; }}
    }}
    server {{
        listen 127.0.0.1:{grpcs_502} ssl http2;
        location / {{ grpc_pass grpc://{dead}; }}
    }}
    server {{
        listen 127.0.0.1:{https_429} ssl;
        location / {{ return 429; }}
    }}
    server {{
        listen 127.0.0.1:{grpcs_429} ssl http2;
        location / {{ return 429; }}
    }}
    server {{
        listen 127.0.0.1:{https_mtls} ssl;
        ssl_client_certificate {pki}/ca.pem;
        ssl_verify_client optional;
        location / {{
            if ($ssl_client_verify != SUCCESS) {{ return 403; }}
            proxy_pass http://{triton_http};
            proxy_http_version 1.1;
        }}
    }}
    server {{
        listen 127.0.0.1:{grpcs_mtls} ssl http2;
        ssl_client_certificate {pki}/ca.pem;
        ssl_verify_client optional;
        location / {{
            if ($ssl_client_verify != SUCCESS) {{ return 403; }}
            grpc_pass grpc://{triton_grpc};
        }}
    }}
}}
"""


@pytest.fixture(scope="module")
def proxy(dev_server, pki, tmp_path_factory):
    """nginx in front of `dev_server`; yields {(protocol, mtls): "127.0.0.1:port"}."""
    import base64

    prefix = tmp_path_factory.mktemp("nginx")
    ports = {name: _free_port() for name in ("https", "grpcs", "https_mtls", "grpcs_mtls", "https_502",
                                             "grpcs_502", "https_429", "grpcs_429")}
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        prefix=prefix, pki=pki, api_key=API_KEY, bearer=BEARER,
        basic=base64.b64encode(BASIC.encode()).decode(), triton_http=dev_server.http_url,
        triton_grpc=dev_server.grpc_url, dead=f"127.0.0.1:{_free_port()}", **ports))
    process = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        for port in ports.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                        pytest.fail(f"nginx did not start: {process.stdout.read()!r} {log}")
                    time.sleep(0.05)
        urls = {("http", False): ports["https"], ("grpc", False): ports["grpcs"],
                ("http", True): ports["https_mtls"], ("grpc", True): ports["grpcs_mtls"],
                ("http", 502): ports["https_502"], ("grpc", 502): ports["grpcs_502"],
                ("http", 429): ports["https_429"], ("grpc", 429): ports["grpcs_429"]}
        yield {key: f"127.0.0.1:{port}" for key, port in urls.items()}
    finally:
        process.terminate()
        process.wait(10)


def _classify(url, protocol, **options):
    with Classifier(url, protocol, model="dev", retries=2, backoff=0.01, timeout=10, **options) as clf:
        return clf.classify(IMAGE)


def _classify_async(url, protocol, **options):
    async def main():
        async with AsyncClassifier(url, protocol, model="dev", retries=2, backoff=0.01, timeout=10,
                                   **options) as clf:
            return await clf.classify(IMAGE)

    return asyncio.run(main())


PROTOCOLS = ["grpc", "http"]
CALLS = {"sync": _classify, "async": _classify_async}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_right_api_key_gets_labels(proxy, pki, protocol, call):
    pred = CALLS[call](proxy[protocol, False], protocol, ca_file=str(pki / "ca.pem"), api_key=API_KEY)
    assert pred.label in LABELS and len(pred.top_k) == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("credential", [{"bearer_token": BEARER}, {"basic_auth": BASIC}])
def test_bearer_token_and_basic_auth_get_labels(proxy, pki, protocol, credential):
    pred = _classify(proxy[protocol, False], protocol, ca_file=str(pki / "ca.pem"), **credential)
    assert pred.label in LABELS


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("key, status", [(None, "UNAUTHENTICATED"), ("wrong-key", "PERMISSION_DENIED")])
def test_missing_or_wrong_key_is_refused_clearly_and_not_retried(proxy, pki, protocol, call, key, status):
    started = time.monotonic()
    with pytest.raises(ClassifierError) as info:
        CALLS[call](proxy[protocol, False], protocol, ca_file=str(pki / "ca.pem"), api_key=key)
    assert info.value.status == status and not info.value.transient
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_wrong_ca_is_a_clear_certificate_error(proxy, pki, protocol, call):
    with pytest.raises(ClassifierError) as info:
        CALLS[call](proxy[protocol, False], protocol, ca_file=str(pki / "wrong-ca.pem"), api_key=API_KEY)
    err = info.value
    assert err.status == "UNAUTHENTICATED" and not err.transient
    assert "TLS handshake failed" in err.message and "certificate" in err.message.lower()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("code, status", [(502, "UNAVAILABLE"), (429, None)])
def test_proxy_502_and_429_are_retried_on_the_next_url(proxy, pki, protocol, code, status, caplog):
    with Classifier(proxy[protocol, code], protocol, model="dev", retries=0, ca_file=str(pki / "ca.pem"),
                    api_key=API_KEY) as alone:
        with pytest.raises(ClassifierError) as info:
            alone.classify(IMAGE)
    assert info.value.transient and (status is None or info.value.status == status)
    with caplog.at_level(logging.WARNING, logger="waste_client"):
        pred = _classify([proxy[protocol, code], proxy[protocol, False]], protocol, ca_file=str(pki / "ca.pem"),
                         api_key=API_KEY)
    assert pred.label in LABELS
    assert any(proxy[protocol, code] in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_certificate_for_mutual_tls(proxy, pki, protocol):
    url = proxy[protocol, True]
    pred = _classify(url, protocol, ca_file=str(pki / "ca.pem"), client_cert=str(pki / "client.pem"),
                     client_key=str(pki / "client.key"))
    assert pred.label in LABELS
    with pytest.raises(ClassifierError) as info:
        _classify(url, protocol, ca_file=str(pki / "ca.pem"))
    assert info.value.status == "PERMISSION_DENIED"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_settings_come_from_the_waste_environment(proxy, pki, protocol, monkeypatch):
    monkeypatch.setenv("WASTE_URL", proxy[protocol, False])
    monkeypatch.setenv("WASTE_PROTOCOL", protocol)
    monkeypatch.setenv("WASTE_MODEL", "dev")
    monkeypatch.setenv("WASTE_CA_FILE", str(pki / "ca.pem"))
    monkeypatch.setenv("WASTE_API_KEY", API_KEY)
    with Classifier() as clf:
        assert clf.is_ready()
        assert clf.classify(IMAGE).label in LABELS
    assert "key-for-tests" not in repr(clf.settings)  # secrets stay out of logs


def test_command_line_options_override_the_environment(proxy, pki, monkeypatch):
    monkeypatch.setenv("WASTE_API_KEY", "wrong-key")
    monkeypatch.setenv("WASTE_CA_FILE", str(pki / "ca.pem"))
    parser = argparse.ArgumentParser()
    add_connection_arguments(parser)
    args = parser.parse_args(["--url", proxy["http", False], "--protocol", "http", "--model", "dev",
                              "--api-key", API_KEY])
    settings = settings_from_args(args)
    assert settings == ClientSettings(url=proxy["http", False], protocol="http", model="dev", tls=True,
                                      ca_file=str(pki / "ca.pem"), api_key=API_KEY)
    with Classifier(settings=settings) as clf:
        assert clf.classify(IMAGE).label in LABELS


def test_scorer_command_reaches_the_proxy_with_tls_and_key(proxy, pki, tmp_path):
    import csv
    import os
    import sys

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(IMAGE, photos / IMAGE.name)
    out = tmp_path / "results.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "client"), str(REPO_ROOT)]),
           "WASTE_API_KEY": API_KEY, "WASTE_CA_FILE": str(pki / "ca.pem")}
    command = [sys.executable, "-m", "waste_client", "score", str(photos), "--url", proxy["grpc", False],
               "--model", "dev", "--out", str(out), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [r for r in csv.reader(line for line in out.read_text().splitlines() if not line.startswith("#"))]
    assert any(LABELS_SET & set(r) for r in rows[1:]), rows
    env["WASTE_API_KEY"] = "wrong-key"
    refused = subprocess.run(command[:-3] + ["--out", str(tmp_path / "refused.csv"), "--no-progress", "--wait", "1"],
                             env=env, capture_output=True, text=True, timeout=120)
    # Said at once and by name: no waiting for a server that will never let this key in.
    assert refused.returncode != 0 and "PERMISSION_DENIED" in refused.stderr, refused.stderr[-2000:]


LABELS_SET = set(LABELS)
