"""Issue 16's bench rows, their bookkeeping on tiny inputs (no timing is asserted).

The raw asyncio loop, the scorer command and the duplicate job run against a real tritonserver
(the random-weight `dev` classifier, response cache on), a few photos each: each row must count
every photo once, carry the CPU parts the report prints, and the duplicate job must show its
duplicates as cache hits.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.duplicates import (cache_delta, duplicate_count, duplicate_job, parse_cache_counts,
                                   stage_with_duplicates)
from benchmarks.measure import Row
from benchmarks.raw_loop import cpu_bound, raw_asyncio_loop, ratio, request_batches, scorer_command
from export.model_repository import write_repository
from server.launch import TritonServer

SAMPLES = sorted(p for p in (Path(__file__).resolve().parent.parent / "samples" / "garbage12").rglob("*.jpg")
                 if p.stat().st_size > 1000)


def test_request_batches_keep_order_and_every_item():
    assert request_batches(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert request_batches([1], 8) == [[1]]
    with pytest.raises(ValueError):
        request_batches([1], 0)


def test_cpu_bound_is_cores_over_the_summed_cpu_per_image():
    # 100 images in 0.5 s at 50% of 2 cores: 5 ms of CPU each; 100 in 1.0 s at 50%: 10 ms each.
    preprocess = Row("2p", "pre", 100, 0.5, cpu_ours=50.0)
    classifier = Row("1", "cls", 100, 1.0, cpu_ours=50.0, note="batch 1, 1 ORT thread")
    bound = cpu_bound(preprocess, classifier, "B", "bound", cores=2)
    assert bound.images_per_s == pytest.approx(2 / 0.015)
    assert bound.params["preprocess_ms"] == pytest.approx(5.0) and bound.params["classifier_ms"] == pytest.approx(10.0)
    # Without a CPU reading the wall time stands in.
    assert cpu_bound(Row("a", "", 10, 0.01), Row("b", "", 10, 0.02), "B", "", cores=1).images_per_s == pytest.approx(1 / 0.003)
    assert ratio(Row("x", "", 90, 1.0), Row("y", "", 100, 1.0)) == pytest.approx(0.9)


def test_staged_duplicates_are_exact_copies_and_the_share_holds(tmp_path):
    sources = []
    for i in range(9):
        path = tmp_path / "src" / f"p{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(bytes([i]) * 10)
        sources.append(path)
    assert duplicate_count(9, 0.1) == 1 and duplicate_count(90, 0.1) == 10 and duplicate_count(5, 0) == 0
    staged = stage_with_duplicates(sources, tmp_path / "job", 0.1, salt=b"r1")
    assert len(staged) == 10 and len({p.name for p in staged}) == 10
    contents = [p.read_bytes() for p in staged]
    assert all(c.endswith(b"r1") for c in contents)
    assert len(set(contents)) == 9  # one repeat
    again = stage_with_duplicates(sources, tmp_path / "job2", 0.1, salt=b"r1")
    assert [p.name for p in again] == [p.name for p in staged]  # seeded


def test_cache_counters_parse_and_delta():
    text = ('# HELP nv_cache_num_hits_per_model x\n'
            'nv_cache_num_hits_per_model{model="dev",version="1"} 3\n'
            'nv_cache_num_misses_per_model{model="dev",version="1"} 7\n'
            'nv_cache_num_hits_per_model{model="dev_tta",version="1"} 0\n'
            'nv_inference_count{model="dev",version="1"} 10\n')
    counts = parse_cache_counts(text)
    assert counts == {"dev": {"hits": 3.0, "misses": 7.0}, "dev_tta": {"hits": 0.0, "misses": 0.0}}
    later = {"dev": {"hits": 5.0, "misses": 9.0}}
    assert cache_delta(counts, later, "dev") == {"hits": 2, "misses": 2, "hit_share": 0.5}
    assert cache_delta({}, {}, "dev")["hit_share"] == 0.0


@pytest.fixture(scope="module")
def cached_server(tmp_path_factory):
    repo = write_repository(tmp_path_factory.mktemp("bench_rows_repository"), dev=["dev"])
    with TritonServer(repo, cache_bytes=1 << 20) as server:
        yield server


def test_raw_asyncio_loop_counts_photos_and_requests(cached_server):
    photos = [p.read_bytes() for p in SAMPLES[:5]]
    row, delta = raw_asyncio_loop([cached_server], "dev", photos, per_request=2, in_flight=2,
                                  key="R8", what="raw loop")
    assert row.images == 5 and len(row.latencies_s) == 3  # requests of 2, 2, 1
    assert row.params == {**row.params, "per_request": 2, "in_flight": 2}
    assert "2 photos/request, 2 in flight" in row.note
    assert {d["model"] for d in delta} >= {"dev", "preprocess", "dev_classifier"}
    assert "tritonserver" in row.params["cpu_ms_per_image"]


def test_scorer_command_row_counts_the_command_cpu(cached_server, tmp_path):
    folder = tmp_path / "photos"
    for path in SAMPLES[:4]:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / path.parent.name / path.name).write_bytes(path.read_bytes() + b"cmd")
    row, _ = scorer_command([cached_server], "dev", folder, "SC", "scorer command", ("--in-flight", "2"))
    assert row.images == 4 and row.seconds > 0
    cpu = row.params["cpu_ms_per_image"]
    assert cpu["scorer command"] > 0 and "client (this process)" not in cpu
    assert row.note == "whole command, --in-flight 2"


def test_duplicate_job_answers_duplicates_from_the_cache(cached_server, tmp_path):
    # One request at a time: each duplicate comes after its original has been answered and cached.
    row, _ = duplicate_job([cached_server], "dev", SAMPLES[:9], tmp_path, "D1", "10% duplicates, cache on",
                           share=0.1, args=("--in-flight", "1"), round_salt=b"round-a")
    assert row.images == 10 and row.params["duplicates"] == 1
    assert row.params["cache"]["hits"] == 1 and row.params["cache"]["misses"] == 9
    # A new round with another salt is a new set of bytes: no hit carried over from round a.
    row, _ = duplicate_job([cached_server], "dev", SAMPLES[:9], tmp_path, "D1", "10% duplicates, cache on",
                           share=0.1, args=("--in-flight", "1"), round_salt=b"round-b")
    assert row.params["cache"]["misses"] == 9
