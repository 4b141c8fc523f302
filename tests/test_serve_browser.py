"""The chat page of ``hwlm serve`` and the HTML report, in a real headless browser.

Debian's ``chromium`` and ``chromium-driver`` driven by selenium with the driver's path given, so
nothing is downloaded (``SE_OFFLINE``); ``--no-sandbox`` because CI runs as root. Without them the
tests skip with one line saying what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="pip install 'hwlm[serve]'")
pytest.importorskip("selenium", reason="pip install selenium")

from serve_helpers import Server  # noqa: E402

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture()
def browser(tmp_path: Path):
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")) or not Path(DRIVER).exists():
        pytest.skip("browser tests need chromium and its driver: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium manager must not fetch a browser or driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-extensions", "--disable-sync", "--no-first-run",
                "--disable-component-update", "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture()
def server(serve_server: Server) -> Server:
    return serve_server  # conftest.py: one server for the API, load and browser tests


def _wait(what, limit: float = 60.0):
    start = time.monotonic()
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() - start < limit, "the page did not get there in time"
        time.sleep(0.1)


def _answers(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-state=done] .text")


def _say(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "prompt")
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()


@pytest.mark.slow
def test_chat_page_streams_an_answer_and_keeps_the_conversation(browser, server: Server) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    assert browser.title == "hwlm chat"
    browser.find_element(By.ID, "key").send_keys(server.key)
    _say(browser, "The cat")
    first = _wait(lambda: _answers(browser))
    assert first[0].text.strip(), "the streamed answer is empty"
    stats = browser.find_element(By.ID, "stats").text
    assert "TTFT:" in stats and "- ms" not in stats  # a measured time to first token is shown
    _say(browser, "And the dog")
    _wait(lambda: len(_answers(browser)) == 2)
    users = browser.find_elements(By.CSS_SELECTOR, ".msg.user .text")
    assert [u.text for u in users] == ["The cat", "And the dog"]
    # The second turn carried the first: its prompt is longer (read from the audit log).
    time.sleep(0.3)
    chats = [json.loads(line) for line in (server.folder / "audit.jsonl").read_text().splitlines()]
    chats = [r for r in chats if r["route"] == "/v1/chat/completions" and r["status"] == 200]
    assert len(chats) >= 2 and chats[-1]["prompt_tokens"] > chats[-2]["prompt_tokens"]  # the last two: this page's
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@pytest.mark.slow
def test_chat_page_shows_an_error_for_a_wrong_key(browser, server: Server) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    browser.find_element(By.ID, "key").send_keys("hwlm-000000000000-" + "x" * 43)
    _say(browser, "hello")
    error = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".msg.error .text"))
    assert "API key" in error[0].text


@pytest.mark.slow
def test_html_report_renders_in_a_browser(browser, serve_run: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from hwlm.report import report
    from hwlm.report.config import ReportConfig

    page = report(ReportConfig(runs=[serve_run], out=tmp_path / "report.html", title="browser check"))
    browser.get(page.resolve().as_uri())
    assert browser.find_element(By.TAG_NAME, "h1").text == "browser check"
    assert len(browser.find_elements(By.CSS_SELECTOR, "section h2")) >= 1
    charts = browser.find_elements(By.CSS_SELECTOR, "figure svg")
    assert charts and all(c.size["width"] > 0 and c.size["height"] > 0 for c in charts)  # drawn, not empty
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
