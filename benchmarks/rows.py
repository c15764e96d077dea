"""The benchmark's rows: each function measures one way of classifying the same images."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import CpuMeter, Row, metrics_delta, triton_metrics
from contract import CLASSIFIER_INPUT, CLASSIFIER_OUTPUT, ENSEMBLE_INPUT, ENSEMBLE_OUTPUT, INPUT_SIZE, tta_model

INPUT_NAME, OUTPUT_NAME = CLASSIFIER_INPUT, CLASSIFIER_OUTPUT


# -- in-process onnxruntime ------------------------------------------------------------------------

def ort_session(onnx_path, threads: int = 0):
    """An ORT session set up like the server's stand-in backend (sequential, all optimisations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def ort_pixels(session, pixels: np.ndarray, batch: int, key: str, what: str, threads: int = 0) -> Row:
    """Row 1 style: pre-decoded pixels, `batch` images per session.run."""
    session.run([OUTPUT_NAME], {INPUT_NAME: pixels[:batch]})  # warm-up: first run allocates
    latencies = []
    with CpuMeter() as meter:
        start = time.perf_counter()
        for i in range(0, len(pixels), batch):
            t = time.perf_counter()
            session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i:i + batch]})
            latencies.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
    return meter.fill(Row(key, what, len(pixels), seconds, latencies, note=_setting(batch, threads),
                          params={"batch": batch, "threads": threads}))


def ort_pixels_every_core(sessions: list, pixels: np.ndarray, batch: int, key: str, what: str) -> Row:
    """The classifier as the server runs it at full load: one single-thread session per core, all at
    once (ORT releases the GIL), each over all `pixels`, `batch` images per run.

    A single-thread row measured alone has the other cores' caches, memory bandwidth and clock
    headroom to itself; this one shares them as the server's instances do.
    """
    import threading

    for session in sessions:
        session.run([OUTPUT_NAME], {INPUT_NAME: pixels[:batch]})
    latencies: list = []
    start_gate = threading.Barrier(len(sessions))

    def loop(session):
        start_gate.wait()
        for i in range(0, len(pixels), batch):
            t = time.perf_counter()
            session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i:i + batch]})
            latencies.append(time.perf_counter() - t)

    workers = [threading.Thread(target=loop, args=(session,)) for session in sessions]
    with CpuMeter() as meter:
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - start
    return meter.fill(Row(key, what, len(sessions) * len(pixels), seconds, latencies,
                          note=f"{len(sessions)} sessions at once, batch {batch}, 1 ORT thread each",
                          params={"batch": batch, "threads": 1, "sessions": len(sessions)}))


def _setting(batch: int, threads: int) -> str:
    return f"batch {batch}" + (f", {threads} ORT thread{'s' * (threads > 1)}" if threads else "")


def ort_files(session, encoded: list[bytes], batch: int, key: str, what: str, threads: int = 0) -> Row:
    """Row 2 style: decode + letterbox (the server's imaging code) then session.run, per batch."""
    from training.preprocessing import imaging

    warm = np.stack([imaging.preprocess_bytes(b) for b in encoded[:batch]])
    session.run([OUTPUT_NAME], {INPUT_NAME: warm})
    latencies = []
    with CpuMeter() as meter:
        start = time.perf_counter()
        for i in range(0, len(encoded), batch):
            t = time.perf_counter()
            pixels = np.stack([imaging.preprocess_bytes(b) for b in encoded[i:i + batch]])
            session.run([OUTPUT_NAME], {INPUT_NAME: pixels})
            latencies.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
    return meter.fill(Row(key, what, len(encoded), seconds, latencies, note=_setting(batch, threads),
                          params={"batch": batch, "threads": threads}))


# -- Keras, the original system's way ----------------------------------------------------------------

def keras_one_by_one(encoded: list[bytes], keras_model: str | None, key: str, what: str) -> Row:
    """Row 7: decode one file, `model.predict` on it, next file (the pre-Triton service's loop)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from training.model import build_model, serving_model
    from training.preprocessing import imaging

    if keras_model:
        model = keras.saving.load_model(keras_model, compile=False)
        note = Path(keras_model).name
    else:
        # Same architecture and FLOPs as the ONNX rows; only the head's weights differ.
        model = build_model("efficientnet_lite0", INPUT_SIZE, "imagenet")
        note = "efficientnet_lite0 built from training.model (ImageNet backbone)"
    if "uint8" not in str(model.inputs[0].dtype):
        model = serving_model(model)  # the served graph: uint8 pixels in, as in every other row
    model.predict(imaging.preprocess_bytes(encoded[0])[None], verbose=0)
    latencies = []
    with CpuMeter() as meter:
        start = time.perf_counter()
        for data in encoded:
            t = time.perf_counter()
            model.predict(imaging.preprocess_bytes(data)[None], verbose=0)
            latencies.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
    return meter.fill(Row(key, what, len(encoded), seconds, latencies, note=note))


# -- arithmetic limit ---------------------------------------------------------------------------------

def model_flops(onnx_path) -> float:
    """Multiply-add FLOPs (2 per MAC) of one image through the Conv/Gemm/MatMul nodes."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    for tensor in model.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[value.name] = [d.dim_value for d in value.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    flops = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight, out = shapes.get(node.input[1]), shapes.get(node.output[0])
            if not weight or not out or 0 in out:
                raise ValueError(f"no static shape for Conv {node.name}")
            # weight [Cout, Cin/group, kh, kw]; out [N, Cout, H, W] (NCHW after tf2onnx's transposes)
            flops += 2.0 * np.prod(out) * np.prod(weight[1:])
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if not a or not out:
                raise ValueError(f"no static shape for {node.op_type} {node.name}")
            transposed = node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if transposed else a[-1]
            flops += 2.0 * np.prod(out) * k
    return float(flops)


def matmul_flops_per_s(n: int = 1024, seconds: float = 2.0) -> float:
    """Sustained float32 matmul rate of numpy's BLAS on all cores (best of repeated n x n products)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        a @ b
        best = max(best, 2.0 * n ** 3 / (time.perf_counter() - t))
    return best


# -- Triton ------------------------------------------------------------------------------------------

def triton_bulk(servers, protocol: str, model: str, folder: Path, in_flight: int, key: str,
                what: str, warmup: list | None = None) -> tuple[Row, list[dict]]:
    """Rows 3-6: the bulk scorer's own code path (`score_folder` with a `Classifier`), one photo
    per request, so that these rows keep measuring the server at `in_flight` single-photo requests
    (batching on/off, one request alone, INT8 vs FP32); the scorer's batched defaults are rows SC.

    Each request is timed by subclassing the client, so the latency is the client's view of one
    request; the Triton per-model counters over the run say where the server spent it.
    """
    from waste_client import Classifier
    from waste_client.score import score_folder

    def timed(name):
        def call(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return getattr(Classifier, name)(self, *args, **kwargs)
            finally:
                self.latencies.append(time.perf_counter() - t)
        return call

    class TimedClassifier(Classifier):
        latencies: list = []
        # Both ways a request leaves the client: one photo, or a batch (the scorer's engine).
        classify = timed("classify")
        classify_batch = timed("classify_batch")

    urls = [s.grpc_url if protocol == "grpc" else s.http_url for s in servers]
    with TimedClassifier(urls, protocol=protocol, model=model, retries=0,
                         concurrency=in_flight) as client:
        client.latencies = []
        for item in client.classify_many(warmup or [], max_in_flight=in_flight):
            if not item.ok:
                raise RuntimeError(f"warm-up failed: {item.error}")
        client.latencies = []
        before = [triton_metrics(s.metrics_url) for s in servers]
        with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
            with CpuMeter([s._process.pid for s in servers]) as meter:
                summary = score_folder(str(folder), client, os.path.join(tmp, "out.csv"),
                                       in_flight=in_flight, batch_size=1, progress=False)
        after = [triton_metrics(s.metrics_url) for s in servers]
    if summary.errors:
        raise RuntimeError(f"{key}: {summary.errors} of {summary.scored} images failed")
    note = f"{protocol}, 1 photo/request, {in_flight} in flight" + (f", {len(servers)} servers" if len(servers) > 1 else "")
    row = meter.fill(Row(key, what, summary.scored, summary.elapsed, list(client.latencies), note=note))
    return row, metrics_delta(before[0], after[0])


def start_servers(stack: contextlib.ExitStack, repositories: list, cache_bytes: list | None = None) -> list:
    """Start one tritonserver per repository, concurrently; `stack` stops them all on exit.

    `cache_bytes[i]` is server i's response cache size (`--cache-config local,size=N`; 0: none).
    """
    from concurrent.futures import ThreadPoolExecutor

    from server.launch import TritonServer

    sizes = cache_bytes or [0] * len(repositories)
    servers = [TritonServer(repo, timeout=300, cache_bytes=size) for repo, size in zip(repositories, sizes)]
    for server in servers:
        stack.callback(server.stop)
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda s: s.start(), servers))
    return servers


def warm_up(server, name: str, paths: list[str]) -> None:
    """A few requests to the plain and TTA ensembles: first runs allocate arenas and load code."""
    from waste_client import Classifier

    for model in (name, tta_model(name)):
        with Classifier(server.grpc_url, model=model, retries=0, concurrency=4) as client:
            for item in client.classify_many(paths, max_in_flight=4):
                if not item.ok:
                    raise RuntimeError(f"warm-up of {model} failed: {item.error}")


# -- preprocessing alone -----------------------------------------------------------------------------

def preprocess_only(imaging_module, encoded: list[bytes], key: str, what: str, *, draft: bool = True,
                    note: str = "1 image per call, 1 thread") -> Row:
    """Row 2p: the `preprocess` model's work (decode, EXIF, trim, letterbox) one image per call.

    `draft=False` decodes JPEGs at full size (the server decodes at the smallest DCT scale that
    keeps 224 px), to measure what draft mode buys on large photos.
    """
    m = imaging_module
    if draft:
        run = m.preprocess_bytes
    else:
        def run(data):
            return m.letterbox(m.trim_background(m.decode_image(data, draft_size=None)))
    run(encoded[0])
    latencies = []
    with CpuMeter() as meter:
        start = time.perf_counter()
        for data in encoded:
            t = time.perf_counter()
            run(data)
            latencies.append(time.perf_counter() - t)
        seconds = time.perf_counter() - start
    return meter.fill(Row(key, what, len(encoded), seconds, latencies, note=note))


def phone_sized(encoded: list[bytes], size=(4032, 3024), quality: int = 90) -> list[bytes]:
    """The photos enlarged to a 12 MP phone camera's size and re-encoded as JPEG (for row 2d)."""
    import io

    from PIL import Image

    out = []
    for data in encoded:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(
            buffer, "JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def triton_shm_loop(server, model: str, encoded: list[bytes], in_flight: int, key: str, what: str,
                    *, shared_memory: bool) -> tuple[Row, list[dict]]:
    """Rows 3m/3m0: a plain gRPC loop with or without system shared memory for the input.

    A client on the server's host can hand the encoded file over in a registered /dev/shm region
    instead of inside the gRPC message. Both variants run the same loop (one region per worker
    thread, `in_flight` threads), so the difference is the transport alone; the product's bulk
    scorer (rows 3/3r) does not use shared memory.
    """
    import itertools
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as grpcclient
    import tritonclient.utils.shared_memory as shm
    from tritonclient.utils import serialize_byte_tensor

    client = grpcclient.InferenceServerClient(server.grpc_url)
    regions = []
    size = max(map(len, encoded)) + 64
    if shared_memory:
        for i in range(in_flight):
            name = f"bench_{os.getpid()}_{key}_{i}"
            handle = shm.create_shared_memory_region(name, "/" + name, size)
            client.register_system_shared_memory(name, "/" + name, size)
            regions.append((name, handle))
    slots, local = itertools.count(), threading.local()
    latencies: list = []

    def one(data: bytes) -> None:
        inp = grpcclient.InferInput(ENSEMBLE_INPUT, [1, 1], "BYTES")
        array = np.array([[data]], dtype=np.object_)
        t = time.perf_counter()
        if shared_memory:
            if not hasattr(local, "slot"):
                local.slot = next(slots)
            name, handle = regions[local.slot]
            serialized = serialize_byte_tensor(array)
            shm.set_shared_memory_region(handle, [serialized])
            inp.set_shared_memory(name, len(serialized.item()))
        else:
            inp.set_data_from_numpy(array)
        client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(ENSEMBLE_OUTPUT, class_count=5)])
        latencies.append(time.perf_counter() - t)

    try:
        with ThreadPoolExecutor(in_flight) as pool:
            list(pool.map(one, encoded[:in_flight]))  # warm-up: connections, regions
            latencies.clear()
            before = triton_metrics(server.metrics_url)
            with CpuMeter([server._process.pid]) as meter:
                start = time.perf_counter()
                list(pool.map(one, encoded))
                seconds = time.perf_counter() - start
            after = triton_metrics(server.metrics_url)
    finally:
        for name, handle in regions:
            with contextlib.suppress(Exception):
                client.unregister_system_shared_memory(name)
            shm.destroy_shared_memory_region(handle)
        client.close()
    note = f"grpc, {in_flight} in flight" + (", input in system shared memory" if shared_memory else "")
    row = meter.fill(Row(key, what, len(encoded), seconds, latencies, note=note))
    return row, metrics_delta(before, after)
