"""The scorer's speed options, measured: `python -m benchmarks.scorer_defaults`.

Runs the scorer command (`python -m waste_client score`) on the same photos against one
tritonserver serving the committed repository, over a grid of its options: for the local engine
`--batch-size` x `--in-flight`, for the Ray engine `--actors` x `--in-flight` at the default batch
size. Each point is the steady-state rate (images/s between 20% and 90% of the rows, so the
start-up of Python and of Ray does not count: a job of millions of photos lives in the steady
state) and the command's CPU per image there (`benchmarks.ray_engine.run_once`). Points run in
interleaved rounds (A, B, C, A, B, C) and each point reports its median, since the box is shared.
The defaults in `waste_client._engine` and `waste_client._ray` name the run that chose them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.ray_engine import PHOTOS, run_once
from contract import DEFAULT_MODEL
from server.launch import TritonServer

REPO_ROOT = Path(__file__).resolve().parent.parent


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scorer_defaults", description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1536, help="photos in each job")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per point")
    parser.add_argument("--batch-sizes", type=_ints, default=[1, 4, 8, 16])
    parser.add_argument("--in-flights", type=_ints, default=[2, 4, 8])
    parser.add_argument("--actors", type=_ints, default=[1, 2, 4], help="Ray engine points ('' = no Ray rows)")
    parser.add_argument("--ray-in-flights", type=_ints, default=[2, 4])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repository", default=str(REPO_ROOT / "model_repository"))
    args = parser.parse_args(argv)
    points = [("local", ["--batch-size", str(b), "--in-flight", str(f)])
              for b in args.batch_sizes for f in args.in_flights]
    points += [("ray", ["--actors", str(a), "--in-flight", str(f)]) for a in args.actors for f in args.ray_in_flights]
    print(f"load average at start: {os.getloadavg()}; {len(points)} points x {args.rounds} rounds, "
          f"{args.photos} photos each", flush=True)
    results: dict[int, list[dict]] = {i: [] for i in range(len(points))}
    with tempfile.TemporaryDirectory() as tmp, TritonServer(args.repository) as server:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i in range(args.photos):
            os.link(PHOTOS[i % len(PHOTOS)], folder / f"{i:06d}.jpg")
        for round_ in range(args.rounds):
            for i, (engine, extra) in enumerate(points):
                r = run_once(engine, folder, server.grpc_url, args.model, extra)
                results[i].append(r)
                print(f"round {round_ + 1} {engine} {' '.join(extra)}: {r['steady_images_per_s']:.1f} img/s, "
                      f"{r['steady_ms']:.2f} ms CPU per image", flush=True)
    print()
    print("| engine | options | steady images/s (median) | runs | scorer CPU ms/image (median) |")
    print("|---|---|---:|---|---:|")
    for i, (engine, extra) in enumerate(points):
        rates = [r["steady_images_per_s"] for r in results[i]]
        cpu = statistics.median(r["steady_ms"] for r in results[i])
        print(f"| {engine} | {' '.join(extra)} | {statistics.median(rates):.1f} | "
              f"{', '.join(f'{x:.0f}' for x in rates)} | {cpu:.2f} |")
    print(f"\nload average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
