"""End to end: a real headless Chromium uploads a sample photo to the running app, which asks a running
Triton server; the page must name the label the client library gets for the same image.

The server is `prod_server` (trained `effnet_lite0`) once the model is exported, else `dev_server`
with the random-weight `dev` model: there "the right label" is whatever the server answers through
`waste_client`, which still proves upload -> server -> page shows that answer. A screenshot is saved to
`artifacts/app_browser.png` (git-ignored; CI keeps it as an artifact).

Needs Debian's `chromium` + `chromium-driver` (`scripts/install_test_deps.sh`) and `selenium`. Without
them the test is skipped, unless WASTE_REQUIRE_BROWSER=1 (CI), where it fails.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from app.run import streamlit_command
from server.launch import free_port
from waste_client import Classifier

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "artifacts"
SAMPLE = REPO_ROOT / "samples" / "garbage12" / "battery" / "battery142.jpg"
PROD_MODEL = REPO_ROOT / "model_repository" / "effnet_lite0_classifier" / "1" / "model.onnx"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: Flags that work in a container without a GPU, a sandbox or a network (see the brief).
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,2000")


def _missing_browser() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed in the venv"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} missing: run scripts/install_test_deps.sh"
    return ""


@pytest.fixture(scope="module")
def browser():
    reason = _missing_browser()
    if reason:
        if os.environ.get("WASTE_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    # An explicit driver path: Selenium Manager must not try to download a driver or a browser.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def served(request):
    """(server, model name): the trained model when exported, else the dev model."""
    if PROD_MODEL.is_file():
        return request.getfixturevalue("prod_server"), "effnet_lite0"
    return request.getfixturevalue("dev_server"), "dev"


@pytest.fixture(scope="module")
def app_url(served, tmp_path_factory):
    server, model = served
    port = free_port()
    log_path = tmp_path_factory.mktemp("app") / "streamlit.log"
    env = {**os.environ, "WASTE_THRESHOLD": "0.5"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            streamlit_command(server.http_url, model, port=port, python=sys.executable),
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_upload_shows_the_servers_label(browser, served, app_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    server, model = served
    with Classifier(server.http_url, protocol="http", model=model) as clf:
        expected = clf.classify(SAMPLE).label

    browser.get(app_url)
    upload = WebDriverWait(browser, 60).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    upload.send_keys(str(SAMPLE))
    # The answer is the headline alert; the top-5 chart names other labels too, so the sentence
    # around the label is what is matched.
    headline = re.compile(rf"(Prediction: {re.escape(expected)} \(|Not sure: is it {re.escape(expected)} or)")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "app_browser.png"
    try:
        WebDriverWait(browser, 90).until(
            lambda d: headline.search(d.find_element(By.TAG_NAME, "body").text))
        # Let the heatmap and the charts finish drawing before the screenshot.
        WebDriverWait(browser, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid=stPlotlyChart]")
            and not d.find_elements(By.CSS_SELECTOR, "[data-testid=stStatusWidget]"))
        time.sleep(1.0)
    finally:
        browser.save_screenshot(str(shot))
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in text
    found = headline.search(text).group(0)
    assert expected in found
    # The page names the server's label for this image and nothing else as its answer.
    for other in re.findall(r"Prediction: ([\w-]+) \(|Not sure: is it ([\w-]+) or", text):
        assert expected in other
    assert shot.stat().st_size > 10_000
