"""Scorer inputs: identity escaping and shards, local and S3 listing/reading, the local engine."""
from __future__ import annotations

import io
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from waste_client import ClassifierError, Prediction
from waste_client._engine import LocalEngine
from waste_client._identity import escape, parse_shard, shard_of, unescape
from waste_client._sources import iter_sources, read_source, source_id

REPO_ROOT = Path(__file__).resolve().parent.parent
GOOD = sorted((REPO_ROOT / "samples" / "garbage12").rglob("*.jpg"))
NASTY = ["a\nb.jpg", "c\rd.jpg", "comma, \"quoted\".jpg", "  leading.jpg", "50%.jpg", "tab\t.jpg", "ünï.jpg"]


# -- identity -------------------------------------------------------------------------------------

def test_escape_round_trips_any_name():
    names = [f"/p/{n}" for n in NASTY] + [os.fsdecode(b"/p/latin1-\xe9\xff.jpg"), "s3://b/k%2F.jpg"]
    for name in names:
        text = escape(name)
        assert "\n" not in text and "\r" not in text
        text.encode("utf-8")  # always valid UTF-8
        assert unescape(text) == name
    assert escape("/p/a\nb%.jpg") == "/p/a%0Ab%25.jpg"
    assert escape(os.fsdecode(b"/p/\xe9.jpg")) == "/p/%E9.jpg"
    assert escape("/p/plain name, ü.jpg") == "/p/plain name, ü.jpg"


def test_shards_cover_exactly_once():
    ids = [f"s3://bucket/photos/{i:05d}.jpg" for i in range(3000)]
    parts = [[i for i in ids if shard_of(i, 3) == k] for k in range(3)]
    assert sorted(sum(parts, [])) == ids
    assert all(800 < len(p) < 1200 for p in parts)  # roughly even
    assert shard_of(ids[0], 3) == shard_of(ids[0], 3)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/3", "1", "a/b", "0/0"):
        with pytest.raises(ClassifierError, match="I/N"):
            parse_shard(bad)


# -- local ------------------------------------------------------------------------------------------

@pytest.fixture
def odd_folder(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    names = NASTY + [os.fsdecode(b"latin1-\xe9.jpg")]
    for i, name in enumerate(names):
        shutil.copy(GOOD[i], os.path.join(str(root), name))
    (root / "skip.txt").write_text("no")
    return root, names


def test_local_folder_identities_and_reading(odd_folder):
    root, names = odd_folder
    ids = list(iter_sources(str(root)))
    assert sorted(ids) == sorted(os.path.join(str(root), n) for n in names)
    for identity in ids:
        assert read_source(identity) == Path(os.fsencode(identity).decode("utf-8", "surrogateescape")).read_bytes()
    assert source_id(str(root) + "/") == str(root)


def test_listing_is_lazy(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(GOOD[0], tmp_path / "a" / "x.jpg")
    it = iter_sources(str(tmp_path))
    assert next(it).endswith("/a/x.jpg")
    # Folder b is listed only when reached: a photo put there after the first answer is found.
    shutil.copy(GOOD[1], tmp_path / "b" / "y.jpg")
    assert list(it) == [str(tmp_path / "b" / "y.jpg")]


def test_files_from_takes_bytes_and_urls(tmp_path, monkeypatch):
    shutil.copy(GOOD[0], tmp_path / "a.jpg")
    raw_name = b"n\xe9.jpg"
    shutil.copy(GOOD[1], os.path.join(os.fsencode(str(tmp_path)), raw_name))
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"a.jpg\r\n\n" + os.fsencode(str(tmp_path)) + b"/" + raw_name + b"\ns3://b/k.jpg\n")
    monkeypatch.chdir(tmp_path)
    ids = list(iter_sources(files_from=str(listing)))
    assert ids == [str(tmp_path / "a.jpg"), os.fsdecode(os.fsencode(str(tmp_path)) + b"/" + raw_name), "s3://b/k.jpg"]
    assert read_source(ids[1]) == GOOD[1].read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a.jpg\n")))
    assert list(iter_sources(files_from="-")) == [str(tmp_path / "a.jpg")]
    assert source_id(files_from="-") == "files-from:-"


def test_read_errors_have_their_own_status(tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:  # sparse: 5 GB announced, nothing to read into memory
        f.truncate(5 * 1024 ** 3)
    with pytest.raises(ClassifierError) as info:
        read_source(str(big))
    assert info.value.status == "INVALID_ARGUMENT" and "over the limit of 33554432 bytes" in info.value.message
    with pytest.raises(ClassifierError) as info:
        read_source(str(tmp_path / "missing.jpg"))
    assert info.value.status == "FILE_NOT_FOUND"
    with pytest.raises(ClassifierError) as info:
        list(iter_sources(str(tmp_path / "nowhere")))
    assert info.value.status == "FILE_NOT_FOUND"


# -- S3 (a real moto server) -----------------------------------------------------------------------

@pytest.fixture
def bucket(s3_server, monkeypatch):
    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3")
    name = f"photos-{os.getpid()}-{len(s3.list_buckets()['Buckets'])}"
    s3.create_bucket(Bucket=name)
    keys = [f"day{d}/{c}/img{i}.jpg" for d in (1, 2) for c in ("x", "y") for i in range(3)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=name, Key=key, Body=GOOD[i % len(GOOD)].read_bytes())
    s3.put_object(Bucket=name, Key="day1/notes.txt", Body=b"not a photo")
    return s3, name, keys


def test_s3_prefix_streams_and_reads(bucket):
    s3, name, keys = bucket
    ids = list(iter_sources(f"s3://{name}/day1"))
    assert ids == sorted(f"s3://{name}/{k}" for k in keys if k.startswith("day1/"))
    assert Counter(iter_sources(f"s3://{name}")) == Counter(f"s3://{name}/{k}" for k in keys)
    assert read_source(ids[0]) == GOOD[0].read_bytes()
    assert list(iter_sources(ids[0])) == [ids[0]]  # one object
    with pytest.raises(ClassifierError) as info:
        read_source(ids[0], max_bytes=100)
    assert info.value.status == "INVALID_ARGUMENT" and "over the limit of 100 bytes" in info.value.message
    with pytest.raises(ClassifierError) as info:
        read_source(f"s3://{name}/day1/missing.jpg")
    assert info.value.status == "FILE_NOT_FOUND"
    for typo in (f"s3://{name}/dya1", f"s3://{name}-nope/day1"):
        with pytest.raises(ClassifierError) as info:
            list(iter_sources(typo))
        assert info.value.status == "FILE_NOT_FOUND" and typo in info.value.message


# -- the local engine against a real server ---------------------------------------------------------

def test_local_engine_one_outcome_per_identity(dev_server, tmp_path):
    from waste_client import Classifier

    ids = []
    for i in range(11):
        shutil.copy(GOOD[i], tmp_path / f"{i}.jpg")
        ids.append(str(tmp_path / f"{i}.jpg"))
    shutil.copy(REPO_ROOT / "samples" / "bad" / "notes.jpg", tmp_path / "bad.jpg")
    ids += [str(tmp_path / "bad.jpg"), str(tmp_path / "missing.jpg")]
    with Classifier(dev_server.grpc_url, model="dev") as clf:
        engine = LocalEngine(clf, top_k=2, in_flight=2, batch_size=4)
        try:
            pairs = dict(engine.results(iter(ids)))
        finally:
            engine.close()
    assert sorted(pairs) == sorted(ids)
    assert pairs[str(tmp_path / "missing.jpg")].status == "FILE_NOT_FOUND"
    assert pairs[str(tmp_path / "bad.jpg")].status == "INVALID_ARGUMENT"
    assert all(isinstance(pairs[i], Prediction) and len(pairs[i].top_k) == 2 for i in ids[:11])


# -- one photo over HTTP (a real local web server) --------------------------------------------------

def test_http_url_is_one_photo(tmp_path):
    import functools
    import http.server
    import threading

    shutil.copy(GOOD[0], tmp_path / "a.jpg")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.jpg"
        assert list(iter_sources(url)) == [url]
        assert read_source(url) == GOOD[0].read_bytes()
        with pytest.raises(ClassifierError) as info:
            read_source(url, max_bytes=10)
        assert info.value.status == "INVALID_ARGUMENT"
        with pytest.raises(ClassifierError) as info:
            read_source(url.replace("a.jpg", "gone.jpg"))
        assert info.value.status == "FILE_NOT_FOUND"
    finally:
        server.shutdown()
        server.server_close()
