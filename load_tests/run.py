"""`make loadtest`: Locust headless against Triton, CSV + HTML report, thresholds, exit code.

    .venv/bin/python -m load_tests.run --users 8 --duration 30s [--url HOST:GRPC] [--http-url HOST:HTTP]
        [--model NAME] [--protocols grpc,http] [--plain-weight 3 --tta-weight 1]
        [--scenario default|overload|smoke] [--set p95_ms=1500] [--images DIR] [--report-dir DIR]
        [--onnx PATH.onnx]

Without --url / --http-url it starts tritonserver itself on a temporary copy of the repository
(`--onnx` replaces the classifier's model file there, e.g. a stand-in before the trained model
lands); in the `overload` scenario that copy gets bounded queues so the server sheds load with
UNAVAILABLE. The report directory receives Locust's `locust_*.csv`, `report.html`,
`thresholds.json` (every check with its measured value and bound) and `summary.txt`. When the
scenario has `max_recovery_s` (overload), the runner also times, from Locust's exit, how long until
one plain classify answers within `RECOVERED_LATENCY_S`, and adds that as a check.
Exit status: 0 all thresholds met, 1 one failed, 2 the run itself could not happen.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contract import DEFAULT_MODEL, classifier_model, is_image_name
from load_tests.thresholds import RECOVERED_LATENCY_S, add_recovery, load_thresholds

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
THRESHOLDS = Path(__file__).with_name("thresholds.toml")
#: Queue bound of preprocess and the classifier in the overload scenario's repository: a few
#: batches of 16-32 are ~1 s of work at ~25 images/s, beyond which waiting is worse for a client
#: than a fast refusal.
OVERLOAD_QUEUE = 16


def parse_duration(text: str) -> float:
    """'30s', '2m', '1m30s', '45' -> seconds."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (use 30s, 2m, 1m30s)")
    h, m, s = (int(g or 0) for g in match.groups())
    return h * 3600 + m * 60 + s


@contextlib.contextmanager
def own_server(args):
    """A tritonserver on a temporary repository (queues bounded at OVERLOAD_QUEUE for `overload`)."""
    from export.model_repository import latest_version, write_repository
    from server.launch import TritonServer

    onnx = Path(args.onnx) if args.onnx else latest_version(REPO_ROOT / "model_repository" / classifier_model(args.model))
    if not onnx.is_file():
        raise FileNotFoundError(f"{onnx} does not exist; pass --onnx PATH or --url of a running server")
    overload = {"max_queue_size": OVERLOAD_QUEUE} if args.scenario == "overload" else {}
    with tempfile.TemporaryDirectory(prefix="loadtest-repo-") as tmp:
        repo = write_repository(Path(tmp), {args.model: onnx}, preprocess=overload, classifier=overload)
        with TritonServer(repo, timeout=180) as server:
            yield server.grpc_url, server.http_url


def locust_command(args, grpc_url: str, http_url: str, report: Path) -> list[str]:
    users = [cls for proto, cls in (("grpc", "GrpcUser"), ("http", "HttpUser"))
             if proto in args.protocols and (grpc_url if proto == "grpc" else http_url)]
    if not users:
        raise ValueError("no protocol has a URL: give --url (gRPC) and/or --http-url")
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--users", str(args.users), "--spawn-rate", str(args.spawn_rate or args.users),
        "--run-time", f"{int(args.duration)}s", "--stop-timeout", "10",
        "--csv", str(report / "locust"), "--csv-full-history", "--html", str(report / "report.html"),
        "--only-summary", "--loglevel", "INFO",
        "--grpc-url", grpc_url, "--http-url", http_url, "--model", args.model,
        "--images", args.images, "--plain-weight", str(args.plain_weight), "--tta-weight", str(args.tta_weight),
        "--thresholds", str(args.thresholds), "--scenario", args.scenario,
        "--result-file", str(report / "thresholds.json"),
    ]
    for item in args.set:
        command += ["--threshold-override", item]
    return command + users


def measure_recovery(grpc_url: str, http_url: str, model: str, images: str, give_up_s: float):
    """Seconds from now until one plain classify answers within RECOVERED_LATENCY_S (None: never).

    Each try is a single request without retries, so a slow or refused answer costs one try, not
    the client's backoff; tries repeat every 0.1 s until ``give_up_s``.
    """
    from waste_client import Classifier, ClassifierError

    image = next(p for p in sorted(Path(images).rglob("*")) if is_image_name(p.name))
    url, protocol = (grpc_url, "grpc") if grpc_url else (http_url, "http")
    start = time.perf_counter()
    with Classifier(url, protocol=protocol, model=model, timeout=RECOVERED_LATENCY_S, retries=0) as clf:
        while time.perf_counter() - start < give_up_s:
            sent = time.perf_counter()
            try:
                clf.classify(image)
                if time.perf_counter() - sent <= RECOVERED_LATENCY_S:
                    return round(time.perf_counter() - start, 3)
            except ClassifierError:
                pass
            time.sleep(0.1)
    return None


def run(args) -> int:
    report = Path(args.report_dir or REPO_ROOT / "runs" / "loadtest" / time.strftime("%Y%m%d-%H%M%S"))
    report.mkdir(parents=True, exist_ok=True)
    # Read the thresholds before any server starts: a typo should cost nothing.
    thresholds = load_thresholds(args.thresholds, args.scenario, args.set)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    server = own_server(args) if not (args.url or args.http_url) else contextlib.nullcontext((args.url, args.http_url))
    with server as (grpc_url, http_url):
        command = locust_command(args, grpc_url or "", http_url or "", report)
        with open(report / "locust.log", "w") as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                   timeout=args.duration + 120)
        recovery_s = None
        if "max_recovery_s" in thresholds:
            # Timed from Locust's exit: its users are gone, the server may still drain its queues.
            recovery_s = measure_recovery(grpc_url, http_url, args.model, args.images,
                                          give_up_s=max(30.0, 2 * thresholds["max_recovery_s"]))
    result_file = report / "thresholds.json"
    if not result_file.is_file():
        print(f"error: locust exited with {code} without checking thresholds; see {report / 'locust.log'}",
              file=sys.stderr)
        print((report / "locust.log").read_text()[-3000:], file=sys.stderr)
        return 2
    result = json.loads(result_file.read_text())
    if "max_recovery_s" in thresholds:
        result = add_recovery(result, recovery_s, thresholds)
        result_file.write_text(json.dumps(result, indent=2))
    summary = "\n".join([
        f"scenario {args.scenario}: {args.users} users, {args.duration:.0f} s, protocols {','.join(args.protocols)}, "
        f"model {args.model} (plain:tta = {args.plain_weight}:{args.tta_weight})",
        *result["lines"],
        f"report: {report / 'report.html'}, CSV: {report}/locust_*.csv",
    ])
    (report / "summary.txt").write_text(summary + "\n")
    print(summary)
    return 0 if result["passed"] and code == 0 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=0, help="users started per second (default: all at once)")
    parser.add_argument("--duration", type=parse_duration, default=parse_duration("30s"))
    parser.add_argument("--url", default="", help="gRPC host:port of a running server (skips starting one)")
    parser.add_argument("--http-url", default="", help="HTTP host:port of a running server")
    parser.add_argument("--protocols", type=lambda s: s.split(","), default=["grpc", "http"])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="ensemble; TTA requests go to <model>_tta")
    parser.add_argument("--plain-weight", type=int, default=3)
    parser.add_argument("--tta-weight", type=int, default=1)
    parser.add_argument("--images", default=str(REPO_ROOT / "samples" / "garbage12"))
    parser.add_argument("--scenario", default="default")
    parser.add_argument("--thresholds", default=str(THRESHOLDS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a threshold")
    parser.add_argument("--report-dir", help="default runs/loadtest/<timestamp>")
    parser.add_argument("--onnx", help="classifier ONNX for the server this runner starts")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (OSError, KeyError, ValueError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
