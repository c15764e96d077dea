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
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import rows as R
from benchmarks.measure import Row, machine_description

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "model_repository" / "effnet_lite0_classifier" / "1" / "model.onnx"
NOTES = Path(__file__).resolve().parent / "notes.md"
BATCHES = (1, 4, 8, 16, 32)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="FP32 classifier ONNX")
    parser.add_argument("--name", default="effnet_lite0", help="ensemble name in the temp repository")
    parser.add_argument("--images", help="folder of images (default: a seeded draw of the test split)")
    parser.add_argument("--count", type=int, default=160, help="images per row")
    parser.add_argument("--int8-model", help="INT8 ONNX (default: quantize --model now, QDQ)")
    parser.add_argument("--calibration-count", type=int, default=64)
    parser.add_argument("--accuracy-count", type=int, default=300,
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

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp = Path(tmp)
        folder = stage_folder(paths, tmp / "images")
        from training.preprocessing import imaging

        pixels = np.stack([imaging.preprocess_bytes(b) for b in encoded])

        # (1)/(2) in-process, same session settings as the server's backend
        log("rows 1-2: in-process onnxruntime")
        session = R.ort_session(model)
        sweep = [R.ort_pixels(session, pixels, b, "1", "ORT in-process, decoded pixels") for b in batches]
        sweeps["1"] = sweep
        row1 = best(sweep)
        results.append(row1)
        row2 = R.ort_files(session, encoded, int(row1.note.split()[-1]), "2", "ORT in-process, decode+letterbox+infer")
        results.append(row2)
        row2_single = R.ort_files(session, encoded, 1, "2b", "ORT in-process, decode+infer, one image at a time")
        results.append(row2_single)
        del session

        # (6a) INT8 in-process
        int8 = Path(args.int8_model) if args.int8_model else None
        if int8 is None:
            from export.quantize import quantize_static, split_items

            log("row 6: quantizing (QDQ, per-channel)")
            int8 = tmp / "model_int8.onnx"
            t = time.perf_counter()
            quantize_static(model, int8, [p for p, _ in split_items("train", limit=args.calibration_count)])
            extra["quantize_s"] = time.perf_counter() - t
        session8 = R.ort_session(int8)
        row6a = R.ort_pixels(session8, pixels, int(row1.note.split()[-1]), "6a", "INT8 ORT in-process, decoded pixels")
        results.append(row6a)
        del session8

        # (3)-(5) Triton
        warm = [str(p) for p in sorted(folder.rglob("*.jpg"))[:32]]
        repo = R.make_repository(tmp / "repo", model, args.name)
        log("rows 3, 5: Triton, dynamic batching on")
        with R.triton(repo) as servers:
            sweep = []
            for n in in_flights:
                row, delta = R.triton_bulk(servers, "grpc", args.name, folder, n, "3", "Triton bulk scorer", warm)
                sweep.append(row)
                profile[f"grpc {n} in flight"] = delta
                log(f"  grpc {n} in flight: {row.images_per_s:.1f} img/s")
            sweeps["3"] = sweep
            row3 = best(sweep)
            best_n = int(row3.note.split(",")[1].split()[0])
            single = sweep[0]
            single.key, single.what = "3s", "Triton, one request in flight"
            batched16 = next((r for r in sweep if r.note.startswith("grpc, 16 ")), None)
            row3h, delta = R.triton_bulk(servers, "http", args.name, folder, best_n, "3", "Triton bulk scorer", warm)
            profile[f"http {best_n} in flight"] = delta
            results += [row3, row3h, single]
            row5, delta = R.triton_bulk(servers, "grpc", f"{args.name}_tta", folder, best_n, "5", "Triton TTA (2 views)", warm)
            profile[f"tta grpc {best_n} in flight"] = delta
            results.append(row5)

        log("row 4: Triton, dynamic batching off")
        repo_off = R.make_repository(tmp / "repo_off", model, args.name, batching=False)
        with R.triton(repo_off) as servers:
            row4, delta = R.triton_bulk(servers, "grpc", args.name, folder, 16, "4", "Triton, dynamic batching off", warm)
            profile["batching off grpc 16 in flight"] = delta
            results.append(row4)

        log("row 6b: Triton INT8")
        repo8 = R.make_repository(tmp / "repo_int8", int8, args.name)
        with R.triton(repo8) as servers:
            row6b, delta = R.triton_bulk(servers, "grpc", args.name, folder, best_n, "6b", "INT8 Triton bulk scorer", warm)
            profile[f"int8 grpc {best_n} in flight"] = delta
            results.append(row6b)

        log("scale-out: two servers")
        with R.triton(repo, extra_servers=1) as servers:
            row_one, _ = R.triton_bulk(servers[:1], "grpc", args.name, folder, best_n, "S1", "one server (same moment)", warm)
            row_two, _ = R.triton_bulk(servers, "grpc", args.name, folder, best_n, "S2", "two local servers, client round-robin", warm)
            results += [row_one, row_two]

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
    targets = [
        ("E2E bulk >= 80% of row 2", e2e.images_per_s / row2.images_per_s, 0.8),
        ("E2E bulk >= 5x row 7", e2e.images_per_s / row7.images_per_s, 5.0),
        ("batching on / off at 16 in flight >= 1.5", (batched16.images_per_s if batched16 else float("nan")) / row4.images_per_s, 1.5),
        ("INT8 / FP32 in-process >= 1.5", row6a.images_per_s / row1.images_per_s, 1.5),
        ("INT8 / FP32 through Triton >= 1.5", row6b.images_per_s / row3.images_per_s, 1.5),
        ("INT8 accuracy change >= -0.5 points", extra["accuracy"]["change_points"], -0.5),
        ("single-image p95 (1 in flight) <= 2x in-process single-image p50",
         single_inproc * 2 / single.percentile_ms(95), 1.0),
        ("two servers / one server > 1", row_two.images_per_s / row_one.images_per_s, 1.0 + 1e-9),
    ]
    target_lines = ["| target | measured | needed | met |", "|---|---|---|---|"]
    for name, value, need in targets:
        target_lines.append(f"| {name} | {value:.2f} | {need:g} | {'yes' if value >= need else 'NO'} |")
    target_lines.append(f"\nSingle-image latency at one request in flight: p95 {single.percentile_ms(95):.1f} ms "
                        f"(p50 {single.percentile_ms(50):.1f} ms); in-process single image p50 {single_inproc:.1f} ms.")
    acc = extra["accuracy"]
    target_lines.append(f"INT8 on {acc['images']} test-split images: FP32 accuracy {acc['fp32_accuracy']:.4f}, "
                        f"INT8 {acc['int8_accuracy']:.4f} ({acc['change_points']:+.2f} points), "
                        f"top-1 agreement {acc['top1_agreement']:.4f}.")
    elapsed = time.perf_counter() - started

    sweep_lines = []
    for key, rows in sweeps.items():
        sweep_lines.append(f"- row {key}: " + ", ".join(f"{r.note}: {r.images_per_s:.1f} img/s" for r in rows))
    profile_text = "\n\n".join(f"**{name}**\n\n{profile_table(delta)}" for name, delta in profile.items())
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = f"""# Benchmarks

Generated by `{command.strip()}` on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} in {elapsed:.0f} s.
Every number below was measured in that one run.

## Machine

- CPU: {machine['cpu_model']} ({machine['simd']}), {machine['logical_cores']} logical cores ({machine['physical_cores']} physical)
- Memory {machine['memory_gib']} GiB; {machine['os']}; Python {machine['python']}
- Load average at the start: {machine['load_average']} (the box is shared; "CPU machine %" includes other jobs)

## Setup

- Model: `{model}` (FP32, {flops / 1e9:.3f} GFLOP per image counted from its Conv/Gemm/MatMul nodes); INT8: QDQ per-channel from `export/quantize.py` ({args.calibration_count} training images for calibration).
- Images: the same {len(paths)} files for every row ({'folder ' + args.images if args.images else 'seeded draw of the test split'}); Keras row on the same files.
- Latency is per request: one `session.run` / `predict` call for in-process rows, one `classify` call seen by the client for Triton rows.
- "CPU ours %" = CPU seconds of this process + the Triton server(s) and their python stubs, over wall time x all cores.
- Triton rows run the committed configs in a temporary copy of `model_repository/` with the model above; row 4 deletes every `dynamic_batching` block in that copy.

## Results

{table(results)}

Sweeps (best point is the row above):

{chr(10).join(sweep_lines)}

## Targets (ratios from this run)

{chr(10).join(target_lines)}

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
