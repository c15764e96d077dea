"""Why the openvino stand-in turns CPU pinning off: `python -m benchmarks.openvino_pinning`.

Two processes (as two single-thread instances of one model are two stub processes), each
compiling the served FP32 classifier with the stand-in's properties at one thread, run batch-1
inferences at once; their summed rate is printed with OpenVINO's default pinning and with it off.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time

import numpy as np

from contract import CLASSIFIER_INPUT, INPUT_SIZE


def _rate(model: str, pinning: bool | None, runs: int, queue) -> None:
    import openvino as ov

    core = ov.Core()
    properties = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "bf16"}
    if pinning is not None:
        properties["ENABLE_CPU_PINNING"] = pinning
    request = core.compile_model(core.read_model(model), "CPU", properties).create_infer_request()
    pixels = np.random.default_rng(0).integers(0, 255, (1, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    for _ in range(10):
        request.infer({CLASSIFIER_INPUT: pixels})
    start = time.perf_counter()
    for _ in range(runs):
        request.infer({CLASSIFIER_INPUT: pixels})
    queue.put(runs / (time.perf_counter() - start))


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m benchmarks.openvino_pinning", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="model_repository/effnet_lite0_classifier/2/model.onnx")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=150)
    args = parser.parse_args(argv)
    print("| pinning | processes | images/s (sum) |\n|---|---:|---:|")
    for pinning, label in ((None, "OpenVINO's default"), (False, "off (the stand-in)")):
        queue = mp.Queue()
        procs = [mp.Process(target=_rate, args=(args.model, pinning, args.runs, queue)) for _ in range(args.processes)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        print(f"| {label} | {args.processes} | {sum(queue.get() for _ in procs):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
