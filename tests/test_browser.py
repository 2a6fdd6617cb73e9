"""The report and the chat page in a real browser: Debian's chromium + chromium-driver, driven by selenium.

Slow tier. Skipped, with the reason, where chromium or its driver is not installed (`.ci/run` installs
them with apt). Screenshots go to out/browser/ (a CI artifact); docs/report.png is one of them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from helpers import asset
from test_report import make_run
from test_serve import _wait

from lmforge.serve.metrics import parse_metrics

pytestmark = pytest.mark.slow

OUT = Path(__file__).resolve().parents[1] / "out" / "browser"
KEY = "page-test-key"


def wait(cond, timeout: float, what: str):
    """Poll `cond` until it returns something true (returned), at most `timeout` seconds."""
    return _wait(cond, timeout=timeout, what=what)


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    OUT.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def full_page_screenshot(driver, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(height + 100, 8000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
def shown(text: str, value: float | None) -> bool:
    """Whether a cell's text shows `value` (4 significant digits; "—" for none)."""
    if value is None:
        return text == "—"
    return math.isclose(float(text), value, rel_tol=5e-4, abs_tol=1e-12)


@pytest.mark.parametrize("which", ["fixture", "demo"])
def test_report_in_the_browser(browser, tmp_path, which):
    """A run folder made here (a tiny real training run + matplotlib plots), and, when LMFORGE_DEMO_RUN
    names one, the folder a real `lmforge demo` wrote (its screenshot is docs/report.png)."""
    from selenium.webdriver.common.by import By

    if which == "demo":
        if not os.environ.get("LMFORGE_DEMO_RUN"):
            pytest.skip("set LMFORGE_DEMO_RUN to a folder `lmforge demo` wrote (e.g. out/demo) to check its report")
        run = Path(os.environ["LMFORGE_DEMO_RUN"]).resolve()
        subprocess.run([sys.executable, "-m", "lmforge", "report", str(run)], check=True, timeout=120)
        report = json.loads((run / "report.json").read_text())
    else:
        run, report = tmp_path, make_run(tmp_path)
    browser.get((run / "report.html").as_uri())
    wait(lambda: browser.execute_script("return document.readyState") == "complete", 30, "the page to load")
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == sum(len(s.get("plots", [])) for s in report["stages"]) >= 1
    for img in images:  # every plot decoded and drawn
        width = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
        assert width > 0, img.get_attribute("alt")
    sections = browser.find_elements(By.CSS_SELECTOR, "section.stage")
    assert [s.get_attribute("data-stage") for s in sections] == [s["name"] for s in report["stages"]]
    for section, stage in zip(sections, report["stages"]):
        assert section.is_displayed()
        rows = section.find_elements(By.CSS_SELECTOR, "tr.metric")
        assert [r.get_attribute("data-metric") for r in rows] == [m["name"] for m in stage.get("metrics", [])]
        for row, m in zip(rows, stage.get("metrics", [])):
            for side in ("before", "after"):
                text = row.find_element(By.CSS_SELECTOR, f"td.{side}").text
                assert shown(text, m.get(side)), (stage["name"], m["name"], side, text, m.get(side))
        status = section.find_element(By.CSS_SELECTOR, ".status").text
        assert status == stage.get("status", "ok")
    machine = {td.get_attribute("data-key"): td.text for td in browser.find_elements(By.CSS_SELECTOR, "td[data-key]")}
    assert machine == {k: str(v) for k, v in report["machine"].items()}
    # the page loaded nothing from the network: every resource is inline (data:) or the file itself
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith(("data:", "file:")) for u in urls), urls
    full_page_screenshot(browser, OUT / f"report-{which}.png")
    assert (OUT / f"report-{which}.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# the chat page, on `lmforge serve` with SmolLM2 and an API key
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    gguf = asset("smollm2-135m-instruct")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LMFORGE_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(gguf), "--port", str(port), "--device", "cpu",
                             "--max_batch_size", "2", "--log_level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            return requests.get(url + "/health", timeout=2).ok
        except requests.ConnectionError:
            return False

    try:
        wait(up, 240, "lmforge serve to load SmolLM2")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def active_slots(url: str) -> float:
    text = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    return parse_metrics(text)["lmforge_active_slots"]


def open_chat(browser, url: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url + "/")
    # the page asks the server which model it serves; with a key set it learns it needs one
    wait(lambda: browser.find_element(By.ID, "model").text != "connecting…", 30, "the page's first call")


def set_field(browser, field: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.ID, field)
    box.clear()
    box.send_keys(value)


def ask(browser, question: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.find_element(By.ID, "prompt").send_keys(question, Keys.ENTER)


def last(browser, selector: str):
    from selenium.webdriver.common.by import By

    found = browser.find_elements(By.CSS_SELECTOR, selector)
    return found[-1] if found else None


def test_chat_page_key_then_paris(browser, server):
    from selenium.webdriver.common.by import By

    open_chat(browser, server)
    keybox = browser.find_element(By.ID, "keybox")
    assert keybox.is_displayed() and "API key" in keybox.text
    set_field(browser, "temperature", "0")
    set_field(browser, "max_tokens", "48")
    ask(browser, "What is the capital of France?")
    # without the key: the server's 401 message, shown in the conversation
    error = wait(lambda: last(browser, ".msg.error .text"), 60, "the error of a call without the key")
    assert "no API key provided" in error.text
    set_field(browser, "apikey", KEY)
    ask(browser, "What is the capital of France?")  # the same question again, now with the key
    stats = wait(lambda: (s := last(browser, ".msg.assistant .stats")) is not None and s.text and s, 120,
                 "the streamed reply")
    reply = last(browser, ".msg.assistant .text").text
    assert "Paris" in reply, reply
    assert "tokens/s" in stats.text and "stopped" not in stats.text
    assert int(stats.get_attribute("data-tokens")) > 0
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.user")) == 2  # both tries shown
    full_page_screenshot(browser, OUT / "chat.png")


def test_chat_page_stop_frees_the_slot(browser, server):
    from selenium.webdriver.common.by import By

    open_chat(browser, server)
    set_field(browser, "apikey", KEY)
    set_field(browser, "max_tokens", "1500")
    assert active_slots(server) == 0
    ask(browser, "Write a very long story about a dragon who learns to cook, with many chapters.")
    # mid-way: some text streamed, the request holds a slot
    wait(lambda: (t := last(browser, ".msg.assistant .text")) is not None and len(t.text) > 20, 120, "streamed text")
    assert active_slots(server) == 1
    assert browser.find_element(By.ID, "send").get_attribute("disabled") is not None
    browser.find_element(By.ID, "stop").click()
    # aborting the fetch closes the connection: the server cancels the request and frees its slot
    wait(lambda: active_slots(server) == 0, 30, "the server to free the slot")
    stats = wait(lambda: (s := last(browser, ".msg.assistant .stats")).text and s, 10, "the stopped reply's stats")
    assert "stopped" in stats.text and int(stats.get_attribute("data-tokens")) < 1500
    # regenerate: the same conversation streams a new reply
    set_field(browser, "max_tokens", "8")
    browser.find_element(By.ID, "regenerate").click()
    wait(lambda: "stopped" not in (s := last(browser, ".msg.assistant .stats")).text and s.text, 60,
         "the regenerated reply")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 1
    wait(lambda: active_slots(server) == 0, 30, "the slot of the regenerated reply")
