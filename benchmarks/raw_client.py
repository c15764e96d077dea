"""A raw asyncio tritonclient loop over a folder's files: the scorer command's yardstick.

    python -m benchmarks.raw_client FOLDER --url HOST:PORT --model NAME [--per-request 8] [--in-flight 4]

The fastest client we know how to write and nothing of ours: tritonclient's asyncio gRPC client,
`per_request` photos per request, `in_flight` requests outstanding. `benchmarks.raw_loop` runs it
inside the benchmark (`raw_asyncio_loop`) and as a whole process (`raw_command`). It imports only
what such a client needs, so the whole-process row is not slowed by the benchmark's own modules.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from contract import ENSEMBLE_INPUT, ENSEMBLE_OUTPUT

#: Top-k the raw loop asks the server for, as the scorer does (waste_client.DEFAULT_TOP_K).
TOP_K = 3


def request_batches(items: list, per_request: int) -> list[list]:
    """`items` cut into requests of `per_request` (the last one shorter), order kept."""
    if per_request < 1:
        raise ValueError("per_request must be >= 1")
    return [items[i:i + per_request] for i in range(0, len(items), per_request)]


async def drive(url: str, model: str, batches: list[list[bytes]], in_flight: int, latencies: list) -> int:
    import tritonclient.grpc.aio as grpcaio

    client = grpcaio.InferenceServerClient(url)
    pending = iter(batches)
    answered = 0

    async def worker():
        nonlocal answered
        # One shared iterator: each worker takes the next request as soon as its previous one is
        # answered, so exactly `in_flight` requests stay outstanding until the list runs out.
        for batch in pending:
            tensor = grpcaio.InferInput(ENSEMBLE_INPUT, [len(batch), 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[data] for data in batch], dtype=np.object_))
            output = grpcaio.InferRequestedOutput(ENSEMBLE_OUTPUT, class_count=TOP_K)
            t = time.perf_counter()
            result = await client.infer(model, [tensor], outputs=[output])
            latencies.append(time.perf_counter() - t)
            answered += result.as_numpy(ENSEMBLE_OUTPUT).shape[0]

    try:
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    finally:
        await client.close()
    return answered


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--url", required=True, help="the server's gRPC host:port")
    parser.add_argument("--model", required=True, help="the ensemble")
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=4)
    args = parser.parse_args(argv)
    encoded = [p.read_bytes() for p in sorted(args.folder.rglob("*")) if p.is_file()]
    answered = asyncio.run(drive(args.url, args.model, request_batches(encoded, args.per_request),
                                  args.in_flight, []))
    # One JSON line for a person reading the log; the caller judges by the exit code.
    sys.stdout.write(json.dumps({"photos": len(encoded), "answered": answered}) + "\n")
    return 0 if answered == len(encoded) else 1


if __name__ == "__main__":
    sys.exit(main())
