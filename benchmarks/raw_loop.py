"""Issue 16's yardsticks for the served path: a plain asyncio client, the scorer command, the CPU bound.

- `raw_asyncio_loop`: the fastest client we know how to write, tritonclient's asyncio gRPC client
  with `per_request` photos per request and `in_flight` requests outstanding; nothing of ours.
- `raw_command`: the same loop as a whole process (`python -m benchmarks.raw_client FOLDER ...`:
  start-up, imports, reading the files included), timed exactly as `scorer_command` is, so the
  scorer-vs-raw target compares whole process with whole process, as issue 16 defines it.
- `scorer_command`: `python -m waste_client score` as a user runs it (a subprocess: start-up,
  listing, reading, writing results included), with its own CPU per image from the kernel's
  accounting of the waited child.
- `cpu_bound`: what two cores could do if the server added nothing: cores / (preprocess CPU per
  image + single-thread classifier CPU per image), from two measured in-process rows.

Targets are ratios of rows measured in one run (`ratio`): scorer / best raw loop >= 0.95, best
served / bound >= 0.90.

The loop itself is `benchmarks.raw_client`, a module that imports nothing of the benchmark's, so
its whole-process row pays only what such a client needs.
"""
from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.measure import CpuMeter, Row, metrics_delta, triton_metrics
from benchmarks.raw_client import drive, request_batches


def raw_asyncio_loop(servers, model: str, encoded: list[bytes], per_request: int, in_flight: int,
                     key: str, what: str) -> tuple[Row, list[dict]]:
    """A plain asyncio tritonclient loop over `encoded`; latency is per request.

    Parameters
    ----------
    servers : list of TritonServer
        The first one is sent to; all are CPU-metered.
    model : str
        The ensemble.
    encoded : list of bytes
        The photos, each sent once.
    per_request, in_flight : int
        Photos per request; requests outstanding.
    key, what : str
        The row's key and description.

    Returns
    -------
    (Row, list of dict)
        The row (latency per request, CPU by process) and the server's per-model counter deltas.

    Raises
    ------
    RuntimeError
        When fewer photos were answered than sent.
    """
    batches = request_batches(encoded, per_request)
    warm: list = []
    asyncio.run(drive(servers[0].grpc_url, model, batches[:in_flight], in_flight, warm))
    latencies: list = []
    before = triton_metrics(servers[0].metrics_url)
    with CpuMeter([s._process.pid for s in servers]) as meter:
        start = time.perf_counter()
        answered = asyncio.run(drive(servers[0].grpc_url, model, batches, in_flight, latencies))
        seconds = time.perf_counter() - start
    after = triton_metrics(servers[0].metrics_url)
    if answered != len(encoded):
        raise RuntimeError(f"{key}: {answered} of {len(encoded)} photos answered")
    note = f"grpc asyncio, {per_request} photo{'s' * (per_request > 1)}/request, {in_flight} in flight"
    row = meter.fill(Row(key, what, len(encoded), seconds, latencies, note=note,
                         params={"per_request": per_request, "in_flight": in_flight}))
    return row, metrics_delta(before, after)


def client_at(commit: str, dest) -> Path:
    """The `client/` folder of `commit` (`git archive`), extracted under `dest`; reused when there.

    Returns the folder to put first on PYTHONPATH so `python -m waste_client` runs that commit's code.
    """
    root = Path(dest) / f"client-{commit}"
    if not (root / "client" / "waste_client").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        repo = Path(__file__).resolve().parent.parent
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "client"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root / "client"


def _command_row(servers, command: list, key: str, what: str, images: int, note: str, params: dict,
                 env: dict | None = None) -> tuple[Row, list[dict]]:
    """`command` run as a whole process against `servers`: wall time, the server's CPU by process and
    the command's own CPU (the kernel's accounting of the waited child) as "scorer command"."""
    before = triton_metrics(servers[0].metrics_url)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    with CpuMeter([s._process.pid for s in servers]) as meter:
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = triton_metrics(servers[0].metrics_url)
    if done.returncode != 0:
        raise RuntimeError(f"{key}: command exited {done.returncode}: {done.stderr[-2000:]}")
    command_cpu = (used.ru_utime - children.ru_utime) + (used.ru_stime - children.ru_stime)
    row = meter.fill(Row(key, what, images, seconds, [], note=note, params=params))
    row.params.setdefault("cpu_ms_per_image", {})["scorer command"] = 1e3 * command_cpu / images
    # This process only waited: its own share is the command's, accounted above.
    row.params["cpu_ms_per_image"].pop("client (this process)", None)
    if row.cpu_ours is not None:
        row.cpu_ours += 100.0 * command_cpu / (seconds * (os.cpu_count() or 1))
    return row, metrics_delta(before, after)


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def scorer_command(servers, model: str, folder, key: str, what: str, args=(), *,
                   images: int | None = None, client_path=None) -> tuple[Row, list[dict]]:
    """`python -m waste_client score FOLDER` against `servers`, timed as a whole process.

    Parameters
    ----------
    servers : list of TritonServer
        Sent to (comma-separated ``--url``) and CPU-metered.
    model : str
        The ensemble (``--model``).
    folder : path
        The photos, scored once.
    key, what : str
        The row's key and description.
    args : sequence of str
        More scorer options (``--batch-size 1``, ``--in-flight 8``); none: its defaults.
    images : int, optional
        Files in `folder` (counted when None).
    client_path : path, optional
        A `client/` folder put first on PYTHONPATH (an earlier commit's scorer, `client_at`);
        default: the installed package.

    Returns
    -------
    (Row, list of dict)
        The row, whose ``cpu_ms_per_image`` holds the command's own CPU ("scorer command") beside
        the server's parts, and the server's per-model counter deltas.

    Raises
    ------
    RuntimeError
        When the command exits non-zero (its stderr's tail in the message).
    """
    folder = Path(folder)
    urls = ",".join(s.grpc_url for s in servers)
    env = dict(os.environ)
    if client_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(client_path), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="bench-cmd-") as tmp:
        command = [sys.executable, "-m", "waste_client", "score", str(folder), "--url", urls,
                   "--model", model, "--out", os.path.join(tmp, "out.jsonl"), "--no-progress", *args]
        note = "whole command, defaults" if not args else "whole command, " + " ".join(args)
        return _command_row(servers, command, key, what, images if images is not None else _count_files(folder),
                            note, {"args": list(args)}, env)


def raw_command(servers, model: str, folder, per_request: int, in_flight: int, key: str, what: str, *,
                images: int | None = None) -> tuple[Row, list[dict]]:
    """The raw asyncio loop as a whole process (`python -m benchmarks.raw_client`), timed like the scorer.

    The process reads every file of `folder`, sends them `per_request` at a time with `in_flight`
    requests outstanding to the first server, and exits non-zero unless each photo was answered.
    Returns the row (its ``cpu_ms_per_image`` holds the process's CPU as "scorer command", the key
    the overhead lines read) and the server's per-model counter deltas.
    """
    folder = Path(folder)
    command = [sys.executable, "-m", "benchmarks.raw_client", str(folder), "--url", servers[0].grpc_url,
               "--model", model, "--per-request", str(per_request), "--in-flight", str(in_flight)]
    note = (f"whole process, grpc asyncio, {per_request} photo{'s' * (per_request > 1)}/request, "
            f"{in_flight} in flight")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")) if p)}
    return _command_row(servers, command, key, what, images if images is not None else _count_files(folder),
                        note, {"per_request": per_request, "in_flight": in_flight}, env)


def cpu_seconds_per_image(row: Row) -> float:
    """CPU seconds one image took in an in-process row (wall time when the row has no CPU reading).

    CPU time, not wall time: on a shared box a single-threaded loop also waits for a core, and the
    bound is about work, not waiting.
    """
    if row.cpu_ours is None:
        return row.seconds / row.images
    return row.cpu_ours / 100.0 * (os.cpu_count() or 1) * row.seconds / row.images


def cpu_bound(preprocess: Row, classifier: Row, key: str, what: str, cores: int | None = None) -> Row:
    """The per-image CPU bound: `cores` / (preprocess + single-thread classifier CPU per image).

    Parameters
    ----------
    preprocess, classifier : Row
        In-process rows: the preprocess code alone (2p) and the classifier at one thread.
    key, what : str
        The row's key and description.
    cores : int, optional
        Default: this machine's logical cores.

    Returns
    -------
    Row
        A row with no run of its own (like the FLOP limit): images 1, seconds 1 / bound; its
        params hold the two per-image CPU times in ms.
    """
    cores = cores or os.cpu_count() or 1
    pre, cls = cpu_seconds_per_image(preprocess), cpu_seconds_per_image(classifier)
    bound = cores / (pre + cls)
    return Row(key, what, 1, 1.0 / bound,
               note=f"{cores} cores / (preprocess {pre * 1e3:.2f} ms + classifier {cls * 1e3:.2f} ms, "
                    f"rows {preprocess.key}, {classifier.key} {classifier.note})",
               params={"preprocess_ms": pre * 1e3, "classifier_ms": cls * 1e3, "cores": cores})


def ratio(numerator: Row, denominator: Row) -> float:
    """images/s of one row over another's (a target's measured value)."""
    return numerator.images_per_s / denominator.images_per_s if denominator.images_per_s else 0.0

