"""Where a classifier's time goes inside ONNX Runtime: milliseconds per image by kind of node.

    .venv/bin/python -m benchmarks.op_profile MODEL.onnx [--threads 1] [--batch 4] [--runs 20]

Convolutions are split into pointwise (1x1), depthwise (group > 1) and full ones, because they
respond differently to INT8 (BENCHMARKS.md, "Where the time goes").
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from contract import CHANNELS, CLASSIFIER_INPUT as INPUT_NAME, INPUT_SIZE


def node_kinds(optimized_onnx: Path) -> dict:
    """Node name -> "Conv pw|dw|full" for convolutions (any op type containing Conv), else the op type."""
    import onnx

    kinds = {}
    for node in onnx.load(str(optimized_onnx)).graph.node:
        kind = node.op_type
        if "Conv" in node.op_type:
            attrs = {a.name: a for a in node.attribute}
            group = attrs["group"].i if "group" in attrs else 1
            kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else None
            kind += " dw" if group > 1 else " pw" if kernel == [1, 1] else " full"
        kinds[node.name] = kind
    return kinds


def profile(model: Path, threads: int = 1, batch: int = 4, runs: int = 20) -> list[tuple[str, float]]:
    """[(kind, ms per image)], largest first, from ORT's own profiler over `runs` runs."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="op-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        # The optimized graph names the fused nodes the profiler reports.
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        kinds = node_kinds(Path(tmp) / "optimized.onnx")
        pixels = np.random.default_rng(0).integers(0, 256, (batch, INPUT_SIZE, INPUT_SIZE, CHANNELS), dtype=np.uint8)
        session.run(None, {INPUT_NAME: pixels})
        for _ in range(runs):
            session.run(None, {INPUT_NAME: pixels})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter = collections.Counter()
    suffix = "_kernel_time"
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith(suffix):
            name = event["name"][: -len(suffix)]
            totals[kinds.get(name, event["args"].get("op_name", name))] += event["dur"]
    # The warm-up run is profiled too: runs + 1 runs of `batch` images.
    per_image = 1e-3 / ((runs + 1) * batch)
    return [(kind, us * per_image) for kind, us in totals.most_common()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    rows = profile(args.model, args.threads, args.batch, args.runs)
    total = sum(ms for _, ms in rows)
    print(f"| node kind | ms per image | share |\n|---|---:|---:|")
    for kind, ms in rows:
        print(f"| {kind} | {ms:.2f} | {ms / total:.0%} |")
    print(f"| total | {total:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
