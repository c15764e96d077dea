"""Issue 15.3 observability: monitoring/ checked by promtool, then by a real Prometheus scraping a
real tritonserver, and the Grafana dashboard's queries checked against the live `/metrics`.

The live part starts its own tritonserver (the dev classifier, no trained model needed) because it
kills a Python stub, and Prometheus from Debian's package with a 1 s scrape/evaluation interval on
a loopback port with its data in tmp_path. It derives a variant of the shipped rules with every
`for:` set to 0 s (thresholds and windows unchanged), so an alert fires within seconds instead of
minutes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from contract import DEFAULT_MODEL
from export.model_repository import write_dev_classifier, write_model_configs
from server.launch import TritonServer, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
MONITORING = REPO_ROOT / "monitoring"
RULES = MONITORING / "triton_rules.yml"
RULE_TESTS = MONITORING / "tests" / "triton_rules_test.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "triton_dashboard.json"
OPERATIONS = REPO_ROOT / "docs" / "OPERATIONS.md"
GOOD_IMAGE = REPO_ROOT / "samples" / "garbage12" / "battery" / "battery142.jpg"
BAD_IMAGE = REPO_ROOT / "samples" / "bad" / "notes.jpg"
#: Series Prometheus makes itself, not the server: scrape health and the alerts it evaluates.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: scripts/install_test_deps.sh installs Debian's prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus missing: scripts/install_test_deps.sh installs it")


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _recorded_names() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


# ---- static checks ------------------------------------------------------------------------------

@needs_promtool
def test_promtool_accepts_the_config_and_the_rules():
    result = subprocess.run([PROMTOOL, "check", "config", str(PROMETHEUS_CONFIG)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # check config also checks the rule files it names: make sure it named ours
    assert "triton_rules.yml" in result.stdout and "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    result = subprocess.run([PROMTOOL, "test", "rules", str(RULE_TESTS)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_quiet_and_has_a_runbook():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = _alerts()
    assert set(alerts) == fired == quiet
    runbook = OPERATIONS.read_text()
    headings = {line.lstrip("#").strip().lower() for line in runbook.splitlines() if line.startswith("### ")}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["runbook"] == f"docs/OPERATIONS.md#{name.lower()}"
        assert name.lower() in headings, f"docs/OPERATIONS.md has no '### {name}' section"


def test_the_production_model_alert_names_the_contracts_default_model():
    rule = _alerts()["TritonProductionModelMissing"]
    assert f'model="{DEFAULT_MODEL}"' in rule["expr"]
    assert rule["labels"]["model"] == DEFAULT_MODEL
    assert set(re.findall(r'model="([^"]+)"', rule["expr"])) == {DEFAULT_MODEL}


def test_the_launcher_and_both_images_export_latency_summaries():
    # The p95 alert and the dashboard's percentiles read nv_inference_*_summary_us, which
    # tritonserver 2.51 exports only with this flag.
    flag = "--metrics-config=summary_latencies=true"
    assert flag in TritonServer(REPO_ROOT / "model_repository").command(Path("/backends"))
    # The images start Triton through their entrypoint, docker/serve.sh.
    assert f"    {flag} \\\n" in (REPO_ROOT / "docker" / "serve.sh").read_text()
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        text = (REPO_ROOT / "docker" / dockerfile).read_text()
        assert 'ENTRYPOINT ["/opt/waste/serve.sh"]' in text, dockerfile


# ---- PromQL metric names ------------------------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                 "unless", "bool", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are neither functions nor labels.

    Strings, label matchers, ranges, Grafana variables and the label lists of `by (...)`,
    `on (...)` and the like are removed first; what is left not followed by "(" is a metric.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    # not after a digit or dot: the "e3" of 1e3, the "m" of 5m
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()[:1]
        if following != "(" and match.group().lower() not in _PROMQL_WORDS:
            names.add(match.group())
    return names


def test_promql_metric_names_finds_metrics_and_skips_functions_labels_and_variables():
    expr = ('sum by (model, reason) (rate(nv_inference_request_failure{model=~"$model", reason!="x"}'
            '[$__rate_interval])) / on (model) group_left max without (quantile) '
            '(model:nv_inference_request_summary_us:p95 offset 5m) > bool 1e3 and up')
    assert promql_metric_names(expr) == {"nv_inference_request_failure",
                                         "model:nv_inference_request_summary_us:p95", "up"}


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            queries.append(re.fullmatch(r"label_values\((.*),\s*\w+\)", query).group(1))
    return queries


def test_the_dashboard_covers_what_operators_asked_for():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(_dashboard_queries())
    for metric in ("nv_inference_count", "nv_inference_request_summary_us", "nv_inference_queue_duration_us",
                   "nv_inference_exec_count", "nv_inference_request_failure"):
        assert metric in exprs, metric           # throughput, percentiles, queue, batch size, failures
    assert 'model=~"$model"' in exprs            # per model
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "model"}


# ---- live: a real Prometheus scraping a real tritonserver ----------------------------------------

def _http_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _infer(server: TritonServer, image: bytes, model: str = "dev") -> int:
    """One KServe v2 binary-data request; the HTTP status."""
    header = json.dumps({"inputs": [{"name": "image_bytes", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(image) + 4}}]}).encode()
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{model}/infer",
        data=header + len(image).to_bytes(4, "little") + image, method="POST",
        headers={"Inference-Header-Content-Length": str(len(header))})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


class Prometheus:
    """Debian's prometheus on a loopback port, its data in `root`; stopped by stop()."""

    def __init__(self, root: Path, config: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = root / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log = open(root / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (root / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("prometheus not ready after 30 s")

    def query(self, expr: str) -> dict:
        return _http_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))

    def firing(self) -> dict[str, list[dict]]:
        """alertname -> labels of each firing alert."""
        alerts: dict[str, list[dict]] = {}
        for alert in _http_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]:
            if alert["state"] == "firing":
                alerts.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return alerts

    def wait_for(self, condition, what: str, timeout: float = 40):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"Prometheus: {what} not seen within {timeout:.0f} s; "
                             f"firing: {self.firing()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """Our own server: the test kills one of its stubs, which the shared dev_server must not see."""
    repo = tmp_path_factory.mktemp("monitoring_repository")
    for name in ("preprocess", "tta_flip", "tta_mean"):
        shutil.copytree(REPO_ROOT / "model_repository" / name, repo / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    write_dev_classifier(repo, "dev")
    write_model_configs(repo, "dev")
    with TritonServer(repo) as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(triton, tmp_path_factory):
    if PROMETHEUS is None:
        pytest.skip("prometheus missing: scripts/install_test_deps.sh installs it")
    root = tmp_path_factory.mktemp("prometheus")
    groups = yaml.safe_load(RULES.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    (root / "rules.yml").write_text(yaml.safe_dump(groups))
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(root / "rules.yml")]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [triton.metrics_url]}]
    server = Prometheus(root, config)
    yield server
    server.stop()


def _live_metric_names(triton: TritonServer) -> set[str]:
    with urllib.request.urlopen(f"http://{triton.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group()
            for line in text.splitlines() if line and not line.startswith("#")}


def _failures(triton: TritonServer) -> dict[tuple[str, str], float]:
    """(model, reason) -> nv_inference_request_failure, read straight from the server."""
    with urllib.request.urlopen(f"http://{triton.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("nv_inference_request_failure{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            counts[(labels["model"], labels["reason"])] = float(line.rsplit(" ", 1)[1])
    return counts


def test_every_dashboard_query_names_metrics_the_server_exports(triton, prometheus):
    exported = _live_metric_names(triton)
    assert "nv_inference_request_summary_us" in exported, "latency summaries are off"
    known = exported | _recorded_names() | PROMETHEUS_OWN
    for query in _dashboard_queries():
        names = promql_metric_names(query)
        assert names, query
        assert names <= known, f"{query!r} names {sorted(names - known)}, which nothing exports"
        # and Prometheus itself parses it, with Grafana's variables filled in
        filled = query.replace("$__rate_interval", "1m").replace("$model", ".*")
        assert prometheus.query(filled)["status"] == "success", filled


def test_alerts_fire_on_failures_and_on_dead_or_hung_stubs(triton, prometheus):
    instance = triton.metrics_url
    # A first scrape before any traffic: rate() needs the counters' starting point.
    prometheus.wait_for(lambda: prometheus.query('nv_inference_request_success{model="dev"}')["data"]["result"],
                        "a first scrape of the server")
    # Good traffic first: scraped, recorded, and no failure alert.
    for _ in range(3):
        assert _infer(triton, GOOD_IMAGE.read_bytes()) == 200
    prometheus.wait_for(
        lambda: prometheus.query('model:nv_inference_request_success:rate5m{model="dev"} > 0')["data"]["result"],
        "the recording rule over the good requests")
    # Every recording rule yields a value from the real series (labels such as quantile="0.95"
    # match what Triton writes), e.g. the classifier's p95 and batch size.
    for record in sorted(_recorded_names()):
        assert prometheus.wait_for(lambda: prometheus.query(record)["data"]["result"], record, timeout=10)
    (p95,) = prometheus.query('model:nv_inference_request_summary_us:p95{model="dev_classifier"}')["data"]["result"]
    assert 0 < float(p95["value"][1]) < 60e6
    # Triton 2.51 exports no request summary for a model whose config enables the response cache
    # (the ensembles written by export/model_repository.py do): docs/OPERATIONS.md says so.
    config = (triton.model_repository / "dev" / "config.pbtxt").read_text()
    cached = re.search(r"response_cache\s*\{\s*enable:\s*true", config)
    ensemble_p95 = prometheus.query('model:nv_inference_request_summary_us:p95{model="dev"}')["data"]["result"]
    assert bool(ensemble_p95) != bool(cached), (cached, ensemble_p95)
    firing = prometheus.firing()
    assert "TritonHighFailureRate" not in firing and "TritonBackendFailing" not in firing, firing
    # This repository has no effnet_lite0: a server up without the production model.
    assert {"instance": instance, "model": DEFAULT_MODEL}.items() <= \
        prometheus.wait_for(lambda: prometheus.firing().get("TritonProductionModelMissing"),
                            "TritonProductionModelMissing")[0].items()

    # Bad images: every request fails with INVALID_ARG (400) -> failure ratio 100%.
    before = _failures(triton)
    for _ in range(15):
        assert _infer(triton, BAD_IMAGE.read_bytes()) == 400
    after = _failures(triton)
    # What docs/OPERATIONS.md says of 2.51: the ensemble counts each failed request twice, as
    # reason OTHER; preprocess answered with an error response, which is no failure of its own.
    assert after[("dev", "OTHER")] - before[("dev", "OTHER")] == 30
    assert after[("preprocess", "BACKEND")] == before[("preprocess", "BACKEND")] == 0
    alerts = prometheus.wait_for(lambda: prometheus.firing().get("TritonHighFailureRate"),
                                 "TritonHighFailureRate")
    assert {a["model"] for a in alerts} == {"dev"}
    assert "TritonBackendFailing" not in prometheus.firing()   # bad input is not a backend fault

    # A hung stub (SIGSTOP): Triton's health check calls it unhealthy at once, so it fails with
    # BACKEND too, on its model only.
    (flip,) = [pid for pid, model in triton._stubs.items() if model == "tta_flip"]
    os.kill(flip, signal.SIGSTOP)
    try:
        assert _infer(triton, GOOD_IMAGE.read_bytes(), model="dev_tta") >= 400
        alerts = prometheus.wait_for(lambda: prometheus.firing().get("TritonBackendFailing"),
                                     "TritonBackendFailing for the stopped stub")
        assert [(a["model"], a["instance"]) for a in alerts] == [("tta_flip", instance)]
    finally:
        os.kill(flip, signal.SIGKILL)

    # Kill both preprocess stubs: Triton 2.51 keeps the model ready, its requests fail (BACKEND).
    stubs = [pid for pid, model in triton._stubs.items() if model == "preprocess"]
    assert stubs
    for pid in stubs:
        os.kill(pid, signal.SIGKILL)
    statuses = [_infer(triton, GOOD_IMAGE.read_bytes()) for _ in range(4)]
    assert all(status >= 400 for status in statuses), statuses
    with urllib.request.urlopen(f"http://{triton.http_url}/v2/models/preprocess/ready", timeout=5) as r:
        assert r.status == 200   # why the alert is needed: health says ready
    alerts = prometheus.wait_for(
        lambda: [a for a in prometheus.firing().get("TritonBackendFailing", []) if a["model"] == "preprocess"],
        "TritonBackendFailing for the dead preprocess stubs")
    assert [a["instance"] for a in alerts] == [instance]
