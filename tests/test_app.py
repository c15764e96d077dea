"""The Streamlit app: its logic as plain functions, and the page through Streamlit's AppTest.

AppTest runs the real script in-process; the page talks to the real `dev_server` (random weights, so
labels are checked against what the client library gets, never against the truth).
"""
from __future__ import annotations

import csv
import io
import socket
from pathlib import Path

import numpy as np
import pytest

from app import heatmap
from app.logic import (
    Settings,
    describe_error,
    limit_files,
    load_bins,
    load_settings,
    model_choices,
    result_row,
    results_html,
    rows_to_csv,
    served_model,
    thumbnail_data_url,
    verdict,
)
from app.run import streamlit_command
from waste_client import Classifier, ClassifierError, ModelInfo, Prediction

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(REPO_ROOT / "app" / "streamlit_app.py")
SAMPLES = REPO_ROOT / "samples" / "garbage12"
BATTERY = SAMPLES / "battery" / "battery142.jpg"
LABELS = (REPO_ROOT / "model_repository" / "effnet_lite0" / "labels.txt").read_text().split()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- logic ---------------------------------------------------------------------------------------


def test_settings_env_then_command_line():
    # The scorer's variables and defaults: WASTE_URL / WASTE_PROTOCOL, gRPC on localhost:8001.
    assert (load_settings([], {}).server_url, load_settings([], {}).protocol) == ("localhost:8001", "grpc")
    assert load_settings(["--protocol", "http"], {}).server_url == "localhost:8000"
    env = {"WASTE_URL": "http://h:1/", "WASTE_PROTOCOL": "http", "WASTE_MODEL": "m", "WASTE_THRESHOLD": "0.3"}
    assert load_settings([], env) == Settings("h:1", "http", "m", 0.3, load_settings([], {}).bins_path)
    s = load_settings(["-q", "--server-url", "x:2", "--protocol", "grpc", "--threshold=0.9"], env)
    assert (s.server_url, s.protocol, s.model, s.threshold) == ("x:2", "grpc", "m", 0.9)
    with pytest.raises(ValueError):
        load_settings(["--threshold", "1.5"], {})
    # Unset (or "model"): the served model's own "not sure" threshold, read by the page.
    assert load_settings([], {}).threshold is None
    assert load_settings([], {"WASTE_THRESHOLD": "model"}).threshold is None
    with pytest.raises(ValueError, match="'model' or a number"):
        load_settings(["--threshold", "high"], {})


def test_upload_limits_are_settings():
    default = load_settings([], {})
    assert (default.max_upload_mb, default.max_files) == (32, 50)
    s = load_settings(["--max-files", "7"], {"WASTE_MAX_UPLOAD_MB": "5", "WASTE_MAX_FILES": "3"})
    assert (s.max_upload_mb, s.max_files) == (5, 7)
    for bad in ("0", "-1", "2.5", "many"):
        with pytest.raises(ValueError, match="WASTE_MAX_FILES"):
            load_settings([], {"WASTE_MAX_FILES": bad})
        with pytest.raises(ValueError, match="WASTE_MAX_UPLOAD_MB"):
            load_settings([], {"WASTE_MAX_UPLOAD_MB": bad})
    assert "--server.maxUploadSize=5" in streamlit_command("h:1", "m", max_upload_mb=5)
    assert "--server.maxUploadSize=32" in streamlit_command("h:1", "m")


def test_extra_files_are_refused_by_name_not_dropped():
    images = [(f"{i}.jpg", b"") for i in range(9)]
    assert limit_files(images[:3], 3) == (images[:3], "")
    kept, message = limit_files(images, 2)
    assert kept == images[:2]
    assert message.startswith("9 images given, but at most 2 are classified per run")
    assert "7 not classified (2.jpg, 3.jpg, 4.jpg, 5.jpg, 6.jpg and 2 more)" in message


def test_every_class_has_disposal_advice_and_battery_is_hazardous():
    bins = load_bins()
    assert sorted(bins) == sorted(LABELS)
    assert bins["battery"].hazardous and "hazardous" in bins["battery"].bin.lower()
    assert "household" not in bins["battery"].bin.lower()
    assert "never in household trash" in bins["battery"].advice.lower()
    assert [c for c, d in bins.items() if d.hazardous] == ["battery"]


def test_a_region_can_replace_the_bins_file(tmp_path):
    path = tmp_path / "bins.toml"
    path.write_text('[classes.battery]\nbin = "Recyclinghof"\nadvice = "Abgeben."\nhazardous = true\n')
    assert load_bins(path)["battery"].bin == "Recyclinghof"
    path.write_text('[classes.battery]\nbin = "x"\n')
    with pytest.raises(ValueError, match="advice"):
        load_bins(path)


def test_low_top_score_is_a_question():
    sure = verdict([("paper", 0.91), ("cardboard", 0.05)], 0.5)
    assert sure.confident and sure.headline == "Prediction: paper (91%)"
    unsure = verdict([("paper", 0.41), ("cardboard", 0.30)], 0.5)
    assert not unsure.confident
    assert unsure.headline == "Not sure: is it paper or cardboard? (top score 41%)"


def test_model_choices_are_servable_ensembles():
    ready = [ModelInfo(n, v) for n, v in [
        ("dev", "1"), ("dev_classifier", "1"), ("dev_tta", "1"), ("effnet_lite0", "1"),
        ("effnet_lite0", "2"), ("effnet_lite0_classifier", "1"), ("preprocess", "1"),
        ("tta_flip", "1"), ("tta_mean", "1")]]
    choices = model_choices(ready, "effnet_lite0")
    assert [(c.name, c.version, c.tta) for c in choices] == [
        ("effnet_lite0", "2", False), ("effnet_lite0", "1", False), ("dev", "1", True)]
    assert choices[0].title == "effnet_lite0 (v2)"
    assert served_model(choices[2], tta=True) == ("dev_tta", "")
    assert served_model(choices[0], tta=True) == ("effnet_lite0", "2")  # no _tta: plain model


def test_results_csv():
    p = Prediction("battery", 0.8, [("battery", 0.8), ("metal", 0.1)], "dev", "1")
    rows = [result_row("a.jpg", p, bins=load_bins(), thumbnail="data:x"),
            result_row("b.jpg", None, "This file could not be classified: not an image")]
    records = list(csv.DictReader(io.StringIO(rows_to_csv(rows))))
    assert records[0]["label"] == "battery" and records[0]["runner_up"] == "metal"
    assert records[0]["bin"].startswith("Hazardous") and records[0]["confident"] == "True"
    assert records[1]["error"].startswith("This file") and records[1]["label"] == ""
    assert "thumbnail" not in records[0]
    table = results_html(rows + [result_row("<script>.jpg", None, "x")])
    assert "&lt;script&gt;.jpg" in table and "<script>" not in table
    pixels = np.full((224, 224, 3), 114, np.uint8)
    assert thumbnail_data_url(pixels).startswith("data:image/png;base64,")
    with pytest.raises(ValueError):  # an upload's bytes are never decoded by the app
        thumbnail_data_url(BATTERY.read_bytes())


def test_error_messages_say_what_to_do():
    s = Settings("h:1")
    down = describe_error(ClassifierError("refused", "UNAVAILABLE"), s)
    assert "does not answer" in down and "make serve" in down
    assert "no ready model `m`" in describe_error(ClassifierError("x", "NOT_FOUND"), s, "m")
    assert "could not be classified" in describe_error(ClassifierError("bad", "INVALID_ARGUMENT"), s)


def test_occlusion_batch_and_map():
    pixels = np.zeros((224, 224, 3), np.uint8)
    batch = heatmap.occluded_copies(pixels)
    assert batch.shape == (50, 224, 224, 3) and not batch[0].any()
    assert (batch[1, :32, :32] == heatmap.FILL).all() and not batch[1, 32:, :].any()
    assert (batch[49, 192:, 192:] == heatmap.FILL).all()
    scores = np.full(50, 0.6)
    scores[1 + 3 * 7 + 4] = 0.1  # hiding cell (3, 4) costs the most
    scores[2] = 0.9              # hiding cell (0, 1) raises the score: not a driver
    imp = heatmap.importance(scores)
    assert imp[3, 4] == 1.0 and imp[0, 1] == 0.0 and imp.max() == 1.0
    assert heatmap.overlay(pixels, imp).shape == (224, 224, 3)
    assert not heatmap.importance(np.full(50, 0.5)).any()


# -- the page (AppTest) ----------------------------------------------------------------------------


def run_app(monkeypatch, url: str, model: str = "dev", **env):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WASTE_URL", url)
    monkeypatch.setenv("WASTE_PROTOCOL", env.pop("WASTE_PROTOCOL", "http"))
    monkeypatch.setenv("WASTE_MODEL", model)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    at = AppTest.from_file(SCRIPT, default_timeout=90)
    return at.run()


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def test_server_down_is_said_plainly(monkeypatch):
    at = run_app(monkeypatch, f"127.0.0.1:{closed_port()}")
    assert not at.exception
    (message,) = texts(at.error)
    assert "does not answer" in message and "make serve" in message


def test_bad_setting_is_a_message(monkeypatch):
    at = run_app(monkeypatch, f"127.0.0.1:{closed_port()}", WASTE_THRESHOLD="high")
    assert not at.exception and "Bad setting" in at.error[0].value


def test_one_image_shows_label_gauge_chart_and_advice(monkeypatch, dev_server):
    with Classifier(dev_server.http_url, protocol="http", model="dev") as clf:
        expected = clf.classify(BATTERY)
    at = run_app(monkeypatch, dev_server.http_url, WASTE_THRESHOLD="0")
    assert not at.exception and not at.error
    at.file_uploader[0].upload("battery142.jpg", BATTERY.read_bytes(), "image/jpeg").run()
    assert not at.exception
    assert texts(at.success) == [f"Prediction: {expected.label} ({expected.score:.0%})"]
    advice = texts(at.info) + texts(at.error)
    assert any(a.startswith(f"**{expected.label}:") for a in advice)
    assert len(at.get("plotly_chart")) == 2          # gauge + top-5
    captions = [c for img in at.get("image") for c in img.captions]
    assert len(captions) == 2 and "letterboxed" in captions[0]
    assert captions[1].startswith(f"What drove '{expected.label}' (occlusion")
    assert any(f"`dev` version {expected.version}" in c for c in texts(at.caption))


def test_low_score_reads_not_sure(monkeypatch, dev_server):
    # The random-weight dev model never reaches 99%: the answer must be a question.
    at = run_app(monkeypatch, dev_server.http_url, WASTE_THRESHOLD="0.99")
    at.file_uploader[0].upload("b.jpg", BATTERY.read_bytes(), "image/jpeg").run()
    assert not at.success
    assert at.warning[0].value.startswith("Not sure: is it ")


def test_the_slider_starts_at_the_models_own_threshold(monkeypatch, unsure_server, dev_server):
    """A model whose config records a "not sure" threshold starts the slider there; one without
    starts at DEFAULT_THRESHOLD and says so; WASTE_THRESHOLD wins over both."""
    from conftest import DEV_UNSURE_THRESHOLD

    at = run_app(monkeypatch, unsure_server.http_url)
    assert not at.exception
    (slider,) = at.slider
    assert slider.value == pytest.approx(DEV_UNSURE_THRESHOLD) and "own threshold" in slider.help
    at = run_app(monkeypatch, dev_server.http_url)
    (slider,) = at.slider
    assert slider.value == pytest.approx(0.5) and "records no threshold" in slider.help
    at = run_app(monkeypatch, unsure_server.http_url, WASTE_THRESHOLD="0.2")
    (slider,) = at.slider
    assert slider.value == pytest.approx(0.2) and "WASTE_THRESHOLD" in slider.help


def test_tta_switch_asks_the_tta_ensemble(monkeypatch, dev_server):
    with Classifier(dev_server.http_url, protocol="http", model="dev_tta") as clf:
        expected = clf.classify(BATTERY)
    at = run_app(monkeypatch, dev_server.http_url, WASTE_THRESHOLD="0")
    at.toggle(key="tta").set_value(True)
    at.file_uploader[0].upload("b.jpg", BATTERY.read_bytes(), "image/jpeg").run()
    assert not at.exception
    assert texts(at.success) == [f"Prediction: {expected.label} ({expected.score:.0%})"]
    assert any("`dev_tta`" in c for c in texts(at.caption))


def test_several_images_give_a_table_and_csv(monkeypatch, dev_server):
    at = run_app(monkeypatch, dev_server.http_url)
    files = [("battery142.jpg", BATTERY.read_bytes(), "image/jpeg"),
             ("notes.jpg", (REPO_ROOT / "samples" / "bad" / "notes.jpg").read_bytes(), "image/jpeg"),
             *[(p.name, p.read_bytes(), "image/jpeg") for p in sorted(SAMPLES.glob("paper/*.jpg"))[:1]]]
    at.file_uploader[0].set_value(files).run()
    assert not at.exception
    (table,) = [m.value for m in at.markdown if m.value.startswith("<table")]
    rows = table.split("<tr>")[2:]
    assert [r.split("<td>")[2].split("<")[0] for r in rows] == ["battery142.jpg", "notes.jpg", files[2][0]]
    assert rows[0].split("<td>")[3].split("<")[0] in LABELS
    assert '<img src="data:image/png;base64,' in rows[0] and "<img" not in rows[1]
    assert "This file could not be classified" in rows[1]
    assert len(at.get("download_button")) == 1
    assert at.subheader[-1].value == "battery142.jpg"   # details of the first image by default


def test_more_files_than_the_limit_classifies_the_first_and_names_the_rest(monkeypatch, dev_server):
    at = run_app(monkeypatch, dev_server.http_url, WASTE_MAX_FILES="2", WASTE_MAX_UPLOAD_MB="4")
    assert at.file_uploader[0].proto.max_upload_size_mb == 4
    papers = sorted(SAMPLES.glob("paper/*.jpg"))[:2]
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in [BATTERY, *papers]]
    at.file_uploader[0].set_value(files).run()
    assert not at.exception
    (message,) = texts(at.error)
    assert message.startswith("3 images given, but at most 2 are classified per run")
    assert f"1 not classified ({papers[1].name})" in message
    (table,) = [m.value for m in at.markdown if m.value.startswith("<table")]
    assert [r.split("<td>")[2].split("<")[0] for r in table.split("<tr>")[2:]] == [
        BATTERY.name, papers[0].name]


def test_the_app_never_decodes_an_upload_and_never_reads_a_refused_one(monkeypatch, dev_server):
    """Issue 13.6: thumbnails come from the server's letterboxed view; refused files stay unread."""
    import PIL.Image
    from streamlit.runtime.uploaded_file_manager import UploadedFile

    def no_local_decode(*args, **kwargs):
        raise AssertionError("the app decoded an uploaded file itself")

    read = []
    getvalue = UploadedFile.getvalue
    monkeypatch.setattr(PIL.Image, "open", no_local_decode)
    monkeypatch.setattr(UploadedFile, "getvalue", lambda self: read.append(self.name) or getvalue(self))
    at = run_app(monkeypatch, dev_server.http_url, WASTE_MAX_FILES="2")
    papers = sorted(SAMPLES.glob("paper/*.jpg"))[:2]
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in [BATTERY, *papers]]
    at.file_uploader[0].set_value(files).run()
    assert not at.exception, at.exception
    assert set(read) == {BATTERY.name, papers[0].name}  # the third was refused by name, unread
    (table,) = [m.value for m in at.markdown if m.value.startswith("<table")]
    rows = table.split("<tr>")[2:]
    assert all('<img src="data:image/png;base64,' in row for row in rows)
    # The thumbnail is the server's letterboxed image (224x224 with the grey bands), shrunk.
    import base64
    thumb = rows[0].split('data:image/png;base64,')[1].split('"')[0]
    monkeypatch.undo()
    with PIL.Image.open(io.BytesIO(base64.b64decode(thumb))) as img:
        assert img.size == (64, 64)


def test_missing_model_is_said_and_another_used(monkeypatch, dev_server):
    at = run_app(monkeypatch, dev_server.http_url, model="effnet_lite0")
    assert not at.exception
    assert any("`effnet_lite0` is not ready" in w for w in texts(at.warning))
    assert at.selectbox[0].value.name == "dev"
