"""Issue 16's targets from one run's rows: scorer vs raw client, served vs CPU bound, fastest path.

Rows are looked up by plan label in `m` (as in `benchmarks/report.py`); a row the run did not
measure (no separate ORT + OpenVINO venv, no second model) leaves its target out rather than
inventing a value. Labels used:

- FP32 / INT8 served rows: "on16", "on32" / "int8", "int8_32" (the bulk scorer's code path),
  the plan's raw asyncio loops in this process (loop "raw") and as a whole process (loop
  "raw_command") on variants "on" / "int8", the scorer as a command "cmd" / "int8_cmd", the
  openvino backend through the bulk scorer's code path "ov16" / "ov_int8_16" and through the scorer
  command "ov_cmd" / "ov_int8_cmd";
- in-process: row 1 and 6a sweeps (single-thread classifier), "2p" (preprocess alone);
- duplicates: "dup_cache1", "dup_nocache1" (one photo per request), "dup_cache" (scorer defaults).
"""
from __future__ import annotations

from benchmarks.measure import Row
from benchmarks.plan import TRITON_PLAN
from benchmarks.raw_loop import cpu_bound


def _rows(variant: str, loop: str) -> tuple:
    """Labels of the plan's rows of one repository variant and client loop, in plan order."""
    return tuple(r.label for r in TRITON_PLAN if r.variant == variant and r.loop == loop)


#: The raw loop inside the benchmark's process (warm, photos already in memory), every shape the
#: plan measures: candidates for "best served", and for the scorer target a reference line.
RAW_IN_PROCESS = {"fp32": _rows("on", "raw"), "int8": _rows("int8", "raw")}
#: Issue 16 compares the scorer command with the raw loop "whole process" against "whole process":
#: both pay Python's start-up, imports, the first connection and reading the files.
RAW = {"fp32": _rows("on", "raw_command"), "int8": _rows("int8", "raw_command")}
COMMAND = {"fp32": "cmd", "int8": "int8_cmd"}
#: Served rows of each model, the candidates for "best served" and "fastest path".
SERVED = {
    "fp32": ("on16", "on32", *RAW_IN_PROCESS["fp32"], *RAW["fp32"], COMMAND["fp32"]),
    "int8": ("int8", "int8_32", *RAW_IN_PROCESS["int8"], *RAW["int8"], COMMAND["int8"]),
    "openvino fp32": ("ov16", "ov_cmd"),
    "openvino int8": ("ov_int8_16", "ov_int8_cmd"),
}
#: The fastest-path target compares runtimes, so the client must not differ: the scorer command
#: with its defaults (the path a bulk user runs) on each runtime and model. BULK_PATHS, the bulk
#: scorer's code path (1 photo per request, 16 / 32 in flight), is a reference line: its larger
#: client CPU per image is the same on every runtime and dilutes a faster classifier's gain.
PATHS = {
    "fp32": ("cmd",),
    "int8": ("int8_cmd",),
    "openvino fp32": ("ov_cmd",),
    "openvino int8": ("ov_int8_cmd",),
}
BULK_PATHS = {
    "fp32": ("on16", "on32"),
    "int8": ("int8", "int8_32"),
    "openvino fp32": ("ov16",),
    "openvino int8": ("ov_int8_16",),
}
#: Accuracy a served path may lose against the FP32 ONNX Runtime path, in points (a gain never
#: disqualifies it).
ACCURACY_TOLERANCE = 0.1


def _best(rows):
    rows = [r for r in rows if r is not None]
    return max(rows, key=lambda r: r.images_per_s) if rows else None


def single_thread_best(sweep: list[Row]) -> Row | None:
    """The best single-thread point of an in-process sweep (the classifier as one server instance runs)."""
    return _best([r for r in sweep if r.params.get("threads") == 1])


def bound_rows(m: dict, sweeps: dict) -> dict:
    """Rows "B" (FP32) and "Bi" (INT8): cores / (preprocess + single-thread classifier CPU per image)."""
    out = {}
    for label, sweep_key, what in (("B", "1", "per-image CPU bound, FP32"), ("Bi", "6a", "per-image CPU bound, INT8")):
        classifier = single_thread_best(sweeps.get(sweep_key, []))
        if classifier is not None and "2p" in m:
            out[label] = cpu_bound(m["2p"], classifier, label, what)
    return out


def every_core_bound_rows(m: dict) -> dict:
    """Rows "Bc" / "Bci": the bound again with the classifier's CPU per image from rows 1c / 6c,
    measured with every core running one single-thread classifier at once."""
    out = {}
    for label, key, what in (("Bc", "1c", "per-image CPU bound, FP32, every core busy"),
                             ("Bci", "6c", "per-image CPU bound, INT8, every core busy")):
        if key in m and "2p" in m:
            out[label] = cpu_bound(m["2p"], m[key], label, what)
    return out


def best_served(m: dict, kind: str) -> Row | None:
    return _best([m.get(label) for label in SERVED[kind]])


def targets(m: dict, bounds: dict, accuracy_points: dict) -> list[tuple[str, float, float]]:
    """(target, measured, needed) for issue 16, from rows of one run.

    `accuracy_points` maps a served kind ("int8", "openvino fp32", ...) to its test-split accuracy
    change in points against FP32 ONNX Runtime; a kind without an entry cannot be the fastest path.
    """
    out = []
    for kind in ("fp32", "int8"):
        raw = _best([m.get(label) for label in RAW[kind]])
        command = m.get(COMMAND[kind])
        if raw and command:
            out.append((f"scorer command / raw asyncio loop, both whole processes, {kind.upper()} "
                        f"({command.key} / {raw.key}) >= 0.95", command.images_per_s / raw.images_per_s, 0.95))
    for kind, label in (("fp32", "B"), ("int8", "Bi")):
        served, bound = best_served(m, kind), bounds.get(label)
        if served and bound:
            out.append((f"best served {kind.upper()} / per-image CPU bound ({served.key} / {label}) >= 0.90",
                        served.images_per_s / bound.images_per_s, 0.90))
    fastest = fastest_path(m, PATHS, accuracy_points)
    if fastest:
        kind, row, today = fastest
        out.append((f"fastest served CPU path within {ACCURACY_TOLERANCE} pt accuracy, scorer command ({kind}, "
                    f"{row.key}) / today's served FP32 ({today.key}) >= 1.4", row.images_per_s / today.images_per_s,
                    1.4))
    return out


def fastest_path(m: dict, paths: dict, accuracy_points: dict) -> tuple[str, Row, Row] | None:
    """(kind, its best row, FP32 ONNX Runtime's best row) among `paths` whose accuracy is within the
    tolerance; None when FP32 or every other kind is missing."""
    today = _best([m.get(label) for label in paths["fp32"]])
    eligible = {kind: _best([m.get(label) for label in paths[kind]]) for kind in paths
                if kind == "fp32" or accuracy_points.get(kind, -float("inf")) >= -ACCURACY_TOLERANCE}
    eligible = {kind: row for kind, row in eligible.items() if row is not None}
    if not today or not eligible:
        return None
    kind, row = max(eligible.items(), key=lambda item: item[1].images_per_s)
    return kind, row, today


def reference_lines(m: dict, accuracy_points: dict | None = None) -> list[str]:
    """The scorer command against the raw loop run inside the benchmark (warm, photos in memory): what
    start-up and reading the files cost on top of the whole-process target; with `accuracy_points`,
    the fastest-path ratio through the bulk scorer's code path too."""
    lines = []
    for kind in ("fp32", "int8"):
        raw = _best([m.get(label) for label in RAW_IN_PROCESS[kind]])
        command, whole = m.get(COMMAND[kind]), _best([m.get(label) for label in RAW[kind]])
        if raw and command:
            line = (f"- {kind.upper()}: scorer command / best raw loop in this process ({command.key} / {raw.key}) "
                    f"{command.images_per_s / raw.images_per_s:.3f}")
            if whole:
                line += (f"; the raw loop as a whole process / in this process ({whole.key} / {raw.key}) "
                         f"{whole.images_per_s / raw.images_per_s:.3f}")
            lines.append(line)
    for kind, single, every in (("fp32", "B", "Bc"), ("int8", "Bi", "Bci")):
        served, bound, busy = best_served(m, kind), m.get(single), m.get(every)
        if served and bound and busy:
            lines.append(f"- {kind.upper()}: the bound with every core busy ({every}) is {busy.images_per_s / bound.images_per_s:.3f} "
                         f"of {single}; best served / {every} ({served.key} / {every}) "
                         f"{served.images_per_s / busy.images_per_s:.3f}")
    fastest = fastest_path(m, BULK_PATHS, accuracy_points) if accuracy_points is not None else None
    if fastest:
        kind, row, today = fastest
        lines.append(f"- fastest served CPU path within {ACCURACY_TOLERANCE} pt accuracy through the bulk scorer's "
                     f"code path ({kind}, {row.key}) / FP32 on it ({today.key}) "
                     f"{row.images_per_s / today.images_per_s:.2f}")
    return lines


def duplicate_lines(m: dict) -> list[str]:
    """The duplicate-photo job: throughput and cache hits with the cache on and off."""
    lines = []
    for label in ("dup_nocache1", "dup_cache1", "dup_cache"):
        row = m.get(label)
        if row is None:
            continue
        cache = row.params.get("cache", {})
        lines.append(f"- {row.key} {row.what} ({row.note}): {row.images_per_s:.1f} images/s; "
                     f"{row.params.get('duplicates', 0)} duplicates per round, cache hits {cache.get('hits', 0)}, "
                     f"misses {cache.get('misses', 0)} (hit share {cache.get('hit_share', 0.0):.1%}, summed "
                     f"over the rounds, each a fresh job)")
    on, off = m.get("dup_cache1"), m.get("dup_nocache1")
    if on and off:
        lines.append(f"- cache on / off, one photo per request: {on.images_per_s / off.images_per_s:.2f}x")
    return lines


def overhead_lines(m: dict) -> list[str]:
    """Where a served image's CPU goes beyond the in-process work the bound counts (issue 16, item 2).

    For each served row with a CPU breakdown: the preprocess stubs and classifier stubs against the
    same code in process (row B / Bi's parts), the rest of the server (tritonserver, ensemble
    hops, other processes), the client, and the cores left idle.
    """
    lines = []
    for labels, bound_label in ((SERVED["fp32"], "B"), (SERVED["int8"], "Bi")):
        bound = m.get(bound_label)
        for label in labels:
            row = m.get(label)
            cpu = row.params.get("cpu_ms_per_image") if row else None
            if not cpu or bound is None or "preprocess_ms" not in bound.params:
                continue
            pre = sum(v for k, v in cpu.items() if k.startswith("preprocess"))
            cls = sum(v for k, v in cpu.items() if k.endswith("_classifier stubs"))
            client = sum(v for k, v in cpu.items() if k in ("client (this process)", "scorer command"))
            rest = sum(cpu.values()) - pre - cls - client
            idle = 100.0 - row.cpu_ours if row.cpu_ours is not None else float("nan")
            lines.append(
                f"- {row.key} {row.what} ({row.note}): preprocess stubs {pre:.2f} ms/image "
                f"(in process {bound.params['preprocess_ms']:.2f}), classifier stubs {cls:.2f} "
                f"(in process, 1 thread {bound.params['classifier_ms']:.2f}), rest of the server {rest:.2f}, "
                f"client {client:.2f}; cores idle {idle:.0f}%")
    return lines
