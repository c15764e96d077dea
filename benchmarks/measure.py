"""Measuring helpers shared by the rows: latency percentiles, CPU meters, Triton metrics, machine facts."""
from __future__ import annotations

import os
import platform
import re
import time
import urllib.request
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np
import psutil


REPO_ROOT = Path(__file__).resolve().parent.parent


def shown_path(path) -> str:
    """A path as a report shows it: relative to the repository when inside it, never machine-specific."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return path.name


def shown_command(module: str, argv: list[str]) -> str:
    """`python -m MODULE ARGS` as a report shows it: absolute paths among the arguments made `shown_path`."""
    parts = [shown_path(a) if a.startswith("/") else a for a in argv]
    return " ".join(["python", "-m", module, *parts])


@dataclass
class Row:
    """One line of the table: what ran, its throughput, per-request latency and CPU use."""

    key: str
    what: str
    images: int
    seconds: float
    latencies_s: list = field(default_factory=list, repr=False)
    cpu_ours: float | None = None  # % of all cores used by the measured processes
    cpu_system: float | None = None  # % of all cores busy machine-wide (includes other jobs)
    note: str = ""
    params: dict = field(default_factory=dict)  # settings chosen by a sweep (batch, threads, in flight)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1000.0)


_INSTANCE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*?)_\d+_\d+$")


class CpuMeter:
    """CPU seconds of some process trees and of the whole machine over a `with` block.

    Parameters
    ----------
    pids : iterable of int
        Roots whose descendants (Triton's python stubs) are counted too; this process is always in.
    """

    def __init__(self, pids=()):
        self.roots = [psutil.Process(os.getpid())] + [psutil.Process(p) for p in pids]
        self.ours = self.system = None
        self.parts: dict = {}  # CPU seconds by part: "client", "tritonserver", or a model's stubs
        self._part_of: dict = {}

    def _part(self, proc, root_index: int) -> str:
        if proc.pid not in self._part_of:
            if proc.pid == self.roots[0].pid:
                part = "client (this process)"
            elif any(proc.pid == r.pid for r in self.roots[1:]):
                part = "tritonserver"
            else:
                # Python stubs are started with their instance name ("preprocess_0_1") as an argument.
                try:
                    names = [m.group(1) for a in proc.cmdline() if (m := _INSTANCE.match(a))]
                except psutil.Error:
                    names = []
                part = f"{names[-1]} stubs" if names else "other server processes"
            self._part_of[proc.pid] = part
        return self._part_of[proc.pid]

    def _tree_seconds(self) -> dict:
        seconds = {}
        for index, root in enumerate(self.roots):
            for proc in [root, *root.children(recursive=True)]:
                try:
                    t = proc.cpu_times()
                    # children_* only grow when a child is reaped; counting them would double-count.
                    seconds[proc.pid] = t.user + t.system
                    self._part(proc, index)
                except psutil.Error:
                    pass
        return seconds

    @staticmethod
    def _system() -> tuple[float, float]:
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
        return busy, busy + t.idle + getattr(t, "iowait", 0)

    def __enter__(self):
        self._t0 = time.perf_counter()
        self._tree0 = self._tree_seconds()
        self._sys0 = self._system()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._t0
        tree1 = self._tree_seconds()
        sys1 = self._system()
        used = sum(v - self._tree0.get(pid, 0.0) for pid, v in tree1.items())
        self.parts = {}
        for pid, v in tree1.items():
            part = self._part_of.get(pid, "other server processes")
            self.parts[part] = self.parts.get(part, 0.0) + v - self._tree0.get(pid, 0.0)
        cores = psutil.cpu_count() or 1
        self.ours = 100.0 * used / (wall * cores) if wall > 0 else None
        busy = sys1[0] - self._sys0[0]
        total = sys1[1] - self._sys0[1]
        self.system = 100.0 * busy / total if total > 0 else None

    def fill(self, row: Row) -> Row:
        row.cpu_ours, row.cpu_system = self.ours, self.system
        if self.parts and row.images:
            row.params["cpu_ms_per_image"] = {k: 1e3 * v / row.images for k, v in self.parts.items()}
        return row


_METRIC = re.compile(r'^(nv_inference_[a-z_]+)\{model="([^"]+)",version="[^"]*"\} ([0-9.eE+-]+)$')
_WANTED = ("request_success", "count", "exec_count", "request_duration_us", "queue_duration_us",
           "compute_input_duration_us", "compute_infer_duration_us", "compute_output_duration_us")


def triton_metrics(metrics_url: str) -> dict:
    """{model: {metric: value}} of Triton's per-model inference counters (Prometheus text)."""
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match:
            name, model, value = match.groups()
            name = name.removeprefix("nv_inference_")
            if name in _WANTED:
                out.setdefault(model, {})[name] = float(value)
    return out


def metrics_delta(before: dict, after: dict) -> list[dict]:
    """Per model over an interval: requests, executions, mean batch, mean queue/compute ms."""
    rows = []
    for model, values in sorted(after.items()):
        base = before.get(model, {})
        d = {k: values.get(k, 0.0) - base.get(k, 0.0) for k in _WANTED}
        requests = d["request_success"]
        if requests <= 0:
            continue
        executions = max(d["exec_count"], 1.0)
        rows.append({
            "model": model, "requests": int(requests), "executions": int(d["exec_count"]),
            "mean_batch": d["count"] / executions,
            "request_ms": d["request_duration_us"] / requests / 1000,
            "queue_ms": d["queue_duration_us"] / requests / 1000,
            # Triton adds a batch's whole compute time to each of its requests, so per request this
            # is the mean duration of the execution a request was part of.
            "compute_infer_ms_per_exec": d["compute_infer_duration_us"] / requests / 1000,
            "compute_io_ms_per_request": (d["compute_input_duration_us"]
                                          + d["compute_output_duration_us"]) / requests / 1000,
        })
    return rows


def machine_description() -> dict:
    """Cores, CPU model (from /proc/cpuinfo), memory, load, OS: the header of BENCHMARKS.md."""
    model = platform.processor() or "unknown"
    flags = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                                                       "avx512_bf16", "amx_bf16")
                                     if f in have)
    except OSError:
        pass
    return {
        "cpu_model": model, "logical_cores": psutil.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
        "simd": flags, "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
    }


def merge_rows(parts: list[Row]) -> Row:
    """One row from the rounds of the same measurement: totals summed, latencies pooled."""
    first = parts[0]
    seconds = sum(p.seconds for p in parts)

    def weighted(attr):
        values = [(getattr(p, attr), p.seconds) for p in parts if getattr(p, attr) is not None]
        return sum(v * s for v, s in values) / sum(s for _, s in values) if values else None

    params = dict(first.params)
    caches = [p.params["cache"] for p in parts if "cache" in p.params]
    if caches:
        # Response-cache counts add up over the rounds (each round is a fresh job).
        hits, misses = sum(c["hits"] for c in caches), sum(c["misses"] for c in caches)
        params["cache"] = {"hits": hits, "misses": misses,
                           "hit_share": hits / (hits + misses) if hits + misses else 0.0}
    cpu = [(p.params["cpu_ms_per_image"], p.images) for p in parts if "cpu_ms_per_image" in p.params]
    if cpu:
        total = sum(n for _, n in cpu)
        keys = {k for d, _ in cpu for k in d}
        params["cpu_ms_per_image"] = {k: sum(d.get(k, 0.0) * n for d, n in cpu) / total for k in sorted(keys)}
    return Row(first.key, first.what, sum(p.images for p in parts), seconds,
               [x for p in parts for x in p.latencies_s], weighted("cpu_ours"), weighted("cpu_system"),
               first.note, params)


def merge_deltas(parts: list[list[dict]]) -> list[dict]:
    """Per-model counter summaries of several rounds, combined weighted by requests."""
    combined: dict = {}
    for delta in parts:
        for d in delta:
            c = combined.setdefault(d["model"], {"model": d["model"], "requests": 0, "executions": 0, "_items": 0.0,
                                                 "request_ms": 0.0, "queue_ms": 0.0,
                                                 "compute_infer_ms_per_exec": 0.0, "compute_io_ms_per_request": 0.0})
            n = d["requests"]
            c["requests"] += n
            c["executions"] += d["executions"]
            c["_items"] += d["mean_batch"] * d["executions"]
            for key in ("request_ms", "queue_ms", "compute_infer_ms_per_exec", "compute_io_ms_per_request"):
                c[key] += d[key] * n
    out = []
    for c in combined.values():
        n = max(c["requests"], 1)
        for key in ("request_ms", "queue_ms", "compute_infer_ms_per_exec", "compute_io_ms_per_request"):
            c[key] /= n
        c["mean_batch"] = c.pop("_items") / max(c["executions"], 1)
        out.append(c)
    return sorted(out, key=lambda d: d["model"])


def interleaved(items: dict, rounds: int) -> dict:
    """Run every measurement `rounds` times, round-robin, and merge: {label: (Row, extra...)}.

    On a shared machine the background load drifts within a minute; measuring A, B, C, A, B, C...
    exposes every configuration to the same drift, so their ratios stay meaningful where
    back-to-back blocks (all A, then all B) would compare different moments.
    Each item is a callable returning a Row or (Row, triton delta).
    """
    results: dict = {label: [] for label in items}
    labels = list(items)
    for r in range(rounds):
        # Rotate the order too, so no configuration always runs right after the same neighbour.
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for label in order:
            results[label].append(items[label]())
    merged = {}
    for label, parts in results.items():
        if isinstance(parts[0], tuple):
            merged[label] = (merge_rows([p[0] for p in parts]), merge_deltas([p[1] for p in parts]))
        else:
            merged[label] = merge_rows(parts)
    return merged
