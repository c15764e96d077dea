"""Load-test smoke run: Locust headless against the dev server, report files, thresholds, exit codes."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from load_tests import run as loadtest
from load_tests.thresholds import add_recovery, check, load_thresholds


def test_smoke_run_passes_and_writes_reports(dev_server, tmp_path):
    code = loadtest.main([
        "--url", dev_server.grpc_url, "--http-url", dev_server.http_url, "--model", "dev",
        "--users", "4", "--duration", "12s", "--scenario", "smoke", "--report-dir", str(tmp_path),
    ])
    result = json.loads((tmp_path / "thresholds.json").read_text())
    assert code == 0, (tmp_path / "summary.txt").read_text()
    assert (tmp_path / "report.html").stat().st_size > 0
    assert (tmp_path / "locust_stats.csv").is_file()
    stats = (tmp_path / "locust_stats.csv").read_text()
    # Both protocols and both ensembles were exercised by the weighted mix.
    for name in ("grpc dev", "http dev", "dev_tta"):
        assert name in stats
    checked = {c["name"].split(" (")[0] for c in result["checks"]}
    assert {"errors", "p95 latency ms", "successful requests/s"} <= checked
    assert result["totals"]["failures"] == 0


def test_failed_threshold_exits_non_zero(dev_server, tmp_path):
    code = loadtest.main([
        "--url", dev_server.grpc_url, "--model", "dev", "--protocols", "grpc", "--users", "2",
        "--duration", "4s", "--scenario", "smoke", "--set", "min_rps=1000000",
        "--report-dir", str(tmp_path),
    ])
    assert code == 1
    failed = [c["name"] for c in json.loads((tmp_path / "thresholds.json").read_text())["checks"] if not c["passed"]]
    assert failed == ["successful requests/s"]


def test_unknown_threshold_is_refused_before_starting(tmp_path):
    assert loadtest.main(["--url", "127.0.0.1:1", "--set", "p99_ms=5", "--report-dir", str(tmp_path)]) == 2


def _stats(requests, failures, errors, p95=100.0, seconds=10.0):
    total = SimpleNamespace(num_requests=requests, num_failures=failures, start_time=0.0,
                            last_request_timestamp=seconds, get_response_time_percentile=lambda q: p95)
    return SimpleNamespace(total=total, start_time=0.0, last_request_timestamp=seconds, errors={i: SimpleNamespace(error=e, occurrences=n)
                                                for i, (e, n) in enumerate(errors)})


@pytest.mark.parametrize("scenario, passed", [("default", False), ("overload", True)])
def test_overload_rejections_allowed_only_in_overload_scenario(scenario, passed):
    thresholds = load_thresholds(loadtest.THRESHOLDS, scenario)
    stats = _stats(100, 10, [("OverloadRejected('Exceeds maximum queue size')", 10)])
    assert check(stats, thresholds)["passed"] is passed


def test_other_errors_fail_even_in_overload_scenario():
    thresholds = load_thresholds(loadtest.THRESHOLDS, "overload")
    stats = _stats(100, 1, [("RequestFailed('INVALID_ARG: not a recognised image')", 1)])
    assert check(stats, thresholds)["passed"] is False


def test_recovery_is_checked_only_where_the_scenario_bounds_it(dev_server):
    overload = load_thresholds(loadtest.THRESHOLDS, "overload")
    assert "max_recovery_s" in overload and "max_recovery_s" not in load_thresholds(loadtest.THRESHOLDS, "smoke")
    base = check(_stats(100, 0, []), overload)
    for measured, passed in ((0.4, True), (overload["max_recovery_s"] + 1, False), (None, False)):
        result = add_recovery(base, measured, overload)
        assert result["passed"] is passed and result["checks"][-1]["measured"] == measured
        assert result["totals"] == base["totals"] and result["lines"][-2].startswith(
            f"  {'PASS' if passed else 'FAIL'}  recovery after the load stops s")
    # An idle server has recovered at once; nothing answering never has.
    assert loadtest.measure_recovery(dev_server.grpc_url, "", "dev", loadtest.REPO_ROOT / "samples" / "garbage12",
                                     give_up_s=10) < 2
    assert loadtest.measure_recovery("", "127.0.0.1:1", "dev", loadtest.REPO_ROOT / "samples" / "garbage12",
                                     give_up_s=1) is None
