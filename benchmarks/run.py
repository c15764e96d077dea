"""`make bench`: one run, the same images and model for every row; prints the table, writes BENCHMARKS.md.

    .venv/bin/python -m benchmarks.run [--model PATH.onnx] [--count 96] [--images DIR]
        [--int8-model PATH] [--keras-model PATH] [--out BENCHMARKS.md] [--quick]

The rows are declared in `benchmarks/plan.py`; this module only executes them: (1) in-process
ORT on decoded pixels, best batch; (2) the same with decode + letterbox; (3) bulk scoring through
Triton with the client, gRPC and HTTP, best in-flight count; (4) dynamic batching off; (5) TTA vs
plain; (6) INT8 vs FP32; (7) Keras model.predict one image at a time; (8) arithmetic limit
(graph FLOPs / measured matmul FLOP/s); the repository variants (V0-V3). `benchmarks/report.py`
writes the tables and the targets.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import plan as P
from benchmarks import report
from benchmarks import rows as R
from benchmarks import runtimes
from benchmarks import serving_targets as T
from benchmarks.duplicates import duplicate_job
from benchmarks.raw_loop import client_at, raw_asyncio_loop, raw_command, scorer_command
from benchmarks.measure import REPO_ROOT, Row, interleaved, machine_description, shown_command, shown_path
from contract import DEFAULT_MODEL, classifier_model, int8_model, is_image_name, tta_model
from export.model_repository import latest_version, write_repository

COMMITTED = REPO_ROOT / "model_repository"
NOTES = Path(__file__).resolve().parent / "notes.md"
#: Written by `python -m benchmarks.scorer_defaults` (its own run, dated inside), appended after the notes.
ENGINES = Path(__file__).resolve().parent / "engines.md"
#: Name of the classifier in the benchmark's repositories.
NAME = DEFAULT_MODEL
#: The committed two-network model (export.average) whose classifier and INT8 twin rows SCp / SCpi
#: measure, served under NAME in the benchmark's repository like every other variant.
PAIR = f"{NAME}_pair"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _latest(name: str) -> str:
    try:
        return str(latest_version(COMMITTED / classifier_model(name)))
    except FileNotFoundError:
        return ""


def pick_images(folder: str | None, count: int) -> list[Path]:
    """The benchmark's images: `folder`'s files, or a seeded draw from the test split (else samples)."""
    from export.quantize import DATA_DIR, split_items

    if folder:
        return sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_name(p.name))[:count]
    if DATA_DIR.is_dir():
        return [p for p, _ in split_items("test", limit=count)]
    return sorted(p for p in (REPO_ROOT / "samples" / "garbage12").rglob("*") if is_image_name(p.name))[:count]


def stage_folder(paths: list[Path], dest: Path) -> Path:
    """Copy the images into one folder for the bulk scorer (class subfolders kept, names unique)."""
    for path in paths:
        target = dest / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dest


def local_rows(args, model: Path, int8: Path, encoded: list[bytes], phone: list[bytes],
               batches, sweeps: dict) -> dict:
    """Rows 1, 6a (swept) and the LOCAL_PLAN rows, each in interleaved rounds."""
    from training.preprocessing import imaging

    pixels = np.stack([imaging.preprocess_bytes(b) for b in encoded])
    files = {"fp32": model, "int8": int8}
    sessions = {(kind, t): R.ort_session(files[kind], t) for _, kind, _ in P.PIXEL_SWEEPS for t in P.THREADS}
    items = {(key, t, b): (lambda key=key, kind=kind, what=what, t=t, b=b:
                           R.ort_pixels(sessions[(kind, t)], pixels, b, key, what, t))
             for key, kind, what in P.PIXEL_SWEEPS for t in P.THREADS for b in batches}
    # OpenVINO on the same pixels in the same rounds, so ORT / OpenVINO compares the same moments.
    compiled = {(kind, t): runtimes.openvino_compiled(files[kind], t) for _, kind, _ in P.OPENVINO_SWEEPS
                for t in P.THREADS}
    ov_batches = [b for b in batches if b in P.OPENVINO_BATCHES] or list(batches)
    items.update({(key, t, b): (lambda key=key, kind=kind, what=what, t=t, b=b:
                                runtimes.openvino_pixels(compiled[(kind, t)], pixels, b, key, what, t))
                  for key, kind, what in P.OPENVINO_SWEEPS for t in P.THREADS for b in ov_batches})
    log(f"rows {', '.join(k for k, _, _ in P.PIXEL_SWEEPS + P.OPENVINO_SWEEPS)}: in-process sweep, "
        f"{args.rounds} interleaved rounds")
    measured = interleaved(items, args.rounds)
    m = {}
    ov_keys = {key for key, _, _ in P.OPENVINO_SWEEPS}
    for key, _, _ in P.PIXEL_SWEEPS + P.OPENVINO_SWEEPS:
        points = ov_batches if key in ov_keys else batches
        sweeps[key] = [measured[(key, t, b)] for t in P.THREADS for b in points]
        m[key] = report.best(sweeps[key])
    row1 = m["1"]
    chosen = {"best": (row1.params["batch"], row1.params["threads"]),
              "single": (1, report.best([r for r in sweeps["1"] if r.params["batch"] == 1] or [row1]).params["threads"])}
    phone_note = (f"{len(phone)} photos enlarged to 4032x3024, JPEG q90 "
                  f"({sum(map(len, phone)) / len(phone) / 1e6:.1f} MB each)")

    def measure(row: P.LocalRow):
        data = phone if row.photos == "phone" else encoded
        if row.kind == "preprocess":
            kwargs = {"note": phone_note} if row.photos == "phone" else {}
            return lambda: R.preprocess_only(imaging, data, row.key, row.what, draft=row.draft, **kwargs)
        batch = chosen["best"][0] if row.batch == "best" else row.batch
        threads = chosen[row.threads][1] if isinstance(row.threads, str) else row.threads
        session = sessions[("fp32", threads)]
        return lambda: R.ort_files(session, data, batch, row.key, row.what, threads)

    plan = {row.label: measure(row) for row in P.LOCAL_PLAN}
    cores = os.cpu_count() or 1
    sweep_kind = {key: kind for key, kind, _ in P.PIXEL_SWEEPS}
    for key, sweep_key, what in P.EVERY_CORE_ROWS:
        kind = sweep_kind[sweep_key]
        single = T.single_thread_best(sweeps[sweep_key])
        if single is not None:
            every = [R.ort_session(files[kind], 1) for _ in range(cores)]
            plan[key] = (lambda every=every, b=single.params["batch"], key=key, what=what:
                         R.ort_pixels_every_core(every, pixels, b, key, what))
    ovep_key, ovep_what = P.ORT_OPENVINO_ROW
    if runtimes.ort_openvino_python() is not None:
        batch, threads = chosen["best"]
        plan[ovep_key] = lambda: runtimes.ort_openvino_pixels(model, pixels, batch, ovep_key, ovep_what, threads)
    else:
        log(f"row {ovep_key} skipped: no venv with onnxruntime-openvino (scripts/ort_openvino_venv.sh)")
    log(f"rows {', '.join(plan)}: in-process, {args.rounds} interleaved rounds")
    m.update(interleaved(plan, args.rounds))
    return m


def triton_rows(args, stack, tmp: Path, files: dict, folder: Path, paths: list[Path], encoded, phone,
                in_flights, sweeps: dict, deltas: dict, titles: dict) -> dict:
    """Start one server per variant (two where a row needs them), run the sweep and TRITON_PLAN."""
    repositories, owners, caches = [], [], []
    for variant in P.VARIANTS:
        if variant.model not in files:
            continue
        repo = write_repository(tmp / f"repo_{variant.key}", {NAME: files[variant.model]}, **variant.options)
        repositories += [repo] * variant.servers
        owners += [variant.key] * variant.servers
        caches += [variant.cache_bytes] * variant.servers
    log(f"starting {len(repositories)} tritonservers (one per variant, more where a row needs them)")
    started = R.start_servers(stack, repositories, caches)
    servers: dict = {}
    for key, server in zip(owners, started):
        servers.setdefault(key, []).append(server)
    for server in started:
        R.warm_up(server, NAME, [str(p) for p in paths[:16]])

    # The scorer-vs-raw rows (R*, SC*) score a job of `job_copies` x the images (the same files under
    # new names), so that the command's start-up (Python, imports, the first connection: a few
    # tenths of a second) is not most of what a whole-process row measures.
    job_folder = tmp / "job"
    job_folder.mkdir()
    for copy in range(args.job_copies):
        for path in paths:
            os.link(folder / path.parent.name / path.name, job_folder / f"{copy:03d}_{path.parent.name}_{path.name}")
    job_encoded = encoded * args.job_copies

    def measure(row: P.TritonRow):
        chosen = servers[row.variant][:row.servers]
        model = tta_model(NAME) if row.tta else NAME
        if row.loop == "scorer":
            return lambda: R.triton_bulk(chosen, row.protocol, model, folder, row.in_flight, row.key, row.what)
        if row.loop == "raw":
            return lambda: raw_asyncio_loop(chosen, model, job_encoded, row.per_request, row.in_flight, row.key,
                                            row.what)
        if row.loop == "raw_command":
            return lambda: raw_command(chosen, model, job_folder, row.per_request, row.in_flight, row.key, row.what,
                                       images=len(job_encoded))
        if row.loop == "command":
            client = client_at(row.before, tmp) if row.before else None
            return lambda: scorer_command(chosen, model, job_folder, row.key, row.what, row.args,
                                          images=len(job_encoded), client_path=client)
        if row.loop == "duplicates":
            # A fresh salt per row and round: no round may hit entries an earlier one left in the cache.
            rounds = iter(range(10**6))
            return lambda: duplicate_job(chosen, model, paths, tmp / "duplicates", row.key, row.what, args=row.args,
                                         round_salt=f"{row.label}-{next(rounds)}".encode())
        data = phone if row.photos == "phone" else encoded
        return lambda: R.triton_shm_loop(chosen[0], model, data, row.in_flight, row.key, row.what,
                                         shared_memory=row.loop == "shm")

    m = {}
    sweep = P.sweep(in_flights)
    log(f"row 3 sweep: in flight {in_flights}, {args.rounds} interleaved rounds")
    for label, (row, delta) in interleaved({r.label: measure(r) for r in sweep}, args.rounds).items():
        m[label], deltas[label], titles[label] = row, delta, label
    sweeps["3"] = [m[r.label] for r in sweep]
    log(f"Triton plan: {len(P.TRITON_PLAN)} rows, {args.rounds} interleaved rounds")
    for label, (row, delta) in interleaved({r.label: measure(r) for r in P.TRITON_PLAN if r.variant in servers}, args.rounds).items():
        m[label], deltas[label], titles[label] = row, delta, f"{label}: {row.what}, {row.note}"
    return m


def runtime_accuracy(model: Path, int8: Path, items, accuracy: dict) -> dict:
    """Test-split accuracy of the OpenVINO paths: {served kind: change in points against FP32 ORT, ...}.

    The "int8" entry is ONNX Runtime's INT8 change from `compare_int8`; "records" holds each
    `runtimes.agreement` record (the precision OpenVINO really used, top-1 agreement).
    """
    from contract import CLASSES

    images = [path.read_bytes() for path, _ in items]
    labels = [CLASSES.index(label) for _, label in items]
    records = {kind: runtimes.agreement(onnx, images, labels) for kind, onnx in (("fp32", model), ("int8", int8))}
    reference = accuracy["fp32_accuracy"]
    return {"int8": accuracy["change_points"],
            "openvino fp32": 100 * (records["fp32"]["other_accuracy"] - reference),
            "openvino int8": 100 * (records["int8"]["other_accuracy"] - reference),
            "records": records}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=_latest(NAME), help="FP32 classifier ONNX (default: the served version)")
    parser.add_argument("--images", help="folder of images (default: a seeded draw of the test split)")
    parser.add_argument("--count", type=int, default=96, help="images per round of each row")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per row (shared-box drift)")
    parser.add_argument("--job-copies", type=int, default=8,
                        help="rows R*/SC*: a job of this many copies of the images (start-up amortised)")
    parser.add_argument("--int8-model", default=_latest(int8_model(NAME)),
                        help=f"INT8 ONNX (default: the repository's {int8_model(NAME)}; '' quantizes --model now, QDQ)")
    parser.add_argument("--pair-model", default=_latest(PAIR),
                        help=f"the accurate pair's ONNX (default: the repository's {classifier_model(PAIR)}; "
                             "'' leaves its rows out)")
    parser.add_argument("--pair-int8-model", default=_latest(int8_model(PAIR)),
                        help=f"its INT8 twin (default: the repository's {classifier_model(int8_model(PAIR))}; "
                             "'' leaves its rows out)")
    parser.add_argument("--calibration-count", type=int, default=64)
    parser.add_argument("--accuracy-count", type=int, default=0,
                        help="test-split images for the INT8 accuracy change (0: whole split)")
    parser.add_argument("--keras-model", help=".keras file for row 7 (default: same architecture, built)")
    parser.add_argument("--out", default=str(REPO_ROOT / "BENCHMARKS.md"))
    parser.add_argument("--json", help="also write every row and the profile as JSON here")
    parser.add_argument("--quick", action="store_true", help="fewer sweep points (CI smoke)")
    args = parser.parse_args(argv)
    P.check_plan()

    model = Path(args.model)
    if not model.is_file():
        print(f"error: {args.model or 'the FP32 model'} does not exist (the trained model is not exported "
              "yet?); pass --model PATH.onnx", file=sys.stderr)
        return 2
    started = time.perf_counter()
    machine = machine_description()
    paths = pick_images(args.images, args.count)
    encoded = [p.read_bytes() for p in paths]
    batches = P.QUICK_BATCHES if args.quick else P.BATCHES
    in_flights = P.QUICK_IN_FLIGHT if args.quick else P.IN_FLIGHT
    sweeps: dict = {}
    deltas: dict = {}
    titles: dict = {}
    extra: dict = {"images": len(paths), "model": str(model)}

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        folder = stage_folder(paths, tmp / "images")
        int8 = Path(args.int8_model) if args.int8_model else None
        if int8 is None:
            from export.quantize import quantize_static, split_items

            log("row 6: quantizing (QDQ, per-channel)")
            int8 = tmp / "model_int8.onnx"
            t = time.perf_counter()
            quantize_static(model, int8, [p for p, _ in split_items("train", limit=args.calibration_count)])
            extra["quantize_s"] = time.perf_counter() - t
        phone = R.phone_sized(encoded[:16])
        m = local_rows(args, model, int8, encoded, phone, batches, sweeps)
        pairs = {"pair": args.pair_model, "pair_int8": args.pair_int8_model}
        files = {"fp32": model, "int8": int8, **{kind: Path(path) for kind, path in pairs.items() if path}}
        m.update(triton_rows(args, stack, tmp, files, folder, paths, encoded, phone,
                             in_flights, sweeps, deltas, titles))
        stack.close()

        log("accuracy: FP32 vs INT8 on the test split")
        from export.quantize import compare_int8, split_items

        test_items = split_items("test", limit=args.accuracy_count or None)
        accuracy = compare_int8(model, int8, test_items)
        log("accuracy: OpenVINO (bf16 hinted) against ONNX Runtime, FP32 and INT8, on the test split")
        accuracy16 = runtime_accuracy(model, int8, test_items, accuracy)
        log("row 7: Keras model.predict one image at a time")
        m["7"] = R.keras_one_by_one(encoded, args.keras_model, "7", "Keras model.predict, one image at a time")
        log("row 8: arithmetic limit")
        flops, rate = R.model_flops(model), R.matmul_flops_per_s()
        # Row 8 has no measured run: its images/s is the quotient.
        m["8"] = Row("8", "arithmetic limit: graph FLOPs / numpy matmul FLOP/s", 1, flops / rate,
                     note=f"{flops / 1e9:.3f} GFLOP/img, {rate / 1e9:.1f} GFLOP/s")
        extra.update(flops_per_image=flops, matmul_flops_per_s=rate, limit_images_per_s=rate / flops,
                     accuracy=accuracy, runtime_accuracy=accuracy16)

    # Row B / Bi has no measured run either: cores over the summed CPU per image of rows 2p and 1 / 6a.
    m.update(T.bound_rows(m, sweeps))
    m.update(T.every_core_bound_rows(m))
    # Table order: in-process, the sweep's best point, the Triton plan, Keras, the limits.
    labels = ([key for key, _, _ in P.PIXEL_SWEEPS + P.OPENVINO_SWEEPS] + [r.label for r in P.LOCAL_PLAN]
              + [P.ORT_OPENVINO_ROW[0]] + [key for key, _, _ in P.EVERY_CORE_ROWS])
    rows = ([m[label] for label in labels if label in m] + [report.best(sweeps["3"])]
            + [m[r.label] for r in P.TRITON_PLAN] + [m["7"], m["8"]] + [m[k] for k in ("B", "Bi", "Bc", "Bci") if k in m])
    elapsed = time.perf_counter() - started
    command = shown_command("benchmarks.run", argv if argv is not None else sys.argv[1:])
    int8_source = (f"`{shown_path(args.int8_model)}`, the repository's INT8 model" if args.int8_model else
                   f"QDQ per-channel from `export/quantize.py` ({args.calibration_count} training images for calibration)")
    setup = {"model": shown_path(model), "gflop": flops / 1e9, "int8": int8_source, "images": len(paths),
             "rounds": args.rounds, "job_copies": args.job_copies,
             "source": f"folder {args.images}" if args.images else "seeded draw of the test split"}
    doc = report.document(command=command, elapsed=elapsed, machine=machine, setup=setup, rows=rows, m=m,
                          sweeps=sweeps, deltas=deltas, titles=titles, accuracy=accuracy, accuracy16=accuracy16,
                          notes="\n".join(p.read_text() for p in (NOTES, ENGINES) if p.is_file()))
    Path(args.out).write_text(doc)
    print(report.table(rows))
    print()
    print("\n".join(report.target_lines(m, report.best(sweeps["3"]), accuracy, accuracy16)))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine, "extra": extra, "profile": {titles[k]: v for k, v in deltas.items()},
            "rows": [{**{k: v for k, v in r.__dict__.items() if k != "latencies_s"},
                      "images_per_s": r.images_per_s, "p50_ms": r.percentile_ms(50),
                      "p95_ms": r.percentile_ms(95), "p99_ms": r.percentile_ms(99)} for r in rows],
        }, indent=2, default=str))
    log(f"wrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
