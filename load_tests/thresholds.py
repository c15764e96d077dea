"""Pass/fail rules of a load test: read from `thresholds.toml`, checked against Locust's stats.

Kept free of Locust imports so the runner and the tests can use it without gevent's monkey patching.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

KEYS = {
    "max_errors": int,  # failures other than allowed overload rejections
    "p95_ms": float,  # bound on the 95th percentile over all requests (ms)
    "min_rps": float,  # floor on completed requests per second (failures excluded)
    "allow_overload_rejections": bool,  # UNAVAILABLE (queue full) counts as expected, not as an error
    "max_overload_fraction": float,  # ... but at most this share of all requests
    "max_recovery_s": float,  # after Locust stops: seconds until one plain request answers quickly
}
DEFAULTS = {"max_errors": 0, "allow_overload_rejections": False, "max_overload_fraction": 1.0}
OVERLOAD = "OverloadRejected"
#: "Quickly" for the recovery check: one plain classify, end to end, like an idle server's few
#: hundred ms with room for the shared 2-core box.
RECOVERED_LATENCY_S = 2.0


def load_thresholds(path, scenario: str = "default", overrides=()) -> dict:
    """The thresholds of one scenario (a table of the TOML file), with KEY=VALUE overrides applied.

    Raises
    ------
    KeyError
        The scenario is not in the file, or an override names an unknown key.
    """
    with open(path, "rb") as handle:
        tables = tomllib.load(handle)
    if scenario not in tables:
        raise KeyError(f"scenario {scenario!r} not in {path} (has {sorted(tables)})")
    values = {**DEFAULTS, **tables[scenario]}
    for item in overrides:
        key, _, raw = item.partition("=")
        if key not in KEYS:
            raise KeyError(f"unknown threshold {key!r} (known: {sorted(KEYS)})")
        values[key] = raw.lower() in ("1", "true", "yes") if KEYS[key] is bool else KEYS[key](raw)
    unknown = set(values) - set(KEYS)
    if unknown:
        raise KeyError(f"unknown threshold(s) {sorted(unknown)} in {path} [{scenario}]")
    values["source"] = f"{Path(path).name} [{scenario}]"
    return values


def count_failures(errors) -> tuple[int, int]:
    """(overload rejections, other failures) from Locust's `stats.errors` values."""
    overload = other = 0
    for error in errors:
        # Locust keeps the exception object (its CSV shows the repr); the class name is in the repr.
        text = error.error if isinstance(error.error, str) else repr(error.error)
        if OVERLOAD in text:
            overload += error.occurrences
        else:
            other += error.occurrences
    return overload, other


def check(stats, thresholds: dict) -> dict:
    """Check Locust's RequestStats against the thresholds; return what was checked and the verdict.

    Returns
    -------
    dict
        passed (bool), checks [{name, measured, bound, passed}], lines (human-readable), totals.
    """
    total = stats.total
    overload, other = count_failures(stats.errors.values())
    requests = total.num_requests
    # Same clock as Locust's own "Requests/s" column (RequestStats start / last request).
    duration = (stats.last_request_timestamp or 0.0) - (stats.start_time or 0.0) if requests else 0.0
    ok_rps = (requests - total.num_failures) / duration if duration > 0 else 0.0
    p95 = total.get_response_time_percentile(0.95) if requests else None
    checks = []

    def add(name, measured, bound, passed):
        checks.append({"name": name, "measured": measured, "bound": bound, "passed": bool(passed)})

    add("requests sent", requests, "> 0", requests > 0)
    errors = other + (0 if thresholds["allow_overload_rejections"] else overload)
    add("errors" + (" (overload rejections excluded)" if thresholds["allow_overload_rejections"] else ""),
        errors, f"<= {thresholds['max_errors']}", errors <= thresholds["max_errors"])
    if thresholds["allow_overload_rejections"]:
        fraction = overload / requests if requests else 0.0
        add("overload rejection share", round(fraction, 4), f"<= {thresholds['max_overload_fraction']}",
            fraction <= thresholds["max_overload_fraction"])
    if "p95_ms" in thresholds:
        add("p95 latency ms", p95, f"<= {thresholds['p95_ms']}", p95 is not None and p95 <= thresholds["p95_ms"])
    if "min_rps" in thresholds:
        add("successful requests/s", round(ok_rps, 2), f">= {thresholds['min_rps']}", ok_rps >= thresholds["min_rps"])
    totals = {"requests": requests, "failures": total.num_failures, "overload_rejections": overload,
              "other_failures": other, "seconds": round(duration, 2), "ok_rps": round(ok_rps, 2), "p95_ms": p95}
    return _verdict(checks, thresholds["source"], {"totals": totals})


def add_recovery(result: dict, recovery_s, thresholds: dict) -> dict:
    """``result`` of `check` with the recovery check added (``recovery_s`` None: never recovered)."""
    bound = thresholds["max_recovery_s"]
    check_ = {"name": f"recovery after the load stops s (first request under {RECOVERED_LATENCY_S} s)",
              "measured": recovery_s, "bound": f"<= {bound}",
              "passed": recovery_s is not None and recovery_s <= bound}
    extra = {k: v for k, v in result.items() if k not in ("passed", "checks", "lines")}
    return _verdict([*result["checks"], check_], thresholds["source"], extra)


def _verdict(checks: list, source: str, extra: dict) -> dict:
    passed = all(c["passed"] for c in checks)
    lines = [f"thresholds from {source}:"]
    lines += [f"  {'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['measured']} (bound {c['bound']})"
              for c in checks]
    lines.append(f"load test {'PASSED' if passed else 'FAILED'}")
    return {"passed": passed, "checks": checks, "lines": lines, **extra}
