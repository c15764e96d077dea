"""`make bench`: one run, the same images and model for every row; prints the table, writes BENCHMARKS.md.

    .venv/bin/python -m benchmarks.run [--model PATH.onnx] [--name effnet_lite0] [--count 160]
        [--images DIR] [--int8-model PATH] [--keras-model PATH] [--out BENCHMARKS.md] [--quick]

Rows: (1) in-process ORT on decoded pixels, best batch; (2) the same with decode + letterbox;
(3) bulk scoring through Triton with the client, gRPC and HTTP, best in-flight count; (4) dynamic
batching off; (5) TTA vs plain; (6) INT8 vs FP32; (7) Keras model.predict one image at a time;
(8) arithmetic limit (graph FLOPs / measured matmul FLOP/s). Then the target ratios.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import rows as R
from benchmarks.measure import Row, interleaved, machine_description

REPO_ROOT = Path(__file__).resolve().parent.parent
def latest_version(model_dir: Path) -> Path:
    """The model file Triton serves by default: the highest numeric version."""
    versions = sorted((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return versions[-1] / "model.onnx"


def _shown(path) -> str:
    """A path as the report shows it: relative to the repository when inside it, never machine-specific."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return path.name


DEFAULT_MODEL = latest_version(REPO_ROOT / "model_repository" / "effnet_lite0_classifier")
DEFAULT_INT8 = latest_version(REPO_ROOT / "model_repository" / "effnet_lite0_int8_classifier")
NOTES = Path(__file__).resolve().parent / "notes.md"
BATCHES = (1, 4, 16, 32)
#: The last commit with the previous `preprocess` code (bicubic thumbnail and float64 arithmetic in
#: `trim_background`); rows 2p0/V3/V4 run it beside the current code to measure what the change bought.
PREPROCESS_BEFORE = "318f2a8"
THREADS = (1, 2)
IN_FLIGHT = (1, 4, 8, 16, 32)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pick_images(folder: str | None, count: int) -> list[Path]:
    """The benchmark's images: `folder`'s files, or a seeded draw from the test split (else samples)."""
    from export.quantize import DATA_DIR, split_items

    if folder:
        from waste_client._walk import list_images

        return [Path(folder) / p for p in list_images(folder, False)][:count]
    if DATA_DIR.is_dir():
        return [p for p, _ in split_items("test", limit=count)]
    samples = REPO_ROOT / "samples" / "garbage12"
    return sorted(samples.rglob("*.jpg"))[:count]


def stage_folder(paths: list[Path], dest: Path) -> Path:
    """Copy the images into one folder for the bulk scorer (class subfolders kept, names unique)."""
    for path in paths:
        target = dest / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dest


def best(rows: list[Row]) -> Row:
    return max(rows, key=lambda r: r.images_per_s)


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[Row]) -> str:
    header = ("row", "what", "setting", "images", "images/s", "p50 ms", "p95 ms", "p99 ms", "CPU ours %", "CPU machine %")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            r.key, r.what, r.note, str(r.images), fmt(r.images_per_s), fmt(r.percentile_ms(50)),
            fmt(r.percentile_ms(95)), fmt(r.percentile_ms(99)), fmt(r.cpu_ours, 0), fmt(r.cpu_system, 0),
        ]) + " |")
    return "\n".join(lines)


def profile_table(delta: list[dict]) -> str:
    header = ("model", "requests", "executions", "mean batch", "request ms", "queue ms",
              "infer ms per execution", "in+out ms / request")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for d in delta:
        lines.append(f"| {d['model']} | {d['requests']} | {d['executions']} | {d['mean_batch']:.1f} | "
                     f"{d['request_ms']:.1f} | {d['queue_ms']:.1f} | {d['compute_infer_ms_per_exec']:.1f} | "
                     f"{d['compute_io_ms_per_request']:.2f} |")
    return "\n".join(lines)


def cpu_table(rows: list[Row]) -> str:
    """CPU milliseconds per image by process group, for Triton rows: where the cores went."""
    rows = [r for r in rows if r.params.get("cpu_ms_per_image")]
    parts = sorted({k for r in rows for k in r.params["cpu_ms_per_image"]})
    header = ("row", "what", *parts, "total")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cpu = r.params["cpu_ms_per_image"]
        lines.append(f"| {r.key} | {r.what}, {r.note} | " + " | ".join(f"{cpu.get(k, 0.0):.2f}" for k in parts)
                     + f" | {sum(cpu.values()):.2f} |")
    return "\n".join(lines)


def find(rows: list[Row], key: str, in_flight: int | None = None) -> Row | None:
    for r in rows:
        if r.key == key and (in_flight is None or f", {in_flight} in flight" in r.note):
            return r
    return None


def changes_table(results: list[Row], row1: Row, row6a: Row, profile: dict, sweep: list[Row]) -> list[str]:
    """Each change with the effect predicted before measuring (rule stated) and the measured one.

    The "before" variants (V1-V4) put one earlier choice back in a copy of the repository; the
    reference rows (3r, 3s, 6b) are the committed configuration measured in the same rounds.
    """
    lines = ["| change (before -> now) | predicted (rule, before measuring) | measured |", "|---|---|---|"]
    now1, now16, int8_16 = find(results, "3s"), find(results, "3r", 16), find(results, "6b", 16)
    v0, v1, v3, v4 = (find(results, k) for k in ("V0", "V1", "V3", "V4"))
    v2, v2_1 = find(results, "V2", 16), find(results, "V2", 1)
    p_now, p_before = find(results, "2p"), find(results, "2p0")

    def queue_ms(label):
        # With one request in flight nothing else is queued: the steps' queue time is batcher delay.
        delta = next((d for name, d in profile.items() if name.startswith(f"{label}: ")), [])
        return sum(d["queue_ms"] for d in delta)

    for before, label, what in ((v1, "delay5", "5 ms + 1 ms"), (v0, "delay05", "0.5 ms + 1 ms")):
        if before and now1:
            waited = queue_ms(label) - queue_ms("on1")
            lines.append(f"| batcher delay (classifier + preprocess) {what} -> 0 + 0, 1 in flight | p50 -{waited:.1f} ms: "
                         f"the extra queue time the counters show for the variant, pure waiting since no batch can form "
                         f"| p50 {before.percentile_ms(50):.1f} -> {now1.percentile_ms(50):.1f} ms, "
                         f"{before.images_per_s:.1f} -> {now1.images_per_s:.1f} img/s |")
    if v2 and now16:
        lines.append(f"| 1 classifier instance x 2 ORT threads -> 2 instances x 1 thread, 16 in flight | +0-15%: "
                     f"no intra-op barrier per layer, and a descheduled thread stalls only its own request "
                     f"| {v2.images_per_s:.1f} -> {now16.images_per_s:.1f} img/s "
                     f"({now16.images_per_s / v2.images_per_s:.2f}x) |")
    if v2_1 and now1:
        lines.append(f"| the same, 1 in flight (the price of the layout) | p50 up by the classifier's 1- vs 2-thread "
                     f"time (row 1 sweep, batch 1) | p50 {v2_1.percentile_ms(50):.1f} -> {now1.percentile_ms(50):.1f} ms, "
                     f"p95 {v2_1.percentile_ms(95):.1f} -> {now1.percentile_ms(95):.1f} ms |")
    if v3 and now16 and p_now and p_before:
        # CPU-bound server: an image costs (cores busy) / (images/s) of CPU; the preprocess change
        # removes its in-process saving from that, everything else unchanged.
        saved_s = p_before.seconds / p_before.images - p_now.seconds / p_now.images
        busy = (v3.cpu_ours or 100) / 100 * (os.cpu_count() or 1)
        cpu_per_image = busy / v3.images_per_s
        predicted = busy / (cpu_per_image - saved_s)
        lines.append(f"| `trim_background`: box-filter reduce instead of bicubic thumbnail, int16 instead of float64, "
                     f"decide from the frame's edge pixels first | rows 2p0 -> 2p save {saved_s * 1e3:.2f} ms of CPU "
                     f"per image; at {cpu_per_image * 1e3:.1f} ms of server CPU per image (V3) that is "
                     f"{v3.images_per_s:.1f} -> {predicted:.1f} img/s "
                     f"| {v3.images_per_s:.1f} -> {now16.images_per_s:.1f} img/s ({now16.images_per_s / v3.images_per_s:.2f}x) |")
    if v3 and v4 and now16 and int8_16:
        lines.append(f"| the same preprocess change, seen in the INT8 / FP32 ratio through Triton | rises: the "
                     f"fixed per-image cost that INT8 does not shrink gets smaller "
                     f"| {v4.images_per_s / v3.images_per_s:.2f}x (V4/V3) -> "
                     f"{int8_16.images_per_s / now16.images_per_s:.2f}x (6b/3r) |")
    d_now, d_before = find(results, "2d"), find(results, "2d0")
    if d_now and d_before:
        lines.append(f"| JPEG draft mode for large photos (decode at the smallest DCT scale keeping >= 224 px; "
                     f"1/8 for 4032x3024), rows 2d0 -> 2d | 5-10x less decode time: the IDCT and colour "
                     f"conversion shrink 64x, the entropy decoding of the whole file does not "
                     f"| {d_before.percentile_ms(50):.1f} -> {d_now.percentile_ms(50):.1f} ms p50 per photo "
                     f"({d_before.percentile_ms(50) / d_now.percentile_ms(50):.1f}x) |")
    delta = profile.get("grpc 1 in flight", [])
    classifier = next((d for d in delta if d["model"].endswith("_classifier")), None)
    ensemble = max(delta, key=lambda d: d["request_ms"]) if delta else None
    if classifier and ensemble and now16 and int8_16:
        share = classifier["compute_infer_ms_per_exec"] / ensemble["request_ms"]
        speed = row6a.images_per_s / row1.images_per_s
        predicted = 1 / (share / speed + (1 - share))
        lines.append(f"| FP32 -> INT8 model (QDQ) | Amdahl: classifier compute is {share:.0%} of a request at 1 in flight, "
                     f"in-process INT8 speed-up {speed:.2f}x -> {predicted:.2f}x end to end "
                     f"| {now16.images_per_s:.1f} -> {int8_16.images_per_s:.1f} img/s at 16 in flight "
                     f"({int8_16.images_per_s / now16.images_per_s:.2f}x) |")
    if sweep:
        top = best(sweep)
        lines.append(f"| client in-flight count 1 -> best | up to ~2x: one request at a time leaves a core idle while the "
                     f"other decodes or waits on I/O | {sweep[0].images_per_s:.1f} -> {top.images_per_s:.1f} img/s at "
                     f"{top.note} |")
    for without, with_, what in (("3m0", "3m", "dataset photos"), ("3M0", "3M", "12 MP photos")):
        a, b = find(results, without), find(results, with_)
        if a and b:
            lines.append(f"| system shared memory for the input, same-host client ({what}, rows {without} -> {with_}) "
                         f"| within noise for ~50 KB files: a gRPC message copy costs microseconds against ~10 ms "
                         f"of CPU per image; a few % at most for ~0.5 MB files "
                         f"| {a.images_per_s:.1f} -> {b.images_per_s:.1f} img/s ({b.images_per_s / a.images_per_s:.2f}x), "
                         f"p50 {a.percentile_ms(50):.1f} -> {b.percentile_ms(50):.1f} ms |")
    s2 = find(results, "S2")
    if s2 and now16:
        lines.append(f"| one server -> two local servers, client round-robin | <= 1.0x on 2 cores: both servers share "
                     f"the same two cores, a second one adds only another preprocess/ORT pool competing for them "
                     f"| {now16.images_per_s:.1f} -> {s2.images_per_s:.1f} img/s ({s2.images_per_s / now16.images_per_s:.2f}x) |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="FP32 classifier ONNX")
    parser.add_argument("--name", default="effnet_lite0", help="ensemble name in the temp repository")
    parser.add_argument("--images", help="folder of images (default: a seeded draw of the test split)")
    parser.add_argument("--count", type=int, default=96, help="images per round of each row")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per row (shared-box drift)")
    parser.add_argument("--int8-model", default=str(DEFAULT_INT8),
                        help="INT8 ONNX (default: the repository's effnet_lite0_int8; '' quantizes --model now, QDQ)")
    parser.add_argument("--calibration-count", type=int, default=64)
    parser.add_argument("--accuracy-count", type=int, default=0,
                        help="test-split images for the INT8 accuracy change (0: whole split)")
    parser.add_argument("--keras-model", help=".keras file for row 7 (default: same architecture, built)")
    parser.add_argument("--out", default=str(REPO_ROOT / "BENCHMARKS.md"))
    parser.add_argument("--json", help="also write every row and the profile as JSON here")
    parser.add_argument("--quick", action="store_true", help="fewer sweep points (CI smoke)")
    args = parser.parse_args(argv)

    model = Path(args.model)
    if not model.is_file():
        print(f"error: {model} does not exist (the trained model is not exported yet?); "
              "pass --model PATH.onnx", file=sys.stderr)
        return 2
    started = time.perf_counter()
    machine = machine_description()
    paths = pick_images(args.images, args.count)
    encoded = [p.read_bytes() for p in paths]
    batches = (1, 16) if args.quick else BATCHES
    in_flights = (1, 16) if args.quick else IN_FLIGHT
    results: list[Row] = []
    sweeps: dict = {}
    profile: dict = {}
    extra: dict = {"images": len(paths), "model": str(model)}

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        folder = stage_folder(paths, tmp / "images")
        from training.preprocessing import imaging

        pixels = np.stack([imaging.preprocess_bytes(b) for b in encoded])

        int8 = Path(args.int8_model) if args.int8_model else None
        if int8 is None:
            from export.quantize import quantize_static, split_items

            log("row 6: quantizing (QDQ, per-channel)")
            int8 = tmp / "model_int8.onnx"
            t = time.perf_counter()
            quantize_static(model, int8, [p for p, _ in split_items("train", limit=args.calibration_count)])
            extra["quantize_s"] = time.perf_counter() - t

        # (1), (2), (6a) in-process, same session settings as the server's backend, interleaved
        log(f"rows 1, 2, 6a: in-process onnxruntime, {args.rounds} interleaved rounds")
        # Thread count is swept too: on a box where another process holds a core, a 2-thread ORT
        # pool waits at every layer's barrier for its unscheduled thread (see notes).
        sessions = {(kind, t): R.ort_session(path, t) for kind, path in (("fp32", model), ("int8", int8))
                    for t in THREADS}
        items = {}
        for t in THREADS:
            for b in batches:
                items[("fp32", t, b)] = lambda b=b, t=t: R.ort_pixels(
                    sessions[("fp32", t)], pixels, b, "1", "ORT in-process, decoded pixels", t)
                items[("int8", t, b)] = lambda b=b, t=t: R.ort_pixels(
                    sessions[("int8", t)], pixels, b, "6a", "INT8 ORT in-process, decoded pixels", t)
        measured = interleaved(items, args.rounds)
        sweeps["1"] = [measured[("fp32", t, b)] for t in THREADS for b in batches]
        sweeps["6a"] = [measured[("int8", t, b)] for t in THREADS for b in batches]
        row1, row6a = best(sweeps["1"]), best(sweeps["6a"])
        best_b, best_t = row1.params["batch"], row1.params["threads"]
        session = sessions[("fp32", best_t)]
        single_t = best([r for r in sweeps["1"] if r.params["batch"] == 1] or [row1]).params["threads"]
        imaging_before = R.imaging_at(PREPROCESS_BEFORE, tmp / "imaging_before.py")
        phone = R.phone_sized(encoded[:16])
        phone_note = f"{len(phone)} photos enlarged to 4032x3024, JPEG q90 ({sum(map(len, phone)) / len(phone) / 1e6:.1f} MB each)"
        plan = {
            "2": lambda: R.ort_files(session, encoded, best_b, "2", "ORT in-process, decode+letterbox+infer", best_t),
            "2b": lambda: R.ort_files(sessions[("fp32", single_t)], encoded, 1, "2b",
                                      "ORT in-process, decode+infer, one image at a time", single_t),
            "2c": lambda: R.ort_files(sessions[("fp32", 1)], encoded, 1, "2c",
                                      "ORT in-process, decode+infer, one image at a time, the server's 1 thread", 1),
            "2p": lambda: R.preprocess_only(imaging, encoded, "2p", "preprocess code alone (decode, trim, letterbox)"),
            "2d": lambda: R.preprocess_only(imaging, phone, "2d", "preprocess code alone, 12 MP photos (JPEG draft mode)",
                                            note=phone_note),
            "2d0": lambda: R.preprocess_only(imaging, phone, "2d0", "the same without draft mode (full-size decode)",
                                             draft=False, note=phone_note),
        }
        if imaging_before is not None:
            plan["2p0"] = lambda: R.preprocess_only(imaging_before, encoded, "2p0",
                                                    f"preprocess code alone, before ({PREPROCESS_BEFORE})")
        measured = interleaved(plan, args.rounds)
        row2, row2_single = measured["2"], measured["2b"]
        row2_one_thread = measured["2c"]
        results += [row1, row2, row2_single, row2_one_thread, row6a, measured["2p"], measured["2d"], measured["2d0"]] + ([measured["2p0"]] if "2p0" in measured else [])
        del session, sessions

        # (3)-(6b) and the variants: every server up at once, measured in interleaved rounds
        # "Before" variants: each puts back one earlier choice, so the same run shows what it bought.
        delay = lambda us: lambda text: re.sub(r"max_queue_delay_microseconds: \d+",
                                               f"max_queue_delay_microseconds: {us}", text)

        def one_instance_two_threads(text):
            text = re.sub(r"(instance_group \[\s*\{\s*count: )\d+", r"\g<1>1", text)
            return re.sub(r'(intra_op_thread_count"\s*value: \{ string_value: )"\d+"', r'\1"2"', text)

        cls = f"{args.name}_classifier"
        repos = {
            "on": R.make_repository(tmp / "repo", model, args.name),
            "off": R.make_repository(tmp / "repo_off", model, args.name, batching=False),
            "int8": R.make_repository(tmp / "repo_int8", int8, args.name),
            "delay5": R.make_repository(tmp / "repo_delay5", model, args.name,
                                        edits={cls: delay(5000), "preprocess": delay(1000)}),
            "delay05": R.make_repository(tmp / "repo_delay05", model, args.name,
                                         edits={cls: delay(500), "preprocess": delay(1000)}),
            "one2": R.make_repository(tmp / "repo_one2", model, args.name, edits={cls: one_instance_two_threads}),
        }
        if imaging_before is not None:
            for key, onnx in (("pre0", model), ("pre0_int8", int8)):
                repos[key] = R.make_repository(tmp / f"repo_{key}", onnx, args.name)
                shutil.copyfile(tmp / "imaging_before.py", repos[key] / "preprocess" / "1" / "imaging.py")
        log(f"starting {len(repos) + 1} tritonservers (one per configuration, plus a second 'on' for scale-out)")
        servers = R.start_servers(stack, [repos[k] for k in repos] + [repos["on"]])
        srv = dict(zip(list(repos) + ["on2"], servers))
        for server in servers:
            R.warm_up(server, args.name, [str(p) for p in paths[:16]])

        def bulk(key, what, config, n, protocol="grpc", model_name=args.name, extra_servers=()):
            chosen = [srv[config], *[srv[e] for e in extra_servers]]
            return lambda: R.triton_bulk(chosen, protocol, model_name, folder, n, key, what)

        log(f"row 3 sweep: in flight {in_flights}, {args.rounds} interleaved rounds")
        measured = interleaved({n: bulk("3", "Triton bulk scorer", "on", n) for n in in_flights}, args.rounds)
        sweeps["3"] = [measured[n][0] for n in in_flights]
        for n in in_flights:
            profile[f"grpc {n} in flight"] = measured[n][1]
        row3 = best(sweeps["3"])

        # Every comparison below is between rows of this one interleaved plan (the same moments of
        # background load), at 16 in flight, the batching point, unless named otherwise.
        log(f"rows 3 (http), 4, 5, 6b, variants, scale-out at 16 / 1 in flight, {args.rounds} rounds")
        plan = {
            "on16": bulk("3r", "Triton bulk scorer (reference for the rows below)", "on", 16),
            "http": bulk("3", "Triton bulk scorer", "on", 16, protocol="http"),
            "tta": bulk("5", "Triton TTA (2 views)", "on", 16, model_name=f"{args.name}_tta"),
            "off16": bulk("4", "Triton, dynamic batching off", "off", 16),
            "int8": bulk("6b", "INT8 Triton bulk scorer", "int8", 16),
            # INT8 finishes each request sooner, so it may need more in flight to keep both cores busy:
            # the INT8 target compares each model at its better of 16 and 32 in flight.
            "on32": bulk("3r", "Triton bulk scorer (reference for the rows below)", "on", 32),
            "int8_32": bulk("6b", "INT8 Triton bulk scorer", "int8", 32),
            "on1": bulk("3s", "Triton, one request in flight", "on", 1),
            "delay5": bulk("V1", "before: batcher delay 5 ms classifier + 1 ms preprocess", "delay5", 1),
            "delay05": bulk("V0", "before: batcher delay 0.5 ms classifier + 1 ms preprocess", "delay05", 1),
            "one2": bulk("V2", "before: 1 classifier instance x 2 ORT threads", "one2", 16),
            "one2_1": bulk("V2", "before: 1 classifier instance x 2 ORT threads", "one2", 1),
            "s2": bulk("S2", "two local servers, client round-robin", "on", 16, extra_servers=("on2",)),
            # System shared memory for a client on the server's host: the same plain gRPC loop with
            # and without it, on the dataset photos and on 12 MP phone-sized ones.
            "shm": lambda: R.triton_shm_loop(srv["on"], args.name, encoded, 16, "3m", "gRPC loop, input in shared memory",
                                             shared_memory=True),
            "shm0": lambda: R.triton_shm_loop(srv["on"], args.name, encoded, 16, "3m0", "the same loop, input in the message",
                                              shared_memory=False),
            "shm_12mp": lambda: R.triton_shm_loop(srv["on"], args.name, phone, 16, "3M",
                                                  "gRPC loop, 12 MP photos, input in shared memory", shared_memory=True),
            "shm0_12mp": lambda: R.triton_shm_loop(srv["on"], args.name, phone, 16, "3M0",
                                                   "the same loop, 12 MP photos, input in the message", shared_memory=False),
        }
        if imaging_before is not None:
            plan["pre0"] = bulk("V3", f"before: preprocess code of {PREPROCESS_BEFORE}", "pre0", 16)
            plan["pre0_int8"] = bulk("V4", f"INT8, before: preprocess code of {PREPROCESS_BEFORE}", "pre0_int8", 16)
        measured = interleaved(plan, args.rounds)
        for label, (row, delta) in measured.items():
            profile[f"{label}: {row.what}, {row.note}"] = delta
        row3r, row3h, row5, row4, row6b, single = (
            measured[k][0] for k in ("on16", "http", "tta", "off16", "int8", "on1"))
        row_two = measured["s2"][0]
        fp32_best = best([row3r, measured["on32"][0]])
        int8_best = best([row6b, measured["int8_32"][0]])
        results += [row3, row3r, measured["on32"][0], row3h, single, row5, row4, row6b, measured["int8_32"][0], row_two]
        results += [measured[k][0] for k in ("delay5", "delay05", "one2", "one2_1", "pre0", "pre0_int8",
                                             "shm0", "shm", "shm0_12mp", "shm_12mp") if k in measured]
        stack.close()

        log("accuracy: FP32 vs INT8 on the test split")
        from export.quantize import compare_int8, split_items

        extra["accuracy"] = compare_int8(model, int8, split_items("test", limit=args.accuracy_count or None))

        log("row 7: Keras model.predict one image at a time")
        row7 = R.keras_one_by_one(encoded, args.keras_model, "7", "Keras model.predict, one image at a time")
        results.append(row7)

        log("row 8: arithmetic limit")
        flops = R.model_flops(model)
        rate = R.matmul_flops_per_s()
        row8 = Row("8", "arithmetic limit: graph FLOPs / numpy matmul FLOP/s", 0, 0.0,
                   note=f"{flops / 1e9:.3f} GFLOP/img, {rate / 1e9:.1f} GFLOP/s")
        extra.update(flops_per_image=flops, matmul_flops_per_s=rate, limit_images_per_s=rate / flops)
        results.append(row8)

    # row 8 has no measured run: its images/s is the quotient
    row8.images, row8.seconds = 1, flops / rate
    e2e = max(row3, row3h, key=lambda r: r.images_per_s)
    single_inproc = row2_single.percentile_ms(50)
    # Ratios between Triton rows use the plan's rows (same rounds, 16 in flight); row 3 is the
    # best point of the in-flight sweep, the end-to-end figure.
    targets = [
        ("E2E bulk >= 80% of row 2", e2e.images_per_s / row2.images_per_s, 0.8),
        ("E2E bulk >= 5x row 7", e2e.images_per_s / row7.images_per_s, 5.0),
        ("batching on / off at 16 in flight >= 1.5 (3r / 4)", row3r.images_per_s / row4.images_per_s, 1.5),
        ("INT8 / FP32 in-process >= 1.5 (6a / 1)", row6a.images_per_s / row1.images_per_s, 1.5),
        ("INT8 / FP32 through Triton, each at its best of 16 / 32 in flight >= 1.5 (6b / 3r)",
         int8_best.images_per_s / fp32_best.images_per_s, 1.5),
        ("INT8 accuracy change >= -0.5 points", extra["accuracy"]["change_points"], -0.5),
        ("single-image p95 (1 in flight) <= 2x in-process single-image p50 (2b, best threads)",
         single_inproc * 2 / single.percentile_ms(95), 1.0),
        ("the same against in-process with the server's 1 thread per request (2c)",
         row2_one_thread.percentile_ms(50) * 2 / single.percentile_ms(95), 1.0),
        ("two servers / one server > 1 (S2 / 3r)", row_two.images_per_s / row3r.images_per_s, 1.0 + 1e-9),
    ]
    target_lines = ["| target | measured | needed | met |", "|---|---|---|---|"]
    for name, value, need in targets:
        target_lines.append(f"| {name} | {value:.2f} | {need:g} | {'yes' if value >= need else 'NO'} |")
    target_lines.append(f"\nSingle-image latency at one request in flight: p95 {single.percentile_ms(95):.1f} ms "
                        f"(p50 {single.percentile_ms(50):.1f} ms); in-process single image (decode + ORT) "
                        f"p50 {single_inproc:.1f} ms.")
    acc = extra["accuracy"]
    target_lines.append(f"INT8 on {acc['images']} test-split images: FP32 accuracy {acc['fp32_accuracy']:.4f}, "
                        f"INT8 {acc['int8_accuracy']:.4f} ({acc['change_points']:+.2f} points), "
                        f"top-1 agreement {acc['top1_agreement']:.4f}.")
    change_lines = changes_table(results, row1, row6a, profile, sweeps["3"])
    elapsed = time.perf_counter() - started

    sweep_lines = []
    for key, rows in sweeps.items():
        sweep_lines.append(f"- row {key}: " + ", ".join(f"{r.note}: {r.images_per_s:.1f} img/s" for r in rows))
    profile_text = "\n\n".join(f"**{name}**\n\n{profile_table(delta)}" for name, delta in profile.items())
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    int8_source = (f"`{_shown(args.int8_model)}`, the repository's INT8 model" if args.int8_model else
                   f"QDQ per-channel from `export/quantize.py` ({args.calibration_count} training images for calibration)")
    doc = f"""# Benchmarks

Generated by `{command.strip()}` on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} in {elapsed:.0f} s.
Every number below was measured in that one run.

## Machine

- CPU: {machine['cpu_model']} ({machine['simd']}), {machine['logical_cores']} logical cores ({machine['physical_cores']} physical)
- Memory {machine['memory_gib']} GiB; {machine['os']}; Python {machine['python']}
- Load average at the start: {machine['load_average']} (the box is shared; "CPU machine %" includes other jobs)

## Setup

- Model: `{_shown(model)}` (FP32, {flops / 1e9:.3f} GFLOP per image counted from its Conv/Gemm/MatMul nodes); INT8: {int8_source}.
- Images: the same {len(paths)} files for every row ({'folder ' + args.images if args.images else 'seeded draw of the test split'}), sent in {args.rounds} interleaved rounds (rows A, B, C, A, B, C, ...), so a row's image count is {args.rounds} x {len(paths)}; the Keras row runs the same files once.
- Latency is per request: one `session.run` / `predict` call for in-process rows, one `classify` call seen by the client for Triton rows.
- "CPU ours %" = CPU seconds of this process + the Triton server(s) and their python stubs, over wall time x all cores.
- Triton rows run the committed configs in a temporary copy of `model_repository/` with the model above; row 4 deletes every `dynamic_batching` block in that copy; rows V1-V4 each put one earlier choice back (see "Changes tried").
- Row 3 is the best point of the in-flight sweep; rows 3r, 3 (http), 3s, 4, 5, 6b, S2 and V1-V4 were measured together in one interleaved plan, and the ratios between Triton rows compare rows of that plan.

## Results

{table(results)}

Sweeps (best point is the row above):

{chr(10).join(sweep_lines)}

## Targets (ratios from this run)

{chr(10).join(target_lines)}

## Changes tried: predicted and measured effect (same run)

Each "before" is a variant in the benchmark's temporary repository copy (a config edit, or the
previous `preprocess/1/imaging.py` from git), measured in the same rounds as the committed "now".

{chr(10).join(change_lines)}

## CPU per image by process (milliseconds of CPU time, all cores summed)

{cpu_table([r for r in results if r.key in ("3r", "3s", "4", "5", "6b", "V3", "V4", "3m0", "3m")])}

## Where the time goes (Triton per-model counters over each measured run)

{profile_text}
"""
    if NOTES.is_file():
        doc += "\n" + NOTES.read_text()
    Path(args.out).write_text(doc)
    print(table(results))
    print()
    print("\n".join(target_lines))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine, "extra": extra, "profile": profile,
            "rows": [{**{k: v for k, v in r.__dict__.items() if k != "latencies_s"},
                      "images_per_s": r.images_per_s, "p50_ms": r.percentile_ms(50),
                      "p95_ms": r.percentile_ms(95), "p99_ms": r.percentile_ms(99)} for r in results],
        }, indent=2, default=str))
    log(f"wrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

