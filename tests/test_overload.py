"""Issue 6 overload: far more clients than the dev server can serve (bounded queues).

Closed-loop asyncio clients over gRPC and HTTP keep 120 requests in flight (4 already saturate the
server), far more than its queues hold (the committed max_queue_size 64 lowered to 8 in a copy). Checked: the only failures are UNAVAILABLE queue
rejections (which waste_client treats as transient), accepted requests' p99 stays bounded by the
queue timeout, a bulk scorer running through the overload finishes without error rows, and the
server answers a request quickly once the load stops. The numbers go to RELIABILITY.md (`-s`).
"""
from __future__ import annotations

import asyncio
import io
import shutil
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from PIL import Image
from tritonclient.utils import InferenceServerException

from export.model_repository import write_repository
from server.launch import TritonServer
from waste_client import Classifier
from waste_client._errors import to_classifier_error
from waste_client._results import read_results
from waste_client.score import score_folder

OVERLOAD_S = 10.0
BASELINE_S = 3.0
#: A request passes two bounded queues (preprocess, classifier; 3 s timeout each, normally far less
#: since 64 queued requests are ~1-2 s of work) plus two executions; observed 3.4 s on the shared box.
P99_BOUND_S = 6.0
RECOVERY_BOUND_S = 5.0


def photo_1080p(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (135, 240, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((1920, 1080), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def _closed_loop(server, workers: dict[str, int], seconds: float, images: list[bytes]):
    """Keep `workers[protocol]` requests in flight for `seconds`; return per-request records."""
    records = []  # (protocol, latency s, exception or None)
    deadline = time.perf_counter() + seconds
    clients = {}
    if workers.get("grpc"):
        clients["grpc"] = grpc_aio.InferenceServerClient(server.grpc_url)
    if workers.get("http"):
        clients["http"] = http_aio.InferenceServerClient(server.http_url, conn_limit=workers["http"],
                                                         conn_timeout=60)

    async def worker(protocol: str, index: int):
        module = grpc_aio if protocol == "grpc" else http_aio
        client = clients[protocol]
        n = index
        while time.perf_counter() < deadline:
            tensor = module.InferInput("image_bytes", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[images[n % len(images)]]], dtype=object))
            n += 1
            start = time.perf_counter()
            try:
                await client.infer("dev", [tensor])
                records.append((protocol, time.perf_counter() - start, None))
            except InferenceServerException as exc:
                records.append((protocol, time.perf_counter() - start, exc))
                # A short pause like a client's first backoff; without it the load generator, on the
                # same 2 cores, would starve the server it measures.
                await asyncio.sleep(0.25)

    try:
        await asyncio.gather(*(worker(p, i) for p, count in workers.items() for i in range(count)))
    finally:
        for client in clients.values():
            await client.close()
    return records


@pytest.fixture(scope="module")
def small_queue_server(dev_server, tmp_path_factory):
    """The dev repository with every queue bounded at 8 instead of 64.

    The load generator shares the server's two cores, so 120 Python clients cannot always fill
    queues of 64 (a fresh CI run offered only the sustainable rate and nothing was refused);
    with 8 the same load is an overload on any machine, and the mechanism under test is the same.
    """
    repo = write_repository(tmp_path_factory.mktemp("small_queue_repository"), dev=["dev"],
                            common={"max_queue_size": 8})
    with TritonServer(repo) as server:
        yield server


def test_overload_sheds_with_unavailable_and_recovers(small_queue_server, tmp_path):
    dev_server = small_queue_server
    images = [photo_1080p(seed) for seed in range(4)]
    baseline = asyncio.run(_closed_loop(dev_server, {"grpc": 4}, BASELINE_S, images))
    assert all(exc is None for _, _, exc in baseline)
    sustainable = len(baseline) / BASELINE_S

    # A bulk scorer runs through the overload: it must slow down (retries with backoff), not fail.
    folder = tmp_path / "scored"
    folder.mkdir()
    for i in range(12):
        (folder / f"img{i:02d}.jpg").write_bytes(images[i % len(images)])
    out = tmp_path / "scored.jsonl"
    summaries = []

    def score():
        with Classifier(dev_server.grpc_url, model="dev", retries=60, backoff=0.2, max_backoff=2.0) as clf:
            summaries.append(score_folder(str(folder), clf, str(out), in_flight=4, progress=False))

    scorer = threading.Thread(target=score)
    started = time.perf_counter()
    scorer.start()
    records = asyncio.run(_closed_loop(dev_server, {"grpc": 100, "http": 20}, OVERLOAD_S, images))
    load_stopped = time.perf_counter()

    # Recovery: the first request after the load stops is answered within seconds.
    client = grpcclient.InferenceServerClient(dev_server.grpc_url)
    tensor = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[images[0]]], dtype=object))
    while True:
        try:
            assert client.is_server_ready() and client.is_model_ready("dev")
            client.infer("dev", [tensor])
            break
        except InferenceServerException:
            assert time.perf_counter() - load_stopped < RECOVERY_BOUND_S
            time.sleep(0.05)
    recovery = time.perf_counter() - load_stopped
    scorer.join(timeout=120)

    accepted = sorted(latency for _, latency, exc in records if exc is None)
    rejected = [exc for _, _, exc in records if exc is not None]
    offered = len(records) / OVERLOAD_S
    p99 = accepted[int(0.99 * (len(accepted) - 1))]
    print(f"\noverload: sustainable ~{sustainable:.0f} req/s (4 clients); offered {offered:.0f} req/s "
          f"by 120 clients; accepted {len(accepted)} ({len(accepted) / OVERLOAD_S:.0f}/s), rejected "
          f"{len(rejected)}; accepted p50 {accepted[len(accepted) // 2] * 1000:.0f} ms, p99 "
          f"{p99 * 1000:.0f} ms; first request after the load answered in {recovery:.2f} s; "
          f"scorer {time.perf_counter() - started:.1f} s")

    assert rejected, "no request was refused: the overload was not an overload"
    for exc in rejected:
        # Queue full ("Exceeds maximum queue size") or queue timeout ("Request timeout expired").
        status, message = str(exc.status()), exc.message()
        assert status in ("StatusCode.UNAVAILABLE", "503"), (status, message)  # 503 is HTTP's
        assert "maximum queue size" in message or "timeout" in message.lower(), message
        assert to_classifier_error(exc).transient  # so Classifier backs off and retries it
    assert len(accepted) > 0 and p99 < P99_BOUND_S
    assert recovery < RECOVERY_BOUND_S

    assert not scorer.is_alive() and summaries[0].errors == 0
    rows = read_results(str(out))
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in folder.iterdir())
    shutil.rmtree(folder)
