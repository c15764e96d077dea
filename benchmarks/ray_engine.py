"""The Ray engine's own cost against the local engine: `python -m benchmarks.ray_engine`.

Runs the scorer command (`python -m waste_client score --json`) with `--engine local` and with
`--engine ray` (a local Ray started by the command, as a user without a cluster gets it) on the
same photos against one tritonserver serving the committed repository, and samples the CPU time
of the command's whole process tree (for Ray: raylet, GCS, workers and actors too) along with
the rows written so far. The server's CPU is the same for both engines and not counted. CPU per
image is taken in the steady state, between 20% and 90% of the rows written, so start-up
(Ray's: seconds of CPU) does not hide in it; the fixed CPU of a run is the rest. The Ray overhead
per image is the difference of the two engines' steady-state CPU. docs/SCALING.md quotes it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from contract import DEFAULT_MODEL
from server.launch import TritonServer

REPO_ROOT = Path(__file__).resolve().parent.parent
PHOTOS = sorted((REPO_ROOT / "samples" / "garbage12").rglob("*.jpg"))


def _part(proc: psutil.Process, root: psutil.Process) -> str:
    """Which part of the run a process is: the command itself, the actors, or a Ray daemon."""
    if proc.pid == root.pid:
        return "driver (the command)"
    try:
        name, text = proc.name(), " ".join(proc.cmdline())
    except psutil.Error:
        return "other"
    # Workers' command lines name the raylet's socket: test the worker titles first.
    if "MapWorker" in text:
        return "actors"
    if text.startswith("ray::"):
        return text.split()[0]  # Ray's own helper actors (ray::_StatsActor...), ray::IDLE workers
    if "default_worker" in text:
        return "ray workers (starting)"
    if name in ("raylet", "gcs_server"):
        return f"ray {name}"
    return "other ray processes"


def _tree_seconds(root: psutil.Process, parts: dict[int, str]) -> dict[int, float]:
    seconds = {}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return seconds
    for proc in procs:
        try:
            t = proc.cpu_times()
            seconds[proc.pid] = t.user + t.system
            # Sampled each time: a worker becomes an actor after it starts (its title changes).
            parts[proc.pid] = _part(proc, root)
        except psutil.Error:
            pass
    return seconds


def _by_part(seen: dict[int, float], parts: dict[int, str]) -> dict[str, float]:
    total: dict[str, float] = {}
    for pid, seconds in seen.items():
        total[parts.get(pid, "other")] = total.get(parts.get(pid, "other"), 0.0) + seconds
    return total


def _rows(out: Path) -> int:
    try:
        return max(0, out.read_bytes().count(b"\n") - 1)  # minus the header line
    except OSError:
        return 0


def run_once(engine: str, folder: Path, url: str, model: str, extra: list[str], poll_s: float = 0.1) -> dict:
    """One scorer command: its summary, wall time, the CPU of its process tree, steady-state CPU."""
    out = folder.parent / f"{engine}-{folder.name}.jsonl"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "waste_client", "score", str(folder), "--engine", engine, "--url", url,
           "--model", model, "--out", str(out), "--json", "--no-progress", "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "client"), str(REPO_ROOT)])}
    env.pop("RAY_ADDRESS", None)
    total = sum(1 for _ in folder.iterdir())
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    root = psutil.Process(proc.pid)
    seen: dict[int, float] = {}
    parts: dict[int, str] = {}
    # (rows, seconds since start, CPU s by part) at 20% and 90% of the rows
    marks: list[tuple[int, float, dict]] = []
    while proc.poll() is None:
        seen.update(_tree_seconds(root, parts))
        rows = _rows(out)
        if len(marks) < 2 and rows >= (0.2, 0.9)[len(marks)] * total:
            marks.append((rows, time.perf_counter() - start, _by_part(seen, parts)))
        time.sleep(poll_s)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0 or len(marks) < 2:
        raise RuntimeError(f"{cmd} exited {proc.returncode}: {stderr.decode(errors='replace')[-2000:]}")
    summary = json.loads(stdout)
    cpu = sum(seen.values())
    (rows0, t0, cpu0), (rows1, t1, cpu1) = marks
    steady_parts = {k: 1e3 * (v - cpu0.get(k, 0.0)) / (rows1 - rows0) for k, v in cpu1.items()}
    steady = sum(steady_parts.values()) / 1e3
    return {"engine": engine, "images": summary["scored"], "wall_s": wall,
            "scoring_images_per_s": summary["images_per_s"], "cpu_s": cpu, "steady_ms": 1e3 * steady,
            "steady_images_per_s": (rows1 - rows0) / (t1 - t0), "steady_parts_ms": steady_parts,
            "fixed_s": cpu - steady * summary["scored"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_engine", description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1152, help="photos in the job")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repository", default=str(REPO_ROOT / "model_repository"))
    args = parser.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp, TritonServer(args.repository) as server:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i in range(args.photos):
            os.link(PHOTOS[i % len(PHOTOS)], folder / f"{i:06d}.jpg")
        rows = {}
        for engine, extra in (("local", []), ("ray", ["--actors", "2"])):
            r = rows[engine] = run_once(engine, folder, server.grpc_url, args.model, extra)
            print(f"{engine:5s} {r['images']} images: wall {r['wall_s']:.1f} s, scoring "
                  f"{r['scoring_images_per_s']:.1f} img/s; client-side CPU {r['cpu_s']:.1f} s: "
                  f"{r['steady_ms']:.2f} ms per image in the steady state + {r['fixed_s']:.1f} s fixed",
                  flush=True)
            print(f"      steady state at {r['steady_images_per_s']:.1f} img/s, CPU ms per image by part: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["steady_parts_ms"].items(), key=lambda kv: -kv[1])),
                  flush=True)
    print(f"Ray overhead per image: {rows['ray']['steady_ms'] - rows['local']['steady_ms']:.2f} ms CPU; "
          f"per run: {rows['ray']['fixed_s'] - rows['local']['fixed_s']:.1f} s CPU")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
