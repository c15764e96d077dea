"""BENCHMARKS.md from one run's rows: the tables, the targets, the changes tried, the profile."""
from __future__ import annotations

import datetime as dt

from benchmarks import serving_targets
from benchmarks.measure import Row
from benchmarks.plan import TRITON_PLAN

#: Rows whose CPU use by process is tabulated.
CPU_ROWS = ("on1", "tta", "off16", "shm0", "shm", *(label for rows in serving_targets.SERVED.values() for label in rows))


#: Rows that score a job of `job_copies` x the images (benchmarks/run.py): every raw loop and command.
JOB_ROWS = tuple(dict.fromkeys(r.key for r in TRITON_PLAN if r.loop in ("raw", "raw_command", "command")))


def fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def best(rows: list[Row]) -> Row:
    return max(rows, key=lambda r: r.images_per_s)


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


def targets(m: dict, sweep_best: Row, accuracy: dict) -> list[tuple[str, float, float]]:
    """(target, measured ratio, needed) from the rows of one run, keyed by plan label."""
    e2e = max(sweep_best, m["http"], key=lambda r: r.images_per_s)
    fp32_best, int8_best = best([m["on16"], m["on32"]]), best([m["int8"], m["int8_32"]])
    single = m["on1"]
    return [
        ("E2E bulk >= 80% of row 2", e2e.images_per_s / m["2"].images_per_s, 0.8),
        ("E2E bulk >= 5x row 7", e2e.images_per_s / m["7"].images_per_s, 5.0),
        ("batching on / off at 16 in flight >= 1.5 (3r / 4)", m["on16"].images_per_s / m["off16"].images_per_s, 1.5),
        ("INT8 / FP32 in-process >= 1.5 (6a / 1)", m["6a"].images_per_s / m["1"].images_per_s, 1.5),
        ("INT8 / FP32 through Triton, each at its best of 16 / 32 in flight >= 1.5 (6b / 3r)",
         int8_best.images_per_s / fp32_best.images_per_s, 1.5),
        ("INT8 accuracy change >= -0.5 points", accuracy["change_points"], -0.5),
        ("single-image p95 (1 in flight) <= 2x in-process single-image p50 (2b, best threads)",
         m["2b"].percentile_ms(50) * 2 / single.percentile_ms(95), 1.0),
        ("the same against in-process with the server's 1 thread per request (2c)",
         m["2c"].percentile_ms(50) * 2 / single.percentile_ms(95), 1.0),
        ("two servers / one server > 1 (S2 / 3r)", m["s2"].images_per_s / m["on16"].images_per_s, 1.0 + 1e-9),
    ]


def target_lines(m: dict, sweep_best: Row, accuracy: dict, accuracy16: dict | None = None) -> list[str]:
    """The targets table; with `accuracy16` (run.runtime_accuracy) issue 16's targets follow."""
    lines = ["| target | measured | needed | met |", "|---|---|---|---|"]
    bounds = {k: m[k] for k in ("B", "Bi") if k in m}
    issue16 = serving_targets.targets(m, bounds, accuracy16) if accuracy16 is not None else []
    for name, value, need in targets(m, sweep_best, accuracy) + issue16:
        lines.append(f"| {name} | {value:.2f} | {need:g} | {'yes' if value >= need else 'NO'} |")
    reference = serving_targets.reference_lines(m, accuracy16)
    if reference:
        lines += ["", "For reference (issue 16's targets measured another way):", *reference]
    single = m["on1"]
    lines.append(f"\nSingle-image latency at one request in flight: p95 {single.percentile_ms(95):.1f} ms "
                 f"(p50 {single.percentile_ms(50):.1f} ms); in-process single image (decode + ORT) "
                 f"p50 {m['2b'].percentile_ms(50):.1f} ms.")
    lines.append(f"INT8 on {accuracy['images']} test-split images: FP32 accuracy {accuracy['fp32_accuracy']:.4f}, "
                 f"INT8 {accuracy['int8_accuracy']:.4f} ({accuracy['change_points']:+.2f} points), "
                 f"top-1 agreement {accuracy['top1_agreement']:.4f}.")
    return lines


def changes_table(m: dict, deltas: dict, sweep_rows: list[Row], classifier_sweep: list[Row] = ()) -> list[str]:
    """Each change with the effect predicted before measuring (rule stated) and the measured one.

    The "before" variants (V0-V3) put one earlier choice back in the benchmark's repository; the
    reference rows (3r, 3s, 6b) are the committed configuration measured in the same rounds.
    """
    lines = ["| change (before -> now) | predicted (rule, before measuring) | measured |", "|---|---|---|"]
    now1, now16, int8_16 = m.get("on1"), m.get("on16"), m.get("int8")

    def queue_ms(label):
        # With one request in flight nothing else is queued: the steps' queue time is batcher delay.
        return sum(d["queue_ms"] for d in deltas.get(label, []))

    for label, what in (("delay5", "5 ms + 1 ms"), ("delay05", "0.5 ms + 1 ms")):
        before = m.get(label)
        if before and now1:
            waited = queue_ms(label) - queue_ms("on1")
            lines.append(f"| batcher delay (classifier + preprocess) {what} -> 0 + 0, 1 in flight | p50 -{waited:.1f} ms: "
                         f"the extra queue time the counters show for the variant, pure waiting since no batch can form "
                         f"| p50 {before.percentile_ms(50):.1f} -> {now1.percentile_ms(50):.1f} ms, "
                         f"{before.images_per_s:.1f} -> {now1.images_per_s:.1f} img/s |")
    v2, v2_1 = m.get("one2"), m.get("one2_1")
    if v2 and now16:
        lines.append(f"| 1 classifier instance x 2 ORT threads -> 2 instances x 1 thread, 16 in flight | +0-15%: "
                     f"no intra-op barrier per layer, and a descheduled thread stalls only its own request "
                     f"| {v2.images_per_s:.1f} -> {now16.images_per_s:.1f} img/s "
                     f"({now16.images_per_s / v2.images_per_s:.2f}x) |")
    if v2_1 and now1:
        lines.append(f"| the same, 1 in flight (the price of the layout) | p50 up by the classifier's 1- vs 2-thread "
                     f"time (row 1 sweep, batch 1) | p50 {v2_1.percentile_ms(50):.1f} -> {now1.percentile_ms(50):.1f} ms, "
                     f"p95 {v2_1.percentile_ms(95):.1f} -> {now1.percentile_ms(95):.1f} ms |")
    for before_label, now_label, kind in (("cmd_before", "cmd", "FP32"), ("int8_cmd_before", "int8_cmd", "INT8")):
        before, now = m.get(before_label), m.get(now_label)
        if before and now:
            b_cpu = before.params.get("cpu_ms_per_image", {}).get("scorer command", float("nan"))
            n_cpu = now.params.get("cpu_ms_per_image", {}).get("scorer command", float("nan"))
            lines.append(f"| the scorer of 86f4caa (1 photo per request) -> today's (identity, lock, "
                         f"sources, escaping; several photos per request), {kind}, rows {before.key} -> {now.key} "
                         f"| no lower (issue 11): the new bookkeeping is per row, batching saves per-request work "
                         f"| {before.images_per_s:.1f} -> {now.images_per_s:.1f} img/s "
                         f"({now.images_per_s / before.images_per_s:.2f}x); scorer CPU {b_cpu:.2f} -> {n_cpu:.2f} "
                         f"ms/image |")
    d_now, d_before = m.get("2d"), m.get("2d0")
    if d_now and d_before:
        lines.append(f"| JPEG draft mode for large photos (decode at the smallest DCT scale keeping >= 224 px; "
                     f"1/8 for 4032x3024), rows 2d0 -> 2d | 5-10x less decode time: the IDCT and colour "
                     f"conversion shrink 64x, the entropy decoding of the whole file does not "
                     f"| {d_before.percentile_ms(50):.1f} -> {d_now.percentile_ms(50):.1f} ms p50 per photo "
                     f"({d_before.percentile_ms(50) / d_now.percentile_ms(50):.1f}x) |")
    delta = deltas.get("grpc 1 in flight", [])
    classifier = next((d for d in delta if d["model"].endswith("_classifier")), None)
    ensemble = max(delta, key=lambda d: d["request_ms"]) if delta else None
    if classifier and ensemble and now16 and int8_16 and "1" in m and "6a" in m:
        share = classifier["compute_infer_ms_per_exec"] / ensemble["request_ms"]
        speed = m["6a"].images_per_s / m["1"].images_per_s
        predicted = 1 / (share / speed + (1 - share))
        lines.append(f"| FP32 -> INT8 model (QDQ) | Amdahl: classifier compute is {share:.0%} of a request at 1 in flight, "
                     f"in-process INT8 speed-up {speed:.2f}x -> {predicted:.2f}x end to end "
                     f"| {now16.images_per_s:.1f} -> {int8_16.images_per_s:.1f} img/s at 16 in flight "
                     f"({int8_16.images_per_s / now16.images_per_s:.2f}x) |")
    if sweep_rows:
        top = best(sweep_rows)
        lines.append(f"| client in-flight count 1 -> best | up to ~2x: one request at a time leaves a core idle while the "
                     f"other decodes or waits on I/O | {sweep_rows[0].images_per_s:.1f} -> {top.images_per_s:.1f} img/s at "
                     f"{top.note} |")
    for without, with_, what in (("shm0", "shm", "dataset photos"), ("shm0_12mp", "shm_12mp", "12 MP photos")):
        a, b = m.get(without), m.get(with_)
        if a and b:
            lines.append(f"| system shared memory for the input, same-host client ({what}, rows {a.key} -> {b.key}) "
                         f"| within noise for ~50 KB files: a gRPC message copy costs microseconds against ~10 ms "
                         f"of CPU per image; a few % at most for ~0.5 MB files "
                         f"| {a.images_per_s:.1f} -> {b.images_per_s:.1f} img/s ({b.images_per_s / a.images_per_s:.2f}x), "
                         f"p50 {a.percentile_ms(50):.1f} -> {b.percentile_ms(50):.1f} ms |")
    before, now = m.get("pref32_raw8x8"), m.get("raw8x8")
    per_image = {r.params.get("batch"): r.seconds / r.images for r in classifier_sweep if r.params.get("threads") == 1}
    if before and now and per_image.get(32) and per_image.get(4):
        # The variant's batches reach 32 when enough photos are queued; now's stop at one 8-photo request.
        lines.append(f"| classifier batches up to 32 (preferred 8, 16, 32) -> up to 8, 8 photos/request, 8 in flight "
                     f"(rows V3 -> R8x8) | up to +{per_image[32] / per_image[4] - 1:.0%}: one ORT thread's FP32 time "
                     f"per image at batch 32 against batch 4 (row 1 sweep), less where batches stayed small "
                     f"| {before.images_per_s:.1f} -> {now.images_per_s:.1f} img/s "
                     f"({now.images_per_s / before.images_per_s:.2f}x) |")
    s2 = m.get("s2")
    if s2 and now16:
        lines.append(f"| one server -> two local servers, client round-robin | <= 1.0x on 2 cores: both servers share "
                     f"the same two cores, a second one adds only another preprocess/ORT pool competing for them "
                     f"| {now16.images_per_s:.1f} -> {s2.images_per_s:.1f} img/s ({s2.images_per_s / now16.images_per_s:.2f}x) |")
    return lines


def issue16_lines(m: dict, accuracy16: dict | None) -> list[str]:
    """Runtime accuracy, the duplicate job and the scorer's own CPU per image (issue 16)."""
    lines = []
    for kind, record in ((accuracy16 or {}).get("records") or {}).items():
        lines.append(f"- OpenVINO on the {kind.upper()} model, test split ({record['images']} photos): accuracy "
                     f"{record['other_accuracy']:.4f} against ONNX Runtime's {record['reference_accuracy']:.4f}, "
                     f"top-1 agreement {record['top1_agreement']:.4f}, inference precision "
                     f"{record['openvino_precision']} (CPU bf16 flags: {', '.join(record['cpu_bf16_flags']) or 'none'})")
    lines += serving_targets.duplicate_lines(m)
    lines += serving_targets.overhead_lines(m)
    for label in ("cmd", "int8_cmd"):
        row = m.get(label)
        if row and "scorer command" in row.params.get("cpu_ms_per_image", {}):
            lines.append(f"- {row.key} {row.what}: the command's own CPU "
                         f"{row.params['cpu_ms_per_image']['scorer command']:.2f} ms per image")
    return lines


def document(*, command: str, elapsed: float, machine: dict, setup: dict, rows: list[Row], m: dict,
             sweeps: dict, deltas: dict, titles: dict, accuracy: dict, notes: str = "",
             accuracy16: dict | None = None) -> str:
    """The whole BENCHMARKS.md text of one run.

    ``m`` and ``deltas`` map a plan label to its row and its Triton counter deltas; ``titles``
    maps a label to the heading its counters get in the profile section.
    """
    profile = {titles[label]: delta for label, delta in deltas.items()}
    sweep_lines = [f"- row {key}: " + ", ".join(f"{r.note}: {r.images_per_s:.1f} img/s" for r in rs)
                   for key, rs in sweeps.items()]
    profile_text = "\n\n".join(f"**{name}**\n\n{profile_table(delta)}" for name, delta in profile.items())
    cpu_rows = [m[label] for label in CPU_ROWS if label in m]
    doc = f"""# Benchmarks

Generated by `{command.strip()}` on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} in {elapsed:.0f} s.
Every number below was measured in that one run.

## Machine

- CPU: {machine['cpu_model']} ({machine['simd']}), {machine['logical_cores']} logical cores ({machine['physical_cores']} physical)
- Memory {machine['memory_gib']} GiB; {machine['os']}; Python {machine['python']}
- Load average at the start: {machine['load_average']} (the box is shared; "CPU machine %" includes other jobs)

## Setup

- Model: `{setup['model']}` (FP32, {setup['gflop']:.3f} GFLOP per image counted from its Conv/Gemm/MatMul nodes); INT8: {setup['int8']}.
- Images: the same {setup['images']} files for every row ({setup['source']}), sent in {setup['rounds']} interleaved rounds (rows A, B, C, A, B, C, ...), so a row's image count is {setup['rounds']} x {setup['images']}; the Keras row runs the same files once. Rows {', '.join(JOB_ROWS)} score a job of {setup.get('job_copies', 1)} copies of them per round (the same files under new names; no response cache), so that the scorer command's start-up does not dominate a whole-process row.
- Latency is per request: one `session.run` / `predict` call for in-process rows, one `classify` call seen by the client for Triton rows.
- "CPU ours %" = CPU seconds of this process + the Triton server(s) and their python stubs, over wall time x all cores.
- Triton rows run repositories written by `export/model_repository.py` with the model above: the committed configs, or a variant declared in `benchmarks/plan.py` (row 4: dynamic batching off; rows V0-V3: one earlier choice put back, see "Changes tried").
- Row 3 is the best point of the in-flight sweep; the other Triton rows were measured together in one interleaved plan, and the ratios between Triton rows compare rows of that plan.

## Results

{table(rows)}

Sweeps (best point is the row above):

{chr(10).join(sweep_lines)}

## Targets (ratios from this run)

{chr(10).join(target_lines(m, best(sweeps['3']), accuracy, accuracy16))}

## Runtimes, the response cache, the scorer's own CPU (issue 16)

Rows 1o/6o: OpenVINO on the same pixels as rows 1/6a, same rounds; 1v: ONNX Runtime with the
OpenVINO execution provider (separate venv, `scripts/ort_openvino_venv.sh`); OV/OVi: the classifier
on the openvino backend (OV/OVi through the bulk scorer's code path, SCo/SCoi through the scorer
command); R8/R1: a plain asyncio tritonclient loop in this process, R8w/R8wi the same as a whole
process; SC: `python -m waste_client score` as a whole process; B/Bi: cores / (row 2p + single-thread row 1 / 6a CPU per image);
D0/D1/D8: a bulk job with 10% exact duplicates (docs/PERFORMANCE.md).

{chr(10).join(issue16_lines(m, accuracy16))}

## Changes tried: predicted and measured effect (same run)

Each "before" is a repository variant of `benchmarks/plan.py`, measured in the same rounds as the
committed "now".

{chr(10).join(changes_table(m, deltas, sweeps['3'], sweeps.get('1', [])))}

## CPU per image by process (milliseconds of CPU time, all cores summed)

{cpu_table(cpu_rows)}

## Where the time goes (Triton per-model counters over each measured run)

{profile_text}
"""
    return doc + ("\n" + notes if notes else "")
