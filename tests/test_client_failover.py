"""Failover, retries, Ctrl-C, batches and file sizes in the client, against real servers and sockets.

Dead URLs are real: a port nobody listens on (refuses), a listening socket whose backlog is full
(never completes a connection), a socket that accepts and never answers, a tritonserver frozen
with SIGSTOP. The working URL is the real `dev_server`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from waste_client import AsyncClassifier, Classifier, ClassifierError, Prediction, RetryPolicy
from waste_client._retry import UrlPool, call_with_retry

REPO_ROOT = Path(__file__).resolve().parent.parent
GOOD = sorted((REPO_ROOT / "samples" / "garbage12").rglob("*.jpg"))[:4]
BAD = REPO_ROOT / "samples" / "bad" / "notes.jpg"
PROTOCOLS = ["grpc", "http"]


def _url(server, protocol):
    return server.grpc_url if protocol == "grpc" else server.http_url


def _refusing_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def silent_url():
    """A port that never answers: listening, its backlog full, so a new connection never completes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    for c in fillers:
        c.close()
    server.close()


@pytest.fixture
def mute_url():
    """A port that accepts connections and never sends a byte (a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


# -- the URL pool and the retry rules (pure) --------------------------------------------------

def test_pool_skips_a_failed_url_and_probes_it_again_later():
    now = [0.0]
    pool = UrlPool(["a", "b", "c"], clock=lambda: now[0])
    assert [pool.pick() for _ in range(3)] == [0, 1, 2]
    pool.failed(1, "refused")
    assert [pool.pick() for _ in range(4)] == [0, 2, 0, 2]
    assert pool.pick(avoid=0) == 2
    now[0] = 1.5  # the first rest (1 s) is over: the next turn is the probe
    assert 1 in [pool.pick() for _ in range(3)]
    pool.failed(1, "refused again")  # second failure in a row: rests 2 s
    now[0] = 3.0
    assert 1 not in [pool.pick() for _ in range(4)]
    pool.succeeded(1)
    assert 1 in [pool.pick() for _ in range(3)]
    for i in range(3):
        pool.failed(i, "all down")
    assert pool.pick() in (0, 1, 2)  # all resting: still try the one back first


def test_crashed_backend_is_retried_once_only():
    calls = []

    def crashing():
        calls.append(1)
        raise InferenceServerException("in ensemble 'dev', Stub process 'preprocess_0_0' is not healthy.",
                                       "StatusCode.INTERNAL")

    sleeps = []
    with pytest.raises(ClassifierError) as info:
        call_with_retry(crashing, RetryPolicy(retries=40, backoff=0.001), sleep=sleeps.append)
    assert len(calls) == 2
    assert sleeps == [2.0]  # long enough for the launcher's supervisor to restart the server
    calls.clear()
    with pytest.raises(ClassifierError):
        call_with_retry(crashing, RetryPolicy(retries=0), sleep=sleeps.append)
    assert len(calls) == 1  # retries=0 means no retry at all (the app, the load tests)
    assert info.value.status == "INTERNAL" and "crashed twice" in info.value.message


def test_a_request_that_times_out_twice_is_not_retried_again():
    calls = []

    def slow():
        calls.append(1)
        raise InferenceServerException("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED")

    with pytest.raises(ClassifierError) as info:
        call_with_retry(slow, RetryPolicy(retries=40, backoff=0.001), sleep=lambda s: None)
    assert info.value.status == "DEADLINE_EXCEEDED" and len(calls) == 2


def test_every_retry_is_logged_with_url_and_reason(caplog):
    url = _refusing_url()
    with caplog.at_level(logging.WARNING, logger="waste_client"):
        with Classifier(url, "http", retries=2, backoff=0.01) as clf:
            with pytest.raises(ClassifierError) as info:
                clf.classify(b"x")
    assert info.value.status == "UNAVAILABLE"
    retries = [r for r in caplog.records if r.levelno == logging.WARNING and "retry" in r.getMessage()]
    assert len(retries) == 2
    assert all(url in r.getMessage() and "UNAVAILABLE" in r.getMessage() for r in retries)


# -- dead URLs beside a live one --------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ready_when_any_url_is_ready_and_dead_urls_are_skipped(dev_server, protocol, silent_url):
    urls = [_refusing_url(), silent_url, _url(dev_server, protocol)]
    with Classifier(urls, protocol, model="dev", retries=3, backoff=0.01, timeout=10,
                    connect_timeout=0.5) as clf:
        started = time.monotonic()
        assert clf.is_ready()
        for path in GOOD * 2:
            assert clf.classify(path).label
        # At most one connect timeout per dead URL, then it is skipped: not one per request.
        assert time.monotonic() - started < 4
        assert clf._pool_urls.live() == [2]
    with Classifier(urls[:2], protocol, model="dev", connect_timeout=0.5) as dead:
        assert dead.is_ready() is False


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_connect_timeout_is_unavailable_not_deadline(protocol, silent_url):
    with Classifier(silent_url, protocol, retries=0, timeout=10, connect_timeout=0.5) as clf:
        started = time.monotonic()
        with pytest.raises(ClassifierError) as info:
            clf.classify(b"x")
    assert info.value.transient
    assert time.monotonic() - started < 2
    assert info.value.status == "UNAVAILABLE"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_hung_server_times_out_and_the_retry_goes_to_the_next_url(dev_server, protocol, mute_url):
    with Classifier([mute_url, _url(dev_server, protocol)], protocol, model="dev", timeout=1.5,
                    retries=2, backoff=0.01) as clf:
        preds = [clf.classify(p) for p in GOOD]
    assert all(isinstance(p, Prediction) for p in preds)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_failover(dev_server, protocol, silent_url):
    async def main():
        async with AsyncClassifier([_refusing_url(), silent_url, _url(dev_server, protocol)], protocol,
                                   model="dev", retries=3, backoff=0.01, connect_timeout=0.5) as clf:
            assert await clf.is_ready()
            return [await clf.classify(p) for p in GOOD]

    assert all(isinstance(p, Prediction) for p in asyncio.run(main()))


CTRL_C_SCRIPT = """
import sys, time
from waste_client import Classifier
url, protocol = sys.argv[1], sys.argv[2]
clf = Classifier(url, protocol, retries=40, backoff=1.0, max_backoff=5.0, timeout=30)
items = [b"x"] * 100
print("started", flush=True)
try:
    with clf:
        for _ in clf.classify_many(items, max_in_flight=8):
            pass
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


ASYNC_CTRL_C_SCRIPT = """
import asyncio, sys
from waste_client import AsyncClassifier
url, protocol = sys.argv[1], sys.argv[2]

async def main():
    async with AsyncClassifier(url, protocol, retries=40, backoff=1.0, max_backoff=5.0, timeout=30) as clf:
        print("started", flush=True)
        async for _ in clf.classify_many([b"x"] * 100, max_in_flight=8):
            pass

try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("dead, script", [("refusing", CTRL_C_SCRIPT), ("mute", CTRL_C_SCRIPT),
                                          ("mute", ASYNC_CTRL_C_SCRIPT)], ids=["refusing", "mute", "mute-async"])
def test_ctrl_c_during_an_outage_exits_within_2_s(protocol, dead, script, mute_url, ctrl_c_popen):
    url = _refusing_url() if dead == "refusing" else mute_url
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "client"), str(REPO_ROOT)])}
    process = ctrl_c_popen([sys.executable, "-c", script, url, protocol], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "started"
        time.sleep(1.5)  # every worker is now sleeping through a backoff or waiting on a socket
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        process.wait(10)
        took = time.monotonic() - started
    finally:
        process.kill()
    assert process.returncode == 130, process.stderr.read()[-2000:]
    assert took < 2.0


# -- batches ----------------------------------------------------------------------------------

def _counted_at_least(server, count: int, wait_s: float = 5.0) -> tuple:
    """The dev ensemble's statistics once at least ``count`` requests are counted (or ``wait_s`` passed)."""
    deadline = time.monotonic() + wait_s
    stats = _dev_requests(server)
    while stats[0] < count and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = _dev_requests(server)
    return stats


def _dev_requests(server) -> tuple:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics("dev", as_json=True)["model_stats"]
    finally:
        client.close()
    ok = sum(int(m["inference_stats"]["success"].get("count", 0)) for m in stats)
    failed = sum(int(m["inference_stats"]["fail"].get("count", 0)) for m in stats)
    return ok, failed


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_batch_is_one_request_with_one_result_per_item(dev_server, protocol):
    with Classifier(_url(dev_server, protocol), protocol, model="dev") as clf:
        start = _dev_requests(dev_server)
        singles = [clf.classify(p) for p in GOOD]
        # Triton counts a request just after answering it: wait until every single is counted, or
        # a late one lands in the batch's count (a loaded CI box once showed 2 for the batch).
        before = _counted_at_least(dev_server, start[0] + len(GOOD))
        batch = clf.classify_batch([*GOOD, GOOD[1].read_bytes()])
        _counted_at_least(dev_server, before[0] + 1)
        time.sleep(0.2)
        after = _dev_requests(dev_server)
    assert after[0] - before[0] == 1  # five photos, one inference request
    assert [p.top_k for p in batch] == [p.top_k for p in singles] + [singles[1].top_k]
    assert [p.source for p in batch] == [str(p) for p in GOOD] + [None]
    assert all(p.model == "dev" and len(p.top_k) == 3 for p in batch)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_batch_bad_neighbour_is_resent_singly(dev_server, protocol, tmp_path):
    missing = tmp_path / "missing.jpg"
    items = [GOOD[0], BAD, missing, GOOD[1]]
    with Classifier(_url(dev_server, protocol), protocol, model="dev") as clf:
        results = clf.classify_batch(items, top_k=2)
        assert asyncio.run(_async_batch(_url(dev_server, protocol), protocol, items)) == [
            r.status if isinstance(r, ClassifierError) else r.top_k for r in results]
    assert isinstance(results[0], Prediction) and isinstance(results[3], Prediction)
    assert results[1].status == "INVALID_ARGUMENT"
    assert results[2].status == "FILE_NOT_FOUND"


async def _async_batch(url, protocol, items):
    async with AsyncClassifier(url, protocol, model="dev") as clf:
        results = await clf.classify_batch(items, top_k=2)
    return [r.status if isinstance(r, ClassifierError) else r.top_k for r in results]


def test_classify_batch_of_an_unknown_model_fails_each_item_once(dev_server):
    with Classifier(dev_server.grpc_url, model="no_such_model") as clf:
        results = clf.classify_batch(GOOD)
    assert [r.status for r in results] == ["NOT_FOUND"] * len(GOOD)


# -- file sizes -------------------------------------------------------------------------------

def test_huge_file_is_refused_before_reading(dev_server, tmp_path):
    huge = tmp_path / "huge.tif"
    with open(huge, "wb") as f:  # sparse: 3 GiB on paper, nothing on disk
        f.truncate(3 * 1024 ** 3)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Classifier(dev_server.grpc_url, model="dev") as clf:
        with pytest.raises(ClassifierError) as info:
            clf.classify(huge)
        results = clf.classify_batch([huge, GOOD[0], huge])
        many = list(clf.classify_many([huge] * 16 + [GOOD[0]], max_in_flight=16))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert info.value.status == "INVALID_ARGUMENT"
    assert str(32 * 1024 * 1024) in info.value.message  # names the limit
    assert [type(r).__name__ for r in results] == ["ClassifierError", "Prediction", "ClassifierError"]
    assert sum(r.ok for r in many) == 1
    assert grown_mb < 200, f"peak memory grew {grown_mb:.0f} MB"
    with Classifier(dev_server.grpc_url, model="dev", max_bytes=100) as small:
        with pytest.raises(ClassifierError) as info:
            small.classify(GOOD[0].read_bytes())
    assert info.value.status == "INVALID_ARGUMENT" and "100 bytes" in info.value.message
