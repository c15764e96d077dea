"""Locust users for the Triton ensembles, over gRPC and HTTP, with a weighted plain / TTA mix.

Run through `python -m load_tests.run` (it starts a server, passes the options below and checks the
thresholds); by hand:

    .venv/bin/python -m locust -f load_tests/locustfile.py --headless -u 8 -r 8 -t 30s \
        --grpc-url 127.0.0.1:8001 --http-url 127.0.0.1:8000 GrpcUser HttpUser

Every request sends one real encoded image file (cycled over `--images`, default the bundled
samples) through the client library's raw `Classifier.infer` (retries off) and is timed with
`time.perf_counter()` around that call, reported through
`events.request` under the name `<protocol> <model>`. A request refused because a queue is full
(UNAVAILABLE / HTTP 503) is reported as an `OverloadRejected` failure, every other error as
`RequestFailed`, so the threshold check can tell deliberate overload from breakage.
"""
from __future__ import annotations

import itertools
import json
import logging
import random
import time
from pathlib import Path

# gRPC's C core must cooperate with gevent before any channel exists (Locust runs users as greenlets).
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import gevent  # noqa: E402
import numpy as np  # noqa: E402
from locust import User, between, events, task  # noqa: E402

from contract import DEFAULT_MODEL, ENSEMBLE_INPUT, ENSEMBLE_OUTPUT, is_image_name, tta_model  # noqa: E402
from load_tests.thresholds import check, load_thresholds  # noqa: E402
from waste_client import Classifier, ClassifierError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = REPO_ROOT / "samples" / "garbage12"
INPUT_NAME, OUTPUT_NAME = ENSEMBLE_INPUT, ENSEMBLE_OUTPUT
log = logging.getLogger("load_tests")


class OverloadRejected(Exception):
    """The server refused the request because a queue was full (UNAVAILABLE)."""


class RequestFailed(Exception):
    """Any other failure: a wrong answer, a decode error, a crash, a timeout."""


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--grpc-url", default="", help="host:port of Triton's gRPC endpoint")
    parser.add_argument("--http-url", default="", help="host:port of Triton's HTTP endpoint")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="plain ensemble; TTA is <model>_tta")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of images to send")
    parser.add_argument("--plain-weight", type=int, default=3, help="weight of plain requests")
    parser.add_argument("--tta-weight", type=int, default=1, help="weight of TTA requests (0: none)")
    parser.add_argument("--think-time", type=float, default=0.0,
                        help="max seconds a user waits between requests (0: closed loop)")
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--reject-backoff", type=float, default=0.5,
                        help="seconds a user pauses after an UNAVAILABLE, like a client's retry backoff")
    parser.add_argument("--thresholds", default=str(Path(__file__).with_name("thresholds.toml")))
    parser.add_argument("--scenario", default="default", help="table of the thresholds file")
    parser.add_argument("--threshold-override", action="append", default=[],
                        help="KEY=VALUE replacing one threshold of the scenario")
    parser.add_argument("--result-file", default="", help="JSON of the threshold checks")


def _load_images(folder: str) -> list[bytes]:
    paths = sorted(p for p in Path(folder).rglob("*") if is_image_name(p.name))
    if not paths:
        raise FileNotFoundError(f"no images under {folder}")
    return [p.read_bytes() for p in paths]


def _is_overload(exc: Exception) -> bool:
    # ClassifierError names HTTP 503/429 and gRPC's codes alike.
    return isinstance(exc, ClassifierError) and (
        exc.status in ("UNAVAILABLE", "RESOURCE_EXHAUSTED") or "queue size" in exc.message.lower())


class TritonUser(User):
    """Abstract user: one `waste_client.Classifier` per user, one image per request, plain or TTA by weight."""

    abstract = True
    protocol = ""
    wait_time = between(0, 0)

    def on_start(self):
        options = self.environment.parsed_options
        if options.think_time > 0:
            self.wait_time = between(0, options.think_time)
        self.images = itertools.cycle(_shared_images(options.images))
        # Each user starts at a different image so concurrent requests differ.
        for _ in range(random.randrange(len(_shared_images(options.images)))):
            next(self.images)
        self.models = [options.model] * options.plain_weight + [tta_model(options.model)] * options.tta_weight
        self.timeout = options.request_timeout
        self.client = self.make_client(options)

    def on_stop(self):
        self.client.close()

    def make_client(self, options):
        url = getattr(options, f"{self.protocol}_url")
        if not url:
            raise ValueError(f"{type(self).__name__} needs --{self.protocol}-url")
        # retries=0: a refusal must be counted as one, not hidden behind the client's retries.
        return Classifier(url, protocol=self.protocol, timeout=self.timeout, retries=0)

    def infer(self, model: str, data: bytes):
        inputs = {INPUT_NAME: np.array([[data]], dtype=object)}
        return self.client.infer(model, inputs, [OUTPUT_NAME])[OUTPUT_NAME]

    @task
    def classify(self):
        model = random.choice(self.models)
        data = next(self.images)
        exception, length = None, 0
        start = time.perf_counter()
        try:
            probabilities = self.infer(model, data)
            if probabilities.shape != (1, 12) or not np.isfinite(probabilities).all():
                raise RequestFailed(f"bad answer shape {probabilities.shape}")
            length = probabilities.nbytes
        except RequestFailed as exc:
            exception = exc
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the user
            exception = (OverloadRejected if _is_overload(exc) else RequestFailed)(str(exc)[:200])
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        self.environment.events.request.fire(
            request_type=self.protocol, name=f"{self.protocol} {model}", response_time=elapsed_ms,
            response_length=length, exception=exception, context={})
        if isinstance(exception, OverloadRejected):
            # A refusal takes ~1 ms; resending at once would turn the test into a loop measuring
            # how fast Triton says no, starving the requests that were accepted of CPU.
            gevent.sleep(self.environment.parsed_options.reject_backoff)


class GrpcUser(TritonUser):
    protocol = "grpc"


class HttpUser(TritonUser):
    protocol = "http"


_IMAGES: dict[str, list[bytes]] = {}


def _shared_images(folder: str) -> list[bytes]:
    # Read once per process, not once per user: 100 users must not read the folder 100 times.
    if folder not in _IMAGES:
        _IMAGES[folder] = _load_images(folder)
    return _IMAGES[folder]


@events.init.add_listener
def _on_init(environment, **_):
    options = environment.parsed_options
    if options is None:
        return
    _shared_images(options.images)  # fail at start, not in every user, when the folder is wrong
    environment.thresholds = load_thresholds(options.thresholds, options.scenario, options.threshold_override)


@events.quitting.add_listener
def _on_quitting(environment, **_):
    thresholds = getattr(environment, "thresholds", None)
    if thresholds is None:
        return
    result = check(environment.stats, thresholds)
    result["scenario"] = environment.parsed_options.scenario
    for line in result["lines"]:
        log.info(line)
    if environment.parsed_options.result_file:
        Path(environment.parsed_options.result_file).write_text(json.dumps(result, indent=2))
    # Locust's own rule (any failure -> 1) would fail a deliberate overload run; this one decides.
    environment.process_exit_code = 0 if result["passed"] else 1
