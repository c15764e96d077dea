"""The scorer's speed options, measured: `python -m benchmarks.scorer_defaults`.

Runs the scorer command (`python -m waste_client score`) on the same photos against one
tritonserver serving the committed repository, over a grid of its options: for the local engine
`--batch-size` x `--in-flight`, for the Ray engine `--actors` x `--in-flight` at the default batch
size. Each point is the steady-state rate (images/s between 20% and 90% of the rows, so the
start-up of Python and of Ray does not count: a job of millions of photos lives in the steady
state) and the command's CPU per image there (`benchmarks.ray_engine.run_once`). Points run in
interleaved rounds (A, B, C, A, B, C) and each point reports its median, since the box is shared.
The defaults in `waste_client._engine` and `waste_client._ray` name the run that chose them.
The table goes to `--out` (benchmarks/engines.md), which `python -m benchmarks.run` appends to
BENCHMARKS.md as a section of its own run, with its own date.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.measure import REPO_ROOT, machine_description, shown_command
from benchmarks.ray_engine import PHOTOS, run_once
from contract import DEFAULT_MODEL
from server.launch import TritonServer



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
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "engines.md"),
                        help="markdown section written here ('' = print only)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load_start = os.getloadavg()
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
    table = ["| engine | options | steady images/s (median) | each round | scorer CPU ms/image (median) | "
             "fixed CPU s per run (median) |", "|---|---|---:|---|---:|---:|"]
    medians = {}
    for i, (engine, extra) in enumerate(points):
        rate = statistics.median(r["steady_images_per_s"] for r in results[i])
        cpu = statistics.median(r["steady_ms"] for r in results[i])
        fixed = statistics.median(r["fixed_s"] for r in results[i])
        medians[i] = (rate, cpu)
        each = ", ".join(f"{r['steady_images_per_s']:.0f}" for r in results[i])
        table.append(f"| {engine} | `{' '.join(extra)}` | {rate:.1f} | {each} | {cpu:.2f} | {fixed:.1f} |")
    best = {}
    for engine in ("local", "ray"):
        mine = [i for i, (e, _) in enumerate(points) if e == engine]
        if mine:
            best[engine] = max(mine, key=lambda i: medians[i][0])
    summary = [f"- fastest {engine}: `{' '.join(points[i][1])}`, {medians[i][0]:.1f} images/s, "
               f"{medians[i][1]:.2f} ms scorer CPU per image" for engine, i in best.items()]
    if len(best) == 2:
        local, ray = best["local"], best["ray"]
        summary.append(f"- Ray engine / local engine at their best points: {medians[ray][0] / medians[local][0]:.2f}x "
                       f"the rate, {medians[ray][1] - medians[local][1]:+.2f} ms CPU per image (Ray's overhead on "
                       f"one box, where it cannot win: its actors compete with the server for the same cores)")
    command = shown_command("benchmarks.scorer_defaults", argv if argv is not None else sys.argv[1:])
    machine = machine_description()
    doc = "\n".join([
        "## The scorer's engines and speed options (separate run)", "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in "
        f"{time.perf_counter() - started:.0f} s, a run of its own (not the rounds above): compare its rows "
        f"with each other only. CPU: {machine['cpu_model']} ({machine['simd']}), {machine['logical_cores']} "
        f"logical cores; load average at start "
        f"{' '.join(f'{x:.2f}' for x in load_start)}.", "",
        f"The whole command (`python -m waste_client score`) on {args.photos} photos (the bundled samples, "
        f"hard-linked under new names) against one tritonserver serving the committed repository "
        f"(`{args.model}`), {args.rounds} interleaved rounds. Images/s and CPU per image are the "
        "steady state, between 20% and 90% of the rows written (start-up excluded: it is the fixed CPU, "
        "for Ray mostly starting Ray); CPU counts the command's whole process tree (for Ray: driver, "
        "raylet, GCS, workers, actors), not the server.", "",
        *table, "", *summary, ""])
    print(doc)
    if args.out:
        Path(args.out).write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
