"""The benchmark's own bookkeeping (no server): what its tables are built from."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from benchmarks import rows as R
from benchmarks.measure import _INSTANCE, Row, merge_rows


def test_stub_instance_names_map_to_their_model():
    assert _INSTANCE.match("preprocess_0_1").group(1) == "preprocess"
    assert _INSTANCE.match("effnet_lite0_classifier_1_0").group(1) == "effnet_lite0_classifier"
    for other in ("triton_python_backend_shm_region_f877cf54-2230-4923-8f76-bbd78f4b006d", "1048576",
                  "repo/preprocess/1/model.py", "DEFAULT"):
        assert _INSTANCE.match(other) is None


def test_cpu_per_image_is_merged_weighted_by_images():
    a = Row("3r", "x", 100, 1.0, params={"cpu_ms_per_image": {"client": 1.0, "stubs": 10.0}})
    b = Row("3r", "x", 300, 2.0, params={"cpu_ms_per_image": {"client": 2.0}})
    merged = merge_rows([a, b]).params["cpu_ms_per_image"]
    assert merged == {"client": (100 * 1.0 + 300 * 2.0) / 400, "stubs": 100 * 10.0 / 400}


def test_phone_sized_photos_and_the_draft_switch():
    buffer = io.BytesIO()
    Image.new("RGB", (255, 255), (200, 30, 30)).save(buffer, "JPEG")
    [big] = R.phone_sized([buffer.getvalue()], size=(2016, 1512))
    assert Image.open(io.BytesIO(big)).size == (2016, 1512)
    from training.preprocessing import imaging

    with_draft = R.preprocess_only(imaging, [big], "2d", "draft")
    without = R.preprocess_only(imaging, [big], "2d0", "full", draft=False)
    assert with_draft.images == without.images == 1
    assert with_draft.latencies_s and without.latencies_s


def test_the_plan_is_consistent():
    from benchmarks import plan

    plan.check_plan()
    bad = plan.TritonRow("x", "X", "x", "nowhere")
    with pytest.raises(ValueError, match="unknown variant"):
        plan.check_plan(triton=(*plan.TRITON_PLAN, bad))
    with pytest.raises(ValueError, match="repeat"):
        plan.check_plan(triton=(*plan.TRITON_PLAN, plan.TRITON_PLAN[0]))


def test_every_variant_is_a_repository_the_writer_makes(tmp_path):
    """Each variant's options reach the configs (what the rows claim to compare)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from benchmarks import plan
    from export.model_repository import build_dev_classifier, write_repository

    onnx = tmp_path / "dev.onnx"
    onnx.write_bytes(build_dev_classifier().SerializeToString())
    configs = {}
    for variant in plan.VARIANTS:
        repo = write_repository(tmp_path / variant.key, {"m": onnx}, **variant.options)
        configs[variant.key] = {p.parent.name: text_format.Parse(p.read_text(), model_config_pb2.ModelConfig())
                                for p in repo.glob("*/config.pbtxt")}
    on, off = configs["on"], configs["off"]
    assert on["m_classifier"].HasField("dynamic_batching") and not off["m_classifier"].HasField("dynamic_batching")
    assert not off["preprocess"].HasField("dynamic_batching")
    assert configs["delay5"]["m_classifier"].dynamic_batching.max_queue_delay_microseconds == 5000
    assert configs["delay5"]["preprocess"].dynamic_batching.max_queue_delay_microseconds == 1000
    assert configs["one2"]["m_classifier"].instance_group[0].count == 1
    assert configs["one2"]["m_classifier"].parameters["intra_op_thread_count"].string_value == "2"
    assert on["m_classifier"].instance_group[0].count == 2


def test_the_report_is_built_from_the_rows_alone():
    from benchmarks import plan, report

    def row(key, ips=100.0, note="grpc, 16 in flight"):
        return Row(key, f"row {key}", 100, 100 / ips, [0.01, 0.02, 0.03], 50.0, 60.0, note, {"batch": 1})

    m = {key: row(key) for key, _, _ in plan.PIXEL_SWEEPS}
    m.update({r.label: row(r.key) for r in (*plan.LOCAL_PLAN, *plan.TRITON_PLAN)})
    m["6a"], m["on16"], m["off16"], m["7"] = row("6a", 200.0), row("3r", 150.0), row("4", 100.0), row("7", 5.0)
    sweeps = {"3": [row("3", 50.0, "grpc, 1 in flight"), row("3", 120.0)], "1": [m["1"]], "6a": [m["6a"]]}
    accuracy = {"images": 10, "fp32_accuracy": 0.9, "int8_accuracy": 0.9, "change_points": 0.0, "top1_agreement": 1.0}
    deltas = {"delay5": [{"model": "m", "requests": 1, "executions": 1, "mean_batch": 1.0, "request_ms": 9.0,
                          "queue_ms": 5.0, "compute_infer_ms_per_exec": 3.0, "compute_io_ms_per_request": 0.1}]}
    doc = report.document(command="python -m benchmarks.run", elapsed=1.0, machine={
        "cpu_model": "cpu", "simd": "", "logical_cores": 2, "physical_cores": 2, "memory_gib": 1,
        "os": "Linux", "python": "3", "load_average": "0"}, setup={
        "model": "m.onnx", "gflop": 0.7, "int8": "i.onnx", "images": 100, "rounds": 1, "source": "s"},
        rows=list(m.values()), m=m, sweeps=sweeps, deltas=deltas, titles={"delay5": "delay5: x"},
        accuracy=accuracy)
    met = {name: value >= need for name, value, need in report.targets(m, sweeps["3"][1], accuracy)}
    assert met["INT8 / FP32 in-process >= 1.5 (6a / 1)"] and met["E2E bulk >= 5x row 7"]
    assert "| batching on / off at 16 in flight >= 1.5 (3r / 4) | 1.50 | 1.5 | yes |" in doc
    assert "p50 -5.0 ms" in doc  # the delay row's prediction comes from its queue counters
    assert "client in-flight count 1 -> best" in doc and "**delay5: x**" in doc


def test_the_runner_executes_every_row_of_the_plan(tmp_path, monkeypatch):
    """The runner's wiring, with each measurement replaced by a fixed row (no timing, no server):
    every variant gets its servers, every planned row reaches the table, the report is written."""
    from benchmarks import plan, run
    from export.model_repository import build_dev_classifier
    import export.quantize

    onnx = tmp_path / "dev.onnx"
    onnx.write_bytes(build_dev_classifier().SerializeToString())

    def fixed(key, what, note="", params=None):
        return Row(key, what, 10, 0.1, [0.01, 0.02], 50.0, 60.0, note, params or {})

    delta = [{"model": "m_classifier", "requests": 1, "executions": 1, "mean_batch": 1.0, "request_ms": 9.0,
              "queue_ms": 1.0, "compute_infer_ms_per_exec": 3.0, "compute_io_ms_per_request": 0.1}]
    started = []
    monkeypatch.setattr(R, "ort_session", lambda path, threads=0: (path, threads))
    monkeypatch.setattr(R, "ort_pixels", lambda s, px, b, key, what, t=0: fixed(key, what, f"batch {b}",
                                                                                 {"batch": b, "threads": t}))
    monkeypatch.setattr(R, "ort_files", lambda s, data, b, key, what, t=0: fixed(key, what, f"batch {b}"))
    monkeypatch.setattr(R, "ort_pixels_every_core", lambda sessions, px, b, key, what: fixed(
        key, what, f"{len(sessions)} sessions", {"batch": b, "threads": 1}))
    monkeypatch.setattr(R, "preprocess_only", lambda m, data, key, what, draft=True, note="": fixed(key, what, note))
    monkeypatch.setattr(R, "start_servers", lambda stack, repos, caches=None: [
        started.append((repo / "preprocess" / "config.pbtxt").is_file()) or repo for repo in repos])
    # Issue 16's rows (benchmarks/raw_loop.py, duplicates.py, runtimes.py), replaced the same way.
    from benchmarks import runtimes

    monkeypatch.setattr(runtimes, "openvino_compiled", lambda path, threads=1, bf16=True: (path, threads))
    monkeypatch.setattr(runtimes, "openvino_pixels", lambda c, px, b, key, what, t: fixed(
        key, what, f"batch {b}", {"batch": b, "threads": t}))
    monkeypatch.setattr(runtimes, "ort_openvino_python", lambda: None)
    record = {"images": 3, "other_accuracy": 0.9, "reference_accuracy": 0.9, "top1_agreement": 1.0,
              "openvino_precision": "float32", "cpu_bf16_flags": []}
    monkeypatch.setattr(runtimes, "agreement", lambda onnx, images, labels: record)
    monkeypatch.setattr(run, "raw_asyncio_loop", lambda servers, model, data, per, n, key, what:
                        (fixed(key, what, f"{per} photos/request, {n} in flight"), delta))
    monkeypatch.setattr(run, "raw_command", lambda servers, model, folder, per, n, key, what, images:
                        (fixed(key, what, "whole process"), delta))
    monkeypatch.setattr(run, "scorer_command", lambda servers, model, folder, key, what, args, images, client_path:
                        (fixed(key, what, "whole command"), delta))
    monkeypatch.setattr(run, "duplicate_job", lambda servers, model, paths, work, key, what, args, round_salt:
                        (fixed(key, what, "duplicates", {"cache": {"hits": 1, "misses": 9, "hit_share": 0.1}}), delta))
    monkeypatch.setattr(R, "warm_up", lambda *args: None)
    monkeypatch.setattr(R, "triton_bulk", lambda servers, protocol, model, folder, n, key, what:
                        (fixed(key, what, f"{protocol}, {n} in flight, {len(servers)} server(s), {model}"), delta))
    monkeypatch.setattr(R, "triton_shm_loop", lambda server, model, data, n, key, what, shared_memory:
                        (fixed(key, what, f"shm {shared_memory}"), delta))
    monkeypatch.setattr(R, "keras_one_by_one", lambda data, keras_model, key, what: fixed(key, what))
    monkeypatch.setattr(R, "model_flops", lambda model: 7.7e8)
    monkeypatch.setattr(R, "matmul_flops_per_s", lambda: 5e10)
    monkeypatch.setattr(export.quantize, "compare_int8", lambda a, b, items: {
        "images": 3, "fp32_accuracy": 0.9, "int8_accuracy": 0.9, "change_points": 0.0, "top1_agreement": 1.0})
    out = tmp_path / "BENCHMARKS.md"
    samples = str(run.REPO_ROOT / "samples" / "garbage12")
    assert run.main(["--model", str(onnx), "--int8-model", str(onnx), "--images", samples, "--count", "4",
                     "--rounds", "1", "--quick", "--out", str(out)]) == 0
    assert len(started) == sum(v.servers for v in plan.VARIANTS)
    assert all(started), "a server was started on an incomplete repository"
    doc = out.read_text()
    for row in (*plan.TRITON_PLAN, *plan.LOCAL_PLAN):
        assert f"| {row.key} | {row.what} |" in doc, row.label
    for key, _, what in plan.EVERY_CORE_ROWS:
        assert f"| {key} | {what} |" in doc
    assert "| Bc | per-image CPU bound, FP32, every core busy |" in doc
    assert "2 server(s)" in doc and f"{run.NAME}_tta" in doc  # S2 got two servers, row 5 the TTA model
