"""waste_client library: pure unit tests, then against the real `dev_server` (gRPC and HTTP)."""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from waste_client import AsyncClassifier, Classifier, ClassifierError, ClientSettings, Prediction, RetryPolicy
from waste_client._errors import normalize_status, to_classifier_error
from waste_client._prediction import parse_class_entry, parse_classification
from waste_client._request import config_threshold, normalize_urls, read_input, ready_models
from waste_client._retry import UrlPool, call_with_retry

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
LABELS = (REPO_ROOT / "model_repository" / "effnet_lite0" / "labels.txt").read_text().split()
GOOD = sorted((SAMPLES / "garbage12").rglob("*.jpg"))[:4]
BAD = SAMPLES / "bad" / "notes.jpg"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- pure unit tests ---------------------------------------------------------------------------

def test_parse_class_entry_formats():
    assert parse_class_entry(b"0.75:7:paper") == ("paper", 0.75)
    assert parse_class_entry("0.5:3:a:b") == ("a:b", 0.5)  # a ':' inside a label survives
    assert parse_class_entry(b"0.25:4") == ("4", 0.25)     # output without a label file
    with pytest.raises(ClassifierError) as info:
        parse_class_entry(b"garbage")
    assert info.value.status == "INTERNAL"


def test_parse_classification_sorts_best_first():
    p = parse_classification([b"0.1:0:battery", b"0.7:7:paper", b"0.2:8:plastic"], "dev", "1", "x.jpg")
    assert (p.label, p.score) == ("paper", 0.7)
    assert p.top_k == [("paper", 0.7), ("plastic", 0.2), ("battery", 0.1)]
    assert (p.model, p.version, p.source) == ("dev", "1", "x.jpg")
    with pytest.raises(Exception):
        p.label = "other"  # frozen


def test_unsure_is_the_score_below_the_threshold_and_the_label_stays():
    entries = [b"0.45:7:paper", b"0.40:3:cardboard"]
    unsure = parse_classification(entries, "dev", "1", threshold=0.5)
    assert (unsure.label, unsure.unsure, unsure.threshold) == ("paper", True, 0.5)  # the caller decides
    sure = parse_classification(entries, "dev", "1", threshold=0.45)  # equal to it is sure
    assert (sure.unsure, sure.threshold) == (False, 0.45)
    none = parse_classification(entries, "dev", "1")
    assert (none.unsure, none.threshold) == (False, None)


@pytest.mark.parametrize("value, expected", [
    ("model", "model"), ("MODEL", "model"), ("none", "none"), ("Off", "none"), ("0.25", 0.25), (" 1 ", 1.0),
    (0.9999, 0.9999), (0, 0.0),
])
def test_unsure_threshold_setting(value, expected, monkeypatch):
    assert ClientSettings(unsure_threshold=value).unsure_threshold == expected
    monkeypatch.setenv("WASTE_UNSURE_THRESHOLD", str(value))
    assert ClientSettings.from_env().unsure_threshold == expected
    assert ClientSettings().unsure_threshold == "model"  # the default


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "sure", True, None])
def test_unsure_threshold_setting_refuses_what_is_not_a_probability(value):
    with pytest.raises(ClassifierError) as info:
        ClientSettings(unsure_threshold=value)
    assert info.value.status == "INVALID_ARGUMENT"


def test_threshold_is_read_from_either_protocols_config():
    grpc_json = {"config": {"name": "m", "parameters": {"unsure_threshold": {"string_value": "0.773"}}}}
    http_json = {"name": "m", "parameters": {"unsure_threshold": {"string_value": "0.773"}}}
    assert config_threshold(grpc_json, "m") == config_threshold(http_json, "m") == 0.773
    assert config_threshold({"config": {"name": "m"}}, "m") is None
    assert config_threshold({"name": "m", "parameters": {"other": {"string_value": "1"}}}, "m") is None
    # A broken parameter must not stop classification: no threshold, and a warning.
    assert config_threshold({"parameters": {"unsure_threshold": {"string_value": "high"}}}, "m") is None
    assert config_threshold({"parameters": {"unsure_threshold": {"string_value": "7"}}}, "m") is None


@pytest.mark.parametrize("raw, expected", [
    ("StatusCode.UNAVAILABLE", "UNAVAILABLE"), ("StatusCode.INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    ("400", "INVALID_ARGUMENT"), ("404", "NOT_FOUND"), ("502", "UNAVAILABLE"), ("503", "UNAVAILABLE"),
    ("500", "INTERNAL"), (None, "UNKNOWN"),
])
def test_normalize_status(raw, expected):
    assert normalize_status(raw) == expected


@pytest.mark.parametrize("exc, status, transient", [
    (InferenceServerException("bad image", "StatusCode.INVALID_ARGUMENT"), "INVALID_ARGUMENT", False),
    (InferenceServerException("bad image", "400"), "INVALID_ARGUMENT", False),
    (InferenceServerException("busy", "503"), "UNAVAILABLE", True),
    (InferenceServerException("Connection reset by peer"), "UNAVAILABLE", True),
    (InferenceServerException("Request for unknown model: 'dev' is not found", "StatusCode.NOT_FOUND"),
     "NOT_FOUND", False),
    (InferenceServerException("Request for unknown model: 'dev' has no available versions",
                              "StatusCode.NOT_FOUND"), "UNAVAILABLE", True),
    (InferenceServerException("in ensemble 'dev', Stub process 'preprocess_0_1' is not healthy.",
                              "StatusCode.INTERNAL"), "UNAVAILABLE", True),
    (InferenceServerException("model raised", "StatusCode.INTERNAL"), "INTERNAL", False),
    (ConnectionRefusedError(111, "Connection refused"), "UNAVAILABLE", True),
    (ConnectionResetError(104, "Connection reset by peer"), "UNAVAILABLE", True),
    (asyncio.TimeoutError(), "DEADLINE_EXCEEDED", True),
    (InferenceServerException("too many requests", "429"), "RESOURCE_EXHAUSTED", True),
    (InferenceServerException("gateway timeout", "504"), "DEADLINE_EXCEEDED", True),
    (InferenceServerException("no key", "401"), "UNAUTHENTICATED", False),
    (InferenceServerException("wrong key", "403"), "PERMISSION_DENIED", False),
    # docker/serve.sh restricts the model-config API; Triton's gRPC refuses that as UNAVAILABLE.
    (InferenceServerException("This protocol is restricted, expecting header "
                              "'triton-grpc-protocol-triton-admin-key'", "StatusCode.UNAVAILABLE"),
     "PERMISSION_DENIED", False),
    (ValueError("boom"), "INTERNAL", False),
])
def test_error_translation_and_transience(exc, status, transient):
    err = to_classifier_error(exc)
    assert isinstance(err, ClassifierError)
    assert (err.status, err.transient) == (status, transient)


def test_retry_only_transient_errors():
    sleeps, calls = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError(111, "Connection refused")
        return "ok"

    policy = RetryPolicy(retries=5, backoff=0.1, max_backoff=1.0)
    assert call_with_retry(flaky, policy, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.2  # exponential cap, full jitter

    calls.clear()

    def invalid():
        calls.append(1)
        raise InferenceServerException("cannot decode", "StatusCode.INVALID_ARGUMENT")

    with pytest.raises(ClassifierError) as info:
        call_with_retry(invalid, policy, sleep=sleeps.append)
    assert info.value.status == "INVALID_ARGUMENT" and len(calls) == 1


def test_retry_gives_up_after_retries():
    calls = []

    def down():
        calls.append(1)
        raise InferenceServerException("unavailable", "StatusCode.UNAVAILABLE")

    with pytest.raises(ClassifierError) as info:
        call_with_retry(down, RetryPolicy(retries=2), sleep=lambda s: None)
    assert info.value.status == "UNAVAILABLE" and len(calls) == 3


def test_backoff_is_capped():
    policy = RetryPolicy(retries=50, backoff=0.5, max_backoff=2.0)
    assert all(0 <= policy.delay(n) <= 2.0 for n in range(50))


def test_inputs_and_urls(tmp_path):
    assert read_input(b"abc") == (b"abc", None)
    f = tmp_path / "x.jpg"
    f.write_bytes(b"xyz")
    assert read_input(f) == (b"xyz", str(f))
    with pytest.raises(ClassifierError) as info:
        read_input(tmp_path / "missing.jpg")
    assert info.value.status == "FILE_NOT_FOUND"
    with pytest.raises(ClassifierError) as info:
        read_input(tmp_path)
    assert info.value.status == "INVALID_ARGUMENT"
    with pytest.raises(ClassifierError):
        read_input(42)
    assert normalize_urls("a:1, b:2") == ["a:1", "b:2"]
    with pytest.raises(ClassifierError):
        normalize_urls("http://a:1")
    pool = UrlPool(["a", "b", "c"])
    assert [pool.pick() for _ in range(4)] == [0, 1, 2, 0]
    with pytest.raises(ClassifierError):
        Classifier("a:1", protocol="ftp")


def test_ready_models_filters_and_sorts():
    index = {"models": [{"name": "b", "version": "1", "state": "READY"},
                        {"name": "a", "version": "2", "state": "READY"},
                        {"name": "c", "state": "UNAVAILABLE"}]}
    assert [(m.name, m.version) for m in ready_models(index)] == [("a", "2"), ("b", "1")]
    assert ready_models(index["models"]) == ready_models(index)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server_is_unavailable(protocol):
    with Classifier(f"127.0.0.1:{_free_port()}", protocol, retries=1, backoff=0.01, timeout=5) as clf:
        assert clf.is_ready() is False
        with pytest.raises(ClassifierError) as info:
            clf.classify(b"abc")
    assert info.value.status == "UNAVAILABLE"


# -- against the real server -------------------------------------------------------------------

def _url(server, protocol):
    return server.grpc_url if protocol == "grpc" else server.http_url


def _check(pred: Prediction, k: int):
    assert isinstance(pred, Prediction)
    assert pred.label in LABELS and 0.0 <= pred.score <= 1.0
    assert len(pred.top_k) == k and pred.top_k[0] == (pred.label, pred.score)
    scores = [s for _, s in pred.top_k]
    assert scores == sorted(scores, reverse=True)
    assert all(label in LABELS for label, _ in pred.top_k)
    assert len({label for label, _ in pred.top_k}) == k
    assert pred.model == "dev" and pred.version == "1"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classify_path_and_bytes(dev_server, protocol):
    with Classifier(_url(dev_server, protocol), protocol, model="dev") as clf:
        assert clf.is_ready()
        by_path = clf.classify(GOOD[0], top_k=3)
        by_str = clf.classify(str(GOOD[0]), top_k=3)
        by_bytes = clf.classify(GOOD[0].read_bytes(), top_k=3)
    _check(by_path, 3)
    assert by_path.source == str(GOOD[0]) and by_bytes.source is None
    assert by_path.top_k == by_bytes.top_k == by_str.top_k


def test_grpc_and_http_agree(dev_server):
    with Classifier(dev_server.grpc_url, "grpc", model="dev") as g, \
            Classifier(dev_server.http_url, "http", model="dev") as h:
        for path in GOOD:
            assert g.classify(path, top_k=12).top_k == h.classify(path, top_k=12).top_k


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_file_is_invalid_argument_without_retry(dev_server, protocol, monkeypatch):
    import tritonclient.grpc
    import tritonclient.http
    cls = (tritonclient.grpc if protocol == "grpc" else tritonclient.http).InferenceServerClient
    original, calls = cls.infer, []

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "infer", counting)
    with Classifier(_url(dev_server, protocol), protocol, model="dev", retries=5) as clf:
        with pytest.raises(ClassifierError) as info:
            clf.classify(BAD)
    assert info.value.status == "INVALID_ARGUMENT"
    assert len(calls) == 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unknown_model_is_not_found(dev_server, protocol):
    with Classifier(_url(dev_server, protocol), protocol, model="no_such_model") as clf:
        assert clf.is_ready() is False
        with pytest.raises(ClassifierError) as info:
            clf.classify(GOOD[0])
    assert info.value.status == "NOT_FOUND"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_models_lists_dev_ensembles(dev_server, protocol):
    with Classifier(_url(dev_server, protocol), protocol, model="dev") as clf:
        models = {m.name: m for m in clf.models()}
    assert {"dev", "dev_tta"} <= set(models)
    assert models["dev"].version == "1" and models["dev"].state == "READY"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classify_many_keeps_every_item(dev_server, protocol):
    items = [*GOOD, BAD, GOOD[0].read_bytes(), *GOOD]
    with Classifier(_url(dev_server, protocol), protocol, model="dev") as clf:
        results = list(clf.classify_many(iter(items), top_k=2, max_in_flight=4))
    assert len(results) == len(items)
    assert sorted(map(str, (r.item for r in results))) == sorted(map(str, items))
    failed = [r for r in results if not r.ok]
    assert [r.item for r in failed] == [BAD]
    assert failed[0].error.status == "INVALID_ARGUMENT" and failed[0].prediction is None
    for r in results:
        if r.ok:
            _check(r.prediction, 2)


def test_round_robin_over_several_urls(dev_server):
    with Classifier([dev_server.grpc_url, dev_server.grpc_url], model="dev_tta") as clf:
        preds = [clf.classify(GOOD[0], top_k=1) for _ in range(3)]
    assert len({p.top_k[0] for p in preds}) == 1 and preds[0].model == "dev_tta"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_twin_same_answers(dev_server, protocol):
    url = _url(dev_server, protocol)
    with Classifier(url, protocol, model="dev") as clf:
        expected = {str(p): clf.classify(p, top_k=3).top_k for p in GOOD}

    async def main():
        async with AsyncClassifier(url, protocol, model="dev") as aclf:
            assert await aclf.is_ready()
            names = {m.name for m in await aclf.models()}
            one = await aclf.classify(GOOD[0].read_bytes(), top_k=3)
            with pytest.raises(ClassifierError) as info:
                await aclf.classify(BAD)
            many = [r async for r in aclf.classify_many([*GOOD, BAD], top_k=3, max_in_flight=3)]
            return names, one, info.value, many

    names, one, error, many = asyncio.run(main())
    assert {"dev", "dev_tta"} <= names
    _check(one, 3)
    assert one.top_k == expected[str(GOOD[0])]
    assert error.status == "INVALID_ARGUMENT"
    assert len(many) == len(GOOD) + 1
    for r in many:
        if r.item == BAD:
            assert r.error.status == "INVALID_ARGUMENT"
        else:
            assert r.prediction.top_k == expected[str(r.item)]


def _dev_successes(server) -> int:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics("dev", as_json=True)
    finally:
        client.close()
    return sum(int(m["inference_stats"]["success"].get("count", 0)) for m in stats["model_stats"])


def _listening_pid(url: str) -> int:
    import psutil

    port = int(url.rsplit(":", 1)[1])
    return next(c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN")


def test_two_servers_share_the_requests_and_one_covers_when_the_other_freezes_or_stops(dev_server):
    import os
    import signal
    import time

    from server.launch import TritonServer

    second = TritonServer(dev_server.model_repository).start()
    pid = _listening_pid(second.grpc_url)
    try:
        before = _dev_successes(dev_server), _dev_successes(second)
        items = [p for p in GOOD for _ in range(5)]
        with Classifier([dev_server.grpc_url, second.grpc_url], model="dev", retries=3, backoff=0.05,
                        timeout=2) as clf:
            assert all(r.ok for r in clf.classify_many(items, max_in_flight=4))
            # Triton counts a request just after answering it: wait for the last one's count.
            deadline = time.monotonic() + 5
            while True:
                spread = [_dev_successes(s) - b for s, b in zip((dev_server, second), before)]
                if sum(spread) >= len(items) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert sum(spread) == len(items) and min(spread) >= len(items) // 4
            # Frozen (SIGSTOP): the requests in flight to it time out once and go to the other
            # URL, which then takes the rest while the frozen one rests. Without the rest, half
            # of the 40 requests would wait 2 s each: >= 10 s with 4 in flight.
            os.kill(pid, signal.SIGSTOP)
            started = time.monotonic()
            assert all(r.ok for r in clf.classify_many(items * 2, max_in_flight=4))
            took = time.monotonic() - started
            assert took < 8, took
            os.kill(pid, signal.SIGCONT)
            second.stop()
            # The stopped server refuses connections; each retry goes to the next URL.
            assert all(clf.classify(p, top_k=1).label for p in GOOD)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        second.stop()


# -- "not sure": the model's threshold, through the real server -----------------------------------

def _recorded_threshold(server) -> float:
    """`unsure_threshold` of the export.json of the version the server's `dev` ensembles run."""
    import json

    return json.loads((server.model_repository / "dev_classifier" / "1" / "export.json").read_text())[
        "unsure_threshold"]


ALL_SAMPLES = sorted((SAMPLES / "garbage12").rglob("*.jpg"))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_served_config_carries_the_export_records_threshold(unsure_server, dev_server, protocol):
    import tritonclient.grpc
    import tritonclient.http

    module = tritonclient.grpc if protocol == "grpc" else tritonclient.http
    recorded = _recorded_threshold(unsure_server)
    for server, expected in ((unsure_server, recorded), (dev_server, None)):
        client = module.InferenceServerClient(_url(server, protocol))
        try:
            for model in ("dev", "dev_tta"):
                config = client.get_model_config(model, **({"as_json": True} if protocol == "grpc" else {}))
                config = config.get("config", config)
                parameter = config.get("parameters", {}).get("unsure_threshold")
                value = None if parameter is None else float(parameter["string_value"])
                assert value == expected, (server.model_repository, model)
        finally:
            client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_predictions_carry_the_models_threshold(unsure_server, protocol):
    threshold = _recorded_threshold(unsure_server)
    with Classifier(_url(unsure_server, protocol), protocol, model="dev") as clf:
        assert clf.unsure_threshold() == threshold
        predictions = clf.classify_batch(ALL_SAMPLES, top_k=3)
    assert all(isinstance(p, Prediction) for p in predictions)
    assert {p.threshold for p in predictions} == {threshold}
    assert all(p.unsure == (p.score < threshold) for p in predictions)
    # The photos lie on both sides of it, so a client that ignored the threshold would fail here.
    assert 0 < sum(p.unsure for p in predictions) < len(predictions)
    assert all(p.label == p.top_k[0][0] for p in predictions)  # the label stays the top class

    async def twin():
        async with AsyncClassifier(_url(unsure_server, protocol), protocol, model="dev") as aclf:
            return await aclf.unsure_threshold(), await aclf.classify_batch(ALL_SAMPLES, top_k=3)

    async_threshold, async_predictions = asyncio.run(twin())
    assert async_threshold == threshold
    assert [(p.unsure, p.threshold) for p in async_predictions] == [(p.unsure, p.threshold) for p in predictions]


def test_the_tta_ensemble_carries_the_same_threshold(unsure_server):
    threshold = _recorded_threshold(unsure_server)
    with Classifier(unsure_server.grpc_url, model="dev_tta") as clf:
        predictions = clf.classify_batch(ALL_SAMPLES[:8])
    assert {p.threshold for p in predictions} == {threshold}
    assert all(p.unsure == (p.score < threshold) for p in predictions)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_set_threshold_overrides_the_models_and_none_turns_it_off(unsure_server, dev_server, protocol,
                                                                     monkeypatch):
    url = _url(unsure_server, protocol)
    with Classifier(url, protocol, model="dev", unsure_threshold=0.9999) as clf:
        strict = clf.classify_batch(ALL_SAMPLES[:6])
    assert all(p.unsure and p.threshold == 0.9999 for p in strict)
    with Classifier(url, protocol, model="dev", unsure_threshold="none") as clf:
        off = clf.classify_batch(ALL_SAMPLES[:6])
        assert clf.unsure_threshold() is None
    assert all(not p.unsure and p.threshold is None for p in off)
    monkeypatch.setenv("WASTE_UNSURE_THRESHOLD", "off")
    with Classifier(url, protocol, model="dev") as clf:
        assert not clf.classify(ALL_SAMPLES[0]).unsure and clf.unsure_threshold() is None
    monkeypatch.delenv("WASTE_UNSURE_THRESHOLD")
    # A model whose config has no threshold: none applies, nothing is unsure.
    with Classifier(_url(dev_server, protocol), protocol, model="dev") as clf:
        plain = clf.classify_batch(ALL_SAMPLES[:6])
    assert all(not p.unsure and p.threshold is None for p in plain)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_threshold_is_read_once_per_model(unsure_server, protocol, monkeypatch):
    import tritonclient.grpc
    import tritonclient.grpc.aio
    import tritonclient.http
    import tritonclient.http.aio

    reads = []
    for module in ((tritonclient.grpc, tritonclient.grpc.aio) if protocol == "grpc"
                   else (tritonclient.http, tritonclient.http.aio)):
        cls = module.InferenceServerClient
        original = cls.get_model_config

        def counting(self, name, *args, _original=original, **kwargs):
            reads.append(name)
            return _original(self, name, *args, **kwargs)

        monkeypatch.setattr(cls, "get_model_config", counting)
    url = _url(unsure_server, protocol)
    with Classifier(url, protocol, model="dev", concurrency=4) as clf:
        assert all(r.ok for r in clf.classify_many(ALL_SAMPLES[:12], max_in_flight=4))
        clf.classify(ALL_SAMPLES[0])
    assert reads == ["dev"]

    async def twin():
        async with AsyncClassifier(url, protocol, model="dev") as aclf:
            return [r async for r in aclf.classify_many(ALL_SAMPLES[:12], max_in_flight=4)]

    assert all(r.ok and r.prediction.threshold is not None for r in asyncio.run(twin()))
    assert reads == ["dev", "dev"]  # one more: the asyncio classifier's own read


@pytest.fixture(scope="module")
def restricted_server(unsure_server):
    """`unsure_server`'s repository served with the model-config API restricted, as docker/serve.sh does."""
    from server.launch import TritonServer

    restricted = ("--http-restricted-api=model-config:triton-admin-key=secret",
                  "--grpc-restricted-protocol=model-config:triton-admin-key=secret")
    with TritonServer(unsure_server.model_repository, extra_args=restricted) as server:
        yield server


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_refused_config_leaves_no_threshold_without_retrying(restricted_server, protocol, caplog):
    """The production image refuses config reads: classification goes on without a threshold (said
    once at WARNING), and the refusal is not retried like an outage (gRPC reports it UNAVAILABLE)."""
    with Classifier(_url(restricted_server, protocol), protocol, model="dev", retries=5) as clf:
        with caplog.at_level("WARNING"):
            predictions = clf.classify_batch(ALL_SAMPLES[:4]) + [clf.classify(ALL_SAMPLES[0])]
    assert all(isinstance(p, Prediction) and not p.unsure and p.threshold is None for p in predictions)
    refused = [r for r in caplog.records if "not sure" in r.getMessage()]
    assert len(refused) == 1 and "PERMISSION_DENIED" in refused[0].getMessage()
    assert not [r for r in caplog.records if r.name == "waste_client._retry"]
