"""Bulk scorer: walk, output file and lock units, then `python -m waste_client score` on `dev_server`.

Every scenario of issue 11 runs against real parts: a real tritonserver (`dev_server`), real
processes killed with SIGKILL, and a real S3-compatible server (`s3_server`, moto's standalone
server) that boto3 fills and the scorer reads through `s3://` with AWS_ENDPOINT_URL.
"""
from __future__ import annotations

import json
import logging
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

from waste_client import Classifier, ClassifierError, Prediction
from waste_client._lock import OutputLock
from waste_client._ray import LOCAL_START_ATTEMPTS
from waste_client._results import ResultWriter, error_row, make_header, prediction_row, read_results
from waste_client._walk import iter_images
from waste_client.cli import main
from waste_client.score import score_folder

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"
GOOD = sorted((SAMPLES / "garbage12").rglob("*.jpg"))
LABELS = (REPO_ROOT / "model_repository" / "effnet_lite0" / "labels.txt").read_text().split()
CLIENT_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "client"), str(REPO_ROOT)])}
#: Names that broke the previous scorer: CR, LF, not UTF-8, commas, quotes, leading spaces, %.
NASTY = ["cr\rname.jpg", "lf\nname.jpg", os.fsdecode(b"latin1-\xe9\xff.jpg"), 'comma, "quote".jpg',
         "  leading space.jpg", "100%.jpg", "ünïcode.jpg"]


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


def _photos(root: Path, n: int, names=None) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    names = names or [f"img{i:03d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        shutil.copy(GOOD[i % len(GOOD)], os.path.join(str(root), name))
    return [os.path.join(str(root), name) for name in names]


def _expected(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")
            if p.suffix.lower() == ".jpg" and not p.is_symlink() and p.is_file()}


def _score(server, source, out, *extra):
    return main(["score", str(source), "--url", server.grpc_url, "--model", "dev", "--out", str(out),
                 "--no-progress", "--in-flight", "2", "--batch-size", "4", *extra])


def _once(out: Path) -> Counter:
    counts = Counter(r["path"] for r in read_results(str(out)))
    assert max(counts.values(), default=1) == 1, [p for p, n in counts.items() if n > 1][:3]
    return counts


PRED = Prediction("paper", 0.9, [("paper", 0.9), ("trash", 0.1)], "dev", "1")


def _header(source="/src", **kw):
    return make_header([source], kw.pop("model", "dev"), top_k=kw.pop("top_k", 3), **kw)


# -- units without a server --------------------------------------------------------------------

def test_walk_extensions_and_symlinks(folder):
    found = list(iter_images(str(folder)))
    assert {str(folder / p) for p in found} == _expected(folder) and len(found) == 7
    assert "UPPER.JPG" in found and "a/notes.jpg" in found
    assert not any(p.startswith(("link", "readme")) for p in found)
    followed = {str(folder / p) for p in iter_images(str(folder), follow_symlinks=True)}
    assert followed == _expected(folder) | {str(folder / "link.jpg"), str(folder / "linkdir/elsewhere.jpg")}


def test_walk_link_loop_ends(tmp_path):
    (tmp_path / "d").mkdir()
    shutil.copy(GOOD[0], tmp_path / "d" / "x.jpg")
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")
    assert list(iter_images(str(tmp_path), follow_symlinks=True)) == ["d/x.jpg"]


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_writer_resume_repairs_and_retries_transient_rows(tmp_path, ext):
    out = tmp_path / f"r.{ext}"
    with ResultWriter(str(out), _header()) as w:
        w.write(prediction_row("/src/a.jpg", PRED))
        w.write(error_row("/src/b.jpg", ClassifierError("not\nan image", "INVALID_ARGUMENT"), "dev"))
        w.write(error_row("/src/c.jpg", ClassifierError("connection refused", "UNAVAILABLE"), "dev"))
        w.write(prediction_row("/src/a.jpg", PRED))  # a duplicate must not survive a resume
    with open(out, "a") as f:
        f.write('/src/d.jpg,pap' if ext == "csv" else '{"path": "/src/d.jpg", "lab')  # killed mid-write
    w = ResultWriter(str(out), _header())
    w.close()
    # b (permanent) stays done; c (transient) is dropped so that it is scored again.
    assert w.existing.done == {"/src/a.jpg", "/src/b.jpg"}
    assert (w.existing.rows, w.existing.errors, w.existing.dropped, w.existing.retried) == (2, 1, 2, 1)
    rows = read_results(str(out))
    assert [r["path"] for r in rows] == ["/src/a.jpg", "/src/b.jpg"]
    assert rows[0]["top_k"] == [["paper", 0.9], ["trash", 0.1]]
    assert rows[1]["error"] == "INVALID_ARGUMENT: not an image"
    assert out.read_text().endswith("\n")
    w = ResultWriter(str(out), _header(), retry_errors=True)
    w.close()
    assert w.existing.done == {"/src/a.jpg"} and [r["path"] for r in read_results(str(out))] == ["/src/a.jpg"]


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_any_file_name_round_trips(tmp_path, ext):
    out = tmp_path / f"r.{ext}"
    names = [f"/src/{n}" for n in NASTY]
    with ResultWriter(str(out), _header()) as w:
        for name in names:
            w.write(prediction_row(name, PRED))
            w.write(error_row(name + ".err", ClassifierError(f"no such file: {name}", "FILE_NOT_FOUND"), "dev"))
    assert len(out.read_bytes().splitlines()) == 2 * len(names) + (2 if ext == "csv" else 1)
    out.read_bytes().decode("utf-8")  # valid UTF-8 whatever the names
    assert [r["path"] for r in read_results(str(out))] == [p for n in names for p in (n, n + ".err")]
    w = ResultWriter(str(out), _header())  # a resume recognises every one of them
    w.close()
    assert w.existing.done == set(names) | {n + ".err" for n in names} and w.existing.dropped == 0
    if ext == "csv":
        import csv
        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))[2:]
        assert rows[0][0] == "/src/cr%0Dname.jpg" and rows[2][0] == "/src/lf%0Aname.jpg"


def test_other_job_is_refused_with_what_differs(tmp_path):
    out = tmp_path / "r.csv"
    with ResultWriter(str(out), _header("/day1")) as w:
        w.write(prediction_row("/day1/IMG_0001.jpg", PRED))
    with pytest.raises(ClassifierError, match=r"model 'dev' there, 'other' now.*top_k 3 there, 5 now.*new --out"):
        ResultWriter(str(out), _header("/day1", model="other", top_k=5))
    with pytest.raises(ClassifierError, match=r"'/day1'.*not of '/day2'.*new --out.*--append-source"):
        ResultWriter(str(out), _header("/day2"))
    with ResultWriter(str(out), _header("/day2"), append_source=True) as w:
        assert w.header["sources"] == ["/day1", "/day2"] and w.existing.done == {"/day1/IMG_0001.jpg"}
    with ResultWriter(str(out), _header("/day2")) as w:  # now a source of this file
        pass
    out.write_text("path,label,score,top_k,model,version,error\nIMG_0001.jpg,paper,0.9,,dev,1,\n")
    with pytest.raises(ClassifierError, match="older scorer"):
        ResultWriter(str(out), _header("/day1"))


def test_lock_refuses_a_second_writer_and_dies_with_its_holder(tmp_path):
    out = tmp_path / "r.jsonl"
    with ResultWriter(str(out), _header()):
        with pytest.raises(ClassifierError, match=f"another scorer is writing .*pid {os.getpid()}"):
            ResultWriter(str(out), _header())
    # A holder killed with SIGKILL leaves the lock file, never the lock.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from waste_client._lock import OutputLock;"
         f"OutputLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
        env=CLIENT_ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ClassifierError) as info:
            OutputLock(str(out)).acquire()
        assert info.value.status == "FAILED_PRECONDITION" and f"pid {holder.pid}" in info.value.message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    OutputLock(str(out)).acquire().release()


def test_usage_errors_exit_2_and_unreachable_exits_3(tmp_path, capsys):
    args = ["--url", "127.0.0.1:1", "--wait", "0", "--no-progress"]
    assert main(["score", str(tmp_path), "--out", str(tmp_path / "r.txt"), *args]) == 3  # server first
    assert "not ready" in capsys.readouterr().err
    assert main(["score", "--out", str(tmp_path / "r.csv"), *args]) == 2
    assert main(["score", str(tmp_path), "--in-flight", "0", *args]) == 2
    with pytest.raises(SystemExit) as info:
        main(["score", str(tmp_path), "--shard-typo", "1"])
    assert info.value.code == 2
    assert main(["score", str(tmp_path), "--out", str(tmp_path / "r.csv"), "--json", *args]) == 3
    reply = json.loads(capsys.readouterr().out)
    assert reply["exit_code"] == 3
    assert reply["error"].startswith("[UNAVAILABLE] model 'effnet_lite0' is not ready on 127.0.0.1:1 (grpc)")


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["score", "--help"])
    text = capsys.readouterr().out
    assert info.value.code == 0
    for needle in ("exit codes:", "130", "(default: 3)", "(default: 8)", "--shard I/N", "--json", "--quiet"):
        assert needle in text, needle
    with pytest.raises(SystemExit):
        main(["--version"])
    from waste_client import __version__
    assert capsys.readouterr().out.strip() == f"waste-client {__version__}"


# -- against the real server -------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_score_writes_every_image_and_resumes(dev_server, folder, tmp_path, ext, capsys):
    out = tmp_path / f"results.{ext}"
    assert _score(dev_server, folder, out, "--top-k", "3") == 1  # one error row
    text = capsys.readouterr().out
    assert "images/s" in text and "UPPER.JPG" in text  # summary and the per-image table
    assert Counter(r["path"] for r in read_results(str(out))) == Counter(_expected(folder))
    for r in read_results(str(out)):
        if r["path"].endswith("a/notes.jpg"):
            assert r["error"].startswith("INVALID_ARGUMENT") and not r["label"]
        else:
            assert not r["error"] and r["label"] in LABELS and 0 <= float(r["score"]) <= 1
            assert len(r["top_k"]) == 3 and r["top_k"][0][0] == r["label"]
            assert r["model"] == "dev" and str(r["version"]) == "1"
    header = json.loads(out.read_text().splitlines()[0].split(" ", 2)[-1] if ext == "csv"
                        else out.read_text().splitlines()[0])
    assert header["sources"] == [str(folder)] and header["model"] == "dev" and header["top_k"] == 3

    # A second run skips everything already there.
    before = out.read_text()
    assert _score(dev_server, folder, out, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["skipped"], summary["scored"]) == (7, 0)
    assert out.read_text() == before

    # New images are added once; a torn last line is repaired.
    shutil.copy(GOOD[7], folder / "new.png")
    with open(out, "a") as f:
        f.write(f"{folder}/new.png,pla" if ext == "csv" else f'{{"path": "{folder}/new.png"')
    assert _score(dev_server, folder, out) == 0
    assert _once(out) == Counter(_expected(folder) | {str(folder / "new.png")})


def test_same_names_in_two_folders_and_other_models(dev_server, tmp_path, capsys):
    """day1/ and day2/ hold the same file names: one output keeps both, each exactly once."""
    day1 = _photos(tmp_path / "day1", 5)
    day2 = _photos(tmp_path / "day2", 5)
    out = tmp_path / "r.csv"
    assert _score(dev_server, tmp_path / "day1", out) == 0
    capsys.readouterr()
    assert _score(dev_server, tmp_path / "day2", out) == 2
    err = capsys.readouterr().err
    assert "day1" in err and "day2" in err and "--append-source" in err and "new --out" in err
    assert _score(dev_server, tmp_path / "day2", out, "--append-source") == 0
    assert _once(out) == Counter(day1 + day2)
    # Another model or top-k into the same file: refused, rows never mixed.
    assert _score(dev_server, tmp_path / "day1", out, "--top-k", "5") == 2
    assert "top_k 3 there, 5 now" in capsys.readouterr().err
    assert _score(dev_server, tmp_path / "day1", out, "--model-version", "1") == 2
    assert _once(out) == Counter(day1 + day2)


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_any_file_name_is_scored_once(dev_server, tmp_path, ext):
    paths = _photos(tmp_path / "odd", len(NASTY), NASTY)
    out = tmp_path / f"r.{ext}"
    assert _score(dev_server, tmp_path / "odd", out) == 0
    assert _once(out) == Counter(paths)
    assert _score(dev_server, tmp_path / "odd", out, "--json") == 0  # every name recognised as done
    assert _once(out) == Counter(paths)


def test_follow_symlinks_option(dev_server, folder, tmp_path):
    out = tmp_path / "r.jsonl"
    _score(dev_server, folder, out, "--follow-symlinks", "--protocol", "http", "--url", dev_server.http_url)
    paths = {r["path"] for r in read_results(str(out))}
    assert {str(folder / "link.jpg"), str(folder / "linkdir/elsewhere.jpg")} <= paths


def test_files_from_stdin_and_missing_file(dev_server, tmp_path):
    paths = _photos(tmp_path / "p", 3)
    listing = "\n".join(paths + [paths[0], str(tmp_path / "p" / "gone.jpg")]) + "\n"
    out = tmp_path / "r.jsonl"
    proc = subprocess.run([sys.executable, "-m", "waste_client", "score", "--files-from", "-", "--url",
                           dev_server.grpc_url, "--model", "dev", "--out", str(out), "--json"],
                          input=listing, text=True, capture_output=True, env=CLIENT_ENV, timeout=120)
    assert proc.returncode == 1, proc.stderr
    rows = {r["path"]: r for r in read_results(str(out))}
    assert set(rows) == set(paths) | {str(tmp_path / "p" / "gone.jpg")}  # the repeat is scored once
    assert rows[str(tmp_path / "p" / "gone.jpg")]["error"].startswith("FILE_NOT_FOUND")
    assert json.loads(proc.stdout)["errors"] == 1


def test_shards_cover_the_folder_exactly_once(dev_server, tmp_path):
    paths = _photos(tmp_path / "p", 30)
    parts = []
    for i in range(3):
        out = tmp_path / f"shard{i}.csv"
        assert _score(dev_server, tmp_path / "p", out, "--shard", f"{i}/3") == 0
        parts.append(set(_once(out)))
        assert 0 < len(parts[-1]) < 30
    assert sorted(sum(map(list, parts), [])) == sorted(paths)
    out = tmp_path / "shard0.csv"
    assert _score(dev_server, tmp_path / "p", out, "--shard", "1/3") == 2  # another job's output


def test_min_score_writes_unsure(dev_server, tmp_path, capsys):
    paths = _photos(tmp_path / "p", 6)
    out = tmp_path / "r.jsonl"
    # The dev classifier has random weights: no score comes near 0.999.
    assert _score(dev_server, tmp_path / "p", out, "--min-score", "0.999", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unsure"] == 6 and summary["labels"] == {"unsure": 6}
    assert (summary["min_score"], summary["min_score_from"]) == (0.999, "--min-score")
    rows = read_results(str(out))
    assert {r["label"] for r in rows} == {"unsure"} and all(len(r["top_k"]) == 3 for r in rows)
    assert len(rows) == len(paths)
    # `dev_server`'s model records no threshold: by default nothing is unsure, and the header says none.
    assert _score(dev_server, tmp_path / "p", tmp_path / "plain.jsonl", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["unsure"], summary["min_score"], summary["min_score_from"]) == (0, None, "model")
    assert _header_of(tmp_path / "plain.jsonl")["min_score"] is None


def _header_of(out: Path) -> dict:
    first = out.read_text().splitlines()[0]
    return json.loads(first.split(" ", 2)[-1] if out.suffix == ".csv" else first)


def _recorded_threshold(server) -> float:
    return json.loads((server.model_repository / "dev_classifier" / "1" / "export.json").read_text())[
        "unsure_threshold"]


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_the_models_threshold_is_the_default_min_score(unsure_server, tmp_path, ext, capsys, monkeypatch):
    threshold = _recorded_threshold(unsure_server)
    out = tmp_path / f"r.{ext}"
    source = SAMPLES / "garbage12"
    assert _score(unsure_server, source, out, "--json", "--no-labels-report") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["min_score"], summary["min_score_from"]) == (threshold, "model")
    assert _header_of(out)["min_score"] == threshold
    rows = read_results(str(out))
    assert len(rows) == len(GOOD)
    for r in rows:
        assert (r["label"] == "unsure") == (float(r["score"]) < threshold), r
        assert r["top_k"][0][0] in LABELS  # the class stays in the row
    unsure = sum(r["label"] == "unsure" for r in rows)
    assert 0 < unsure < len(rows) and summary["unsure"] == unsure

    # Resuming with another threshold is refused, like any other change of the job.
    assert _score(unsure_server, source, out, "--min-score", "0.3") == 2
    err = capsys.readouterr().err
    assert f"min_score {threshold!r} there, 0.3 now" in err and "--min-score sets it" in err

    # --min-score 0: no threshold at all, no unsure row, and the header says none.
    off = tmp_path / f"off.{ext}"
    assert _score(unsure_server, source, off, "--min-score", "0", "--json", "--no-labels-report") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["unsure"], summary["min_score"], summary["min_score_from"]) == (0, None, "--min-score")
    assert _header_of(off)["min_score"] is None
    assert all(r["label"] in LABELS for r in read_results(str(off)))

    # The text summary names the threshold and its origin; the environment can set it too.
    few = tmp_path / "few"
    _photos(few, 3)
    assert _score(unsure_server, few, tmp_path / f"t.{ext}") == 0
    assert f'"unsure" threshold: {threshold:.4g} (from: model)' in capsys.readouterr().out
    monkeypatch.setenv("WASTE_UNSURE_THRESHOLD", "0.9999")
    assert _score(unsure_server, few, tmp_path / f"env.{ext}", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["unsure"], summary["min_score"], summary["min_score_from"]) == (3, 0.9999,
                                                                                    "WASTE_UNSURE_THRESHOLD")


def test_score_folder_applies_the_classifiers_threshold(unsure_server, tmp_path):
    threshold = _recorded_threshold(unsure_server)
    with Classifier(unsure_server.grpc_url, model="dev") as clf:
        summary = score_folder(str(SAMPLES / "garbage12"), clf, str(tmp_path / "r.jsonl"), progress=False,
                               labels_from_folders=False)
    assert (summary.min_score, summary.min_score_from) == (threshold, "model")
    rows = read_results(str(tmp_path / "r.jsonl"))
    assert summary.unsure == sum(float(r["score"]) < threshold for r in rows) > 0


def test_ray_columns_keep_unsure_and_threshold():
    """What an actor sends back to the driver keeps the prediction's verdict (no Ray needed)."""
    from waste_client._ray import _from_columns, _to_columns

    pairs = [("/a.jpg", Prediction("paper", 0.4, [("paper", 0.4)], "dev", "1", "/a.jpg", True, 0.5)),
             ("/b.jpg", Prediction("paper", 0.9, [("paper", 0.9)], "dev", "1", "/b.jpg")),
             ("/c.jpg", ClassifierError("not an image", "INVALID_ARGUMENT"))]
    back = dict(_from_columns(_to_columns(pairs)))
    assert back["/a.jpg"] == pairs[0][1] and back["/b.jpg"] == pairs[1][1]
    assert back["/c.jpg"].status == "INVALID_ARGUMENT"


def test_labelled_folder_report(dev_server, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert _score(dev_server, SAMPLES / "garbage12", out, "--json") == 0
    report = json.loads(capsys.readouterr().out)["labelled_folders"]
    assert report["evaluated"] == len(GOOD) and set(report["per_class"]) == set(LABELS)
    assert all(m["support"] == 3 for m in report["per_class"].values())
    matrix = (tmp_path / "r.confusion.csv").read_text().splitlines()
    assert matrix[0].split(",")[1:] == LABELS and len(matrix) == 13
    correct = sum(int(line.split(",")[1 + i]) for i, line in enumerate(matrix[1:]))
    assert report["accuracy"] == round(correct / len(GOOD), 4)
    from PIL import Image
    assert Image.open(tmp_path / "r.confusion.png").size[0] > 300
    # Folders that are not class names: no report unless asked.
    assert _score(dev_server, tmp_path / "none", tmp_path / "x.csv", "--json") == 2  # missing source
    _photos(tmp_path / "mine" / "kitchen", 2)
    assert _score(dev_server, tmp_path / "mine", tmp_path / "y.csv", "--json") == 0
    assert "labelled_folders" not in json.loads(capsys.readouterr().out.splitlines()[-1])
    assert _score(dev_server, tmp_path / "mine", tmp_path / "y.csv", "--json", "--labels-from-folders") == 0
    assert json.loads(capsys.readouterr().out)["labelled_folders"]["per_class"]["kitchen"]["support"] == 2


def _wait_rows(out: Path, n: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") > n:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {n} rows in {out} (exit {proc.poll()})")


def _scorer(server, source, out, *extra, env=None, popen=subprocess.Popen):
    cmd = [sys.executable, "-m", "waste_client", "score", str(source), "--url", server.grpc_url,
           "--model", "dev", "--out", str(out), "--in-flight", "1", "--batch-size", "1", *extra]
    return popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or CLIENT_ENV)


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_sigkill_then_resume_loses_nothing(dev_server, tmp_path, ext):
    paths = _photos(tmp_path / "many", 120)
    out = tmp_path / f"r.{ext}"
    proc = _scorer(dev_server, tmp_path / "many", out)
    _wait_rows(out, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_results(str(out)))
    assert 0 < done_before < 120
    assert _score(dev_server, tmp_path / "many", out, "--no-table") == 0
    assert _once(out) == Counter(paths)


def test_two_scorers_at_once(dev_server, tmp_path):
    paths = _photos(tmp_path / "many", 400)
    out = tmp_path / "r.csv"
    first = _scorer(dev_server, tmp_path / "many", out)
    _wait_rows(out, 5, first)
    second = _scorer(dev_server, tmp_path / "many", out)
    _, err = second.communicate(timeout=60)
    assert first.poll() is None, "the first scorer ended before the second started: use more photos"
    assert second.returncode == 2 and b"another scorer is writing" in err and str(first.pid).encode() in err
    first.communicate(timeout=180)
    assert first.returncode == 0
    assert _once(out) == Counter(paths)


def test_rerun_after_outage_retries_only_transient_rows(dev_server, tmp_path):
    paths = _photos(tmp_path / "p", 8)
    big = tmp_path / "p" / "huge.jpg"
    with open(big, "wb") as f:
        f.truncate(40 * 1024 * 1024)  # over the size limit: a permanent error, never sent
    out = tmp_path / "r.jsonl"
    # The outage: nothing listens on the server's address (connection refused, no retries left).
    # min_score is given: by default score_folder first reads the model's threshold, which a
    # server that is down cannot give (the command line waits for the server instead).
    with Classifier("127.0.0.1:1", model="dev", retries=0, timeout=2) as down:
        summary = score_folder(str(tmp_path / "p"), down, str(out), progress=False, min_score=None)
    assert (summary.errors, summary.transient) == (9, 8)
    errors = {r["path"]: r["error"].split(":")[0] for r in read_results(str(out))}
    assert errors == {**{p: "UNAVAILABLE" for p in paths}, str(big): "INVALID_ARGUMENT"}
    # The server is back: the rerun sends the 8 transient rows, not the permanent one.
    with Classifier(dev_server.grpc_url, model="dev") as up:
        summary = score_folder(str(tmp_path / "p"), up, str(out), progress=False)
    assert (summary.retried, summary.scored, summary.skipped, summary.errors) == (8, 8, 1, 0)
    rows = {r["path"]: r for r in read_results(str(out))}
    assert set(rows) == set(paths) | {str(big)} and len(read_results(str(out))) == 9
    assert all(rows[p]["label"] for p in paths) and "over the limit" in rows[str(big)]["error"]
    # --retry-errors sends the permanent one again (and it fails again, once).
    assert _score(dev_server, tmp_path / "p", out, "--retry-errors") == 1
    assert len(_once(out)) == 9


def test_s3_source_sigkill_then_resume(dev_server, s3_server, tmp_path):
    import boto3

    env = {**CLIENT_ENV, **s3_server}
    s3 = boto3.client("s3", **{"endpoint_url": s3_server["AWS_ENDPOINT_URL"], "region_name": "us-east-1",
                               "aws_access_key_id": "testing", "aws_secret_access_key": "testing"})
    bucket = f"scorer-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    keys = [f"photos/{d}/IMG_{i:04d}.jpg" for d in ("day1", "day2") for i in range(40)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=GOOD[i % len(GOOD)].read_bytes())
    s3.put_object(Bucket=bucket, Key="photos/day1/big.jpg", Body=GOOD[0].read_bytes() + b"\0" * 100)
    out = tmp_path / "r.jsonl"
    proc = _scorer(dev_server, f"s3://{bucket}/photos", out, env=env)
    _wait_rows(out, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(read_results(str(out))) < len(keys) + 1
    done = subprocess.run(
        [sys.executable, "-m", "waste_client", "score", f"s3://{bucket}/photos", "--url", dev_server.grpc_url,
         "--model", "dev", "--out", str(out), "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = [f"s3://{bucket}/{k}" for k in keys + ["photos/day1/big.jpg"]]
    assert _once(out) == Counter(expected)
    assert all(r["label"] in LABELS for r in read_results(str(out)))


@pytest.mark.parametrize("halt", ["stop", "sigkill"])
def test_server_restart_mid_job_gives_no_error_rows(dev_server, tmp_path, halt):
    """Halt the server under a running job (graceful stop, or SIGKILL of its process group) and start
    a new one on the same ports: the job waits, then completes with every path exactly once."""
    from server.launch import TritonServer

    paths = _photos(tmp_path / "many", 60)
    out = tmp_path / "r.jsonl"
    first = TritonServer(dev_server.model_repository).start()
    ports = dict(http_port=first.http_port, grpc_port=first.grpc_port, metrics_port=first.metrics_port)
    written = []
    # About 2 minutes of retries: a restart takes 15-50 s on the loaded 2-core machine.
    with Classifier(first.grpc_url, model="dev", retries=240, backoff=0.2, max_backoff=1.0) as clf:
        job = threading.Thread(target=lambda: written.append(
            score_folder(str(tmp_path / "many"), clf, str(out), in_flight=2, batch_size=2, progress=False,
                         on_row=lambda row: time.sleep(0.05))))
        job.start()
        try:
            while not out.exists() or len(read_results(str(out))) < 5:
                time.sleep(0.05)
            if halt == "sigkill":
                os.killpg(first._process.pid, signal.SIGKILL)  # tritonserver and its stubs, no goodbye
                first._process.wait()
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
    assert _once(out) == Counter(paths)


def test_sigint_exits_130_and_resume_completes(dev_server, tmp_path, ctrl_c_popen):
    paths = _photos(tmp_path / "many", 150)
    out = tmp_path / "r.csv"
    proc = _scorer(dev_server, tmp_path / "many", out, popen=ctrl_c_popen)
    _wait_rows(out, 10, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"run again to resume" in err
    assert 0 < len(read_results(str(out))) < 150
    assert _score(dev_server, tmp_path / "many", out, "--no-table") == 0
    assert _once(out) == Counter(paths)


def test_engine_ray_from_the_command_line(unsure_server, tmp_path):
    """`--engine ray` runs the same job through the Ray engine (a local Ray started by the command),
    with the model's threshold resolved on the driver: the same `unsure` rows and header."""
    paths = _photos(tmp_path / "p", 12)
    shutil.copy(SAMPLES / "bad" / "notes.jpg", tmp_path / "p" / "notes.jpg")
    out = tmp_path / "r.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "waste_client", "score", str(tmp_path / "p"), "--url", unsure_server.grpc_url,
         "--model", "dev", "--out", str(out), "--engine", "ray", "--actors", "1", "--batch-size", "4", "--json"],
        env=CLIENT_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["ok"], summary["errors"]) == (12, 1)
    rows = {r["path"]: r for r in read_results(str(out))}
    assert _once(out) == Counter(paths + [str(tmp_path / "p" / "notes.jpg")])
    assert rows[str(tmp_path / "p" / "notes.jpg")]["error"].startswith("INVALID_ARGUMENT")
    threshold = _recorded_threshold(unsure_server)
    assert (summary["min_score"], summary["min_score_from"]) == (threshold, "model")
    assert _header_of(out)["min_score"] == threshold
    scored = [r for r in rows.values() if not r["error"]]
    assert all((r["label"] == "unsure") == (float(r["score"]) < threshold) for r in scored)
    assert 0 < summary["unsure"] == sum(r["label"] == "unsure" for r in scored) < len(scored)


def test_engine_ray_local_start_wait_is_the_knob_ray_reads(dev_server, tmp_path):
    """The scorer lengthens Ray's wait for a local GCS (a loaded machine once needed more than Ray's
    30 s) through RAY_gcs_server_port_wait_time_s; a user's own value wins. 0 must fail the start:
    if a Ray upgrade stopped reading the variable, the longer wait would silently be gone."""
    _photos(tmp_path / "p", 1)
    proc = subprocess.run(
        [sys.executable, "-m", "waste_client", "score", str(tmp_path / "p"), "--url", dev_server.grpc_url,
         "--model", "dev", "--out", str(tmp_path / "r.jsonl"), "--engine", "ray", "--actors", "1"],
        env={**CLIENT_ENV, "RAY_gcs_server_port_wait_time_s": "0"}, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]  # unreachable: a later run can succeed
    assert "cannot start or join Ray (a local Ray): Timed out waiting for file" in proc.stderr
    assert "gcs_server_port" in proc.stderr
    # A failed start is tried once more (Ray's own 30 s wait for the raylet has no knob), then reported.
    assert proc.stderr.count("starting a local Ray failed") == LOCAL_START_ATTEMPTS - 1 == 1


def test_the_command_leaves_this_process_logging_as_it_found_it(tmp_path):
    """`main` is called in-process (here, by embedding programs): the quieter retry level it sets for
    a bulk job must not outlive it, or this process's retry warnings vanish from then on."""
    root, retry = logging.getLogger(), logging.getLogger("waste_client._retry")
    before = (list(root.handlers), root.level, retry.level)
    for quiet in ([], ["-q"]):
        assert main(["score", str(tmp_path), "--url", "127.0.0.1:1", "--in-flight", "0", *quiet]) == 2
        assert (list(root.handlers), root.level, retry.level) == before


def test_quiet_and_verbose(dev_server, tmp_path, capsys):
    _photos(tmp_path / "p", 3)
    assert _score(dev_server, tmp_path / "p", tmp_path / "r.csv", "-q") == 0
    assert capsys.readouterr().out == ""
    proc = subprocess.run([sys.executable, "-m", "waste_client", "score", str(tmp_path / "p"), "--url",
                           dev_server.grpc_url, "--model", "dev", "--out", str(tmp_path / "r.csv"), "-v"],
                          env=CLIENT_ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "images/s" in proc.stdout
    assert "INFO waste_client.score: resuming" in proc.stderr  # the library logs, the CLI shows it
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal
