"""Bulk scorer: folder walk and result-file units, then `python -m waste_client score` on `dev_server`."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from waste_client import Classifier
from waste_client._results import ResultWriter, error_row, prediction_row, read_results
from waste_client._walk import iter_images
from waste_client.cli import main
from waste_client.score import score_folder

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
GOOD = sorted((SAMPLES / "garbage12").rglob("*.jpg"))
LABELS = (REPO_ROOT / "model_repository" / "effnet_lite0" / "labels.txt").read_text().split()


@pytest.fixture
def folder(tmp_path):
    """6 images in nested folders (one .JPG), a non-image .jpg, a .txt, and a link leading outside."""
    root = tmp_path / "photos"
    (root / "a" / "b").mkdir(parents=True)
    for i, src in enumerate(GOOD[:5]):
        shutil.copy(src, root / ("a" if i % 2 else "a/b") / src.name)
    shutil.copy(GOOD[5], root / "UPPER.JPG")
    shutil.copy(SAMPLES / "bad" / "notes.jpg", root / "a" / "notes.jpg")
    (root / "readme.txt").write_text("not scored")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(GOOD[6], outside / "elsewhere.jpg")
    os.symlink(outside / "elsewhere.jpg", root / "link.jpg")
    os.symlink(outside, root / "linkdir")
    return root


def _expected(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.suffix.lower() == ".jpg" and not p.is_symlink() and p.is_file()}


def _score(server, folder, out, *extra):
    return main(["score", str(folder), "--url", server.grpc_url, "--model", "dev", "--out", str(out),
                 "--no-progress", "--in-flight", "4", *extra])


# -- units without a server --------------------------------------------------------------------

def test_walk_extensions_and_symlinks(folder):
    found = list(iter_images(str(folder)))
    assert set(found) == _expected(folder) and len(found) == 7
    assert "UPPER.JPG" in found and "a/notes.jpg" in found
    assert not any(p.startswith(("link", "readme")) for p in found)
    followed = set(iter_images(str(folder), follow_symlinks=True))
    assert followed == _expected(folder) | {"link.jpg", "linkdir/elsewhere.jpg"}


def test_walk_link_loop_ends(tmp_path):
    (tmp_path / "d").mkdir()
    shutil.copy(GOOD[0], tmp_path / "d" / "x.jpg")
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")
    assert list(iter_images(str(tmp_path), follow_symlinks=True)) == ["d/x.jpg"]


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_writer_repairs_torn_line_and_duplicates(tmp_path, ext):
    from waste_client import ClassifierError, Prediction
    out = tmp_path / f"r.{ext}"
    pred = Prediction("paper", 0.9, [("paper", 0.9), ("trash", 0.1)], "dev", "1")
    with ResultWriter(str(out)) as w:
        w.write(prediction_row("a.jpg", pred))
        w.write(error_row("b.jpg", ClassifierError("bad\nimage", "INVALID_ARGUMENT"), "dev"))
        w.write(prediction_row("a.jpg", pred))  # a duplicate must not survive a resume
    with open(out, "a") as f:
        f.write('c.jpg,pap' if ext == "csv" else '{"path": "c.jpg", "lab')  # killed mid-write
    w = ResultWriter(str(out))
    w.close()
    assert w.existing.done == {"a.jpg", "b.jpg"}
    assert (w.existing.rows, w.existing.errors, w.existing.dropped) == (2, 1, 2)
    rows = read_results(str(out))
    assert [r["path"] for r in rows] == ["a.jpg", "b.jpg"]
    assert rows[0]["top_k"] == [["paper", 0.9], ["trash", 0.1]]
    assert rows[1]["error"] == "INVALID_ARGUMENT: bad image"
    assert out.read_text().endswith("\n")
    w = ResultWriter(str(out), retry_errors=True)
    w.close()
    assert w.existing.done == {"a.jpg"}
    assert [r["path"] for r in read_results(str(out))] == ["a.jpg"]


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["score", str(tmp_path), "--url", "127.0.0.1:1", "--out", str(tmp_path / "r.txt"),
                 "--wait", "0", "--no-progress"]) == 2
    assert main(["score", str(tmp_path / "missing"), "--url", "127.0.0.1:1", "--wait", "0",
                 "--out", str(tmp_path / "r.csv"), "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err


def test_unreachable_server_exits_2(tmp_path, capsys):
    rc = main(["score", str(tmp_path), "--url", "127.0.0.1:1", "--out", str(tmp_path / "r.csv"),
               "--wait", "0", "--no-progress"])
    assert rc == 2 and "not ready" in capsys.readouterr().err


# -- against the real server -------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_score_writes_every_image_and_resumes(dev_server, folder, tmp_path, ext, capsys):
    out = tmp_path / f"results.{ext}"
    assert _score(dev_server, folder, out, "--top-k", "3") == 1  # one error row
    text = capsys.readouterr().out
    assert "images/s" in text and "UPPER.JPG" in text  # summary and the per-image table
    rows = read_results(str(out))
    assert Counter(r["path"] for r in rows) == Counter(_expected(folder))
    for r in rows:
        if r["path"] == "a/notes.jpg":
            assert r["error"].startswith("INVALID_ARGUMENT") and not r["label"]
        else:
            assert not r["error"] and r["label"] in LABELS and 0 <= float(r["score"]) <= 1
            assert len(r["top_k"]) == 3 and r["top_k"][0][0] == r["label"]
            assert r["model"] == "dev" and str(r["version"]) == "1"
    if ext == "jsonl":
        assert all(json.loads(line) for line in out.read_text().splitlines())

    # A second run skips everything already there.
    before = out.read_text()
    assert _score(dev_server, folder, out) == 0
    assert out.read_text() == before
    assert "skipped" in capsys.readouterr().out

    # New images are added once; a torn last line is repaired.
    shutil.copy(GOOD[7], folder / "new.png")
    with open(out, "a") as f:
        f.write("new.png,pla" if ext == "csv" else '{"path": "new.png"')
    assert _score(dev_server, folder, out) == 0
    rows = read_results(str(out))
    assert Counter(r["path"] for r in rows) == Counter(_expected(folder) | {"new.png"})
    assert max(Counter(r["path"] for r in rows).values()) == 1


def test_follow_symlinks_option(dev_server, folder, tmp_path):
    out = tmp_path / "r.jsonl"
    _score(dev_server, folder, out, "--follow-symlinks", "--protocol", "http", "--url", dev_server.http_url)
    paths = {r["path"] for r in read_results(str(out))}
    assert {"link.jpg", "linkdir/elsewhere.jpg"} <= paths


def test_sigkill_then_resume_loses_nothing(dev_server, tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(120):
        shutil.copy(GOOD[i % len(GOOD)], root / f"img{i:03d}.jpg")
    out = tmp_path / "r.csv"
    cmd = [sys.executable, "-m", "waste_client", "score", str(root), "--url", dev_server.grpc_url,
           "--model", "dev", "--out", str(out), "--in-flight", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and out.read_text().count("\n") > 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_results(str(out)))
    assert 0 < done_before
    assert main(["score", str(root), "--url", dev_server.grpc_url, "--model", "dev",
                 "--out", str(out), "--no-progress", "--no-table"]) == 0
    counts = Counter(r["path"] for r in read_results(str(out)))
    assert len(counts) == 120 and set(counts.values()) == {1}


def _kill_process_group(server) -> None:
    """SIGKILL the whole session (tritonserver and its python stubs): no graceful shutdown at all."""
    process = server._process
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("halt", ["stop", "sigkill"])
def test_server_restart_mid_job_gives_no_error_rows(dev_server, tmp_path, halt):
    """Halt the server under a running job (graceful stop, or SIGKILL of its process group) and start
    a new one on the same ports: the job waits, then completes with every path exactly once."""
    from server.launch import TritonServer

    root = tmp_path / "many"
    root.mkdir()
    for i in range(60):
        shutil.copy(GOOD[i % len(GOOD)], root / f"img{i:03d}.jpg")
    out = tmp_path / "r.jsonl"
    first = TritonServer(dev_server.model_repository).start()
    ports = dict(http_port=first.http_port, grpc_port=first.grpc_port, metrics_port=first.metrics_port)
    written = []
    with Classifier(first.grpc_url, model="dev", retries=60, backoff=0.2, max_backoff=1.0) as clf:
        job = threading.Thread(target=lambda: written.append(
            score_folder(str(root), clf, str(out), in_flight=2, progress=False,
                         on_row=lambda row: time.sleep(0.05))))
        job.start()
        try:
            while not out.exists() or len(read_results(str(out))) < 5:
                time.sleep(0.05)
            if halt == "sigkill":
                _kill_process_group(first)
            first.stop()
            second = TritonServer(dev_server.model_repository, **ports).start()
            job.join(timeout=120)
        finally:
            first.stop()
            if "second" in locals():
                second.stop()
    summary = written[0]
    rows = read_results(str(out))
    assert [r["error"] for r in rows if r["error"]][:2] == [] and summary.errors == 0
    assert Counter(r["path"] for r in rows) == Counter(f"img{i:03d}.jpg" for i in range(60))
