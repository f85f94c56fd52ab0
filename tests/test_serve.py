"""`python src/serve.py` as a user starts it, and the page in a real headless Chromium: draw a
stroke with pointer events, read the bars, compare with the API, clear."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import warm
from conftest import REPO

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


class Served:
    """A running `src/serve.py` (its URL, its output so far)."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.process = warm.Popen(
            [sys.executable, "src/serve.py", "port=0", f"ckpt_path={checkpoint}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        found = threading.Event()

        def read() -> None:  # a thread: readline would block the test past any deadline
            for line in self.process.stdout:
                self.lines.append(line)
                if "http://" in line:
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60):
            self.stop()
            raise AssertionError(f"serve.py printed no URL:\n{''.join(self.lines)}")
        self.url = re.search(r"http://\S+/", "".join(self.lines)).group(0)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def trained(train_tiny, tmp_path: Path) -> Path:
    """best.ckpt of a short training on the tiny data set (its test accuracy beside it)."""
    train_tiny("trainer.max_epochs=2", "report=false", "logger=none")
    return tmp_path / "run" / "checkpoints" / "best.ckpt"


@pytest.fixture
def served(trained: Path) -> Iterator[Served]:
    server = Served(trained)
    yield server
    server.stop()


def test_serve_prints_its_loopback_url_and_refuses_a_port_in_use(served: Served) -> None:
    assert served.url.startswith("http://127.0.0.1:")
    assert served.lines[0].startswith("serving MLP, 101,770 parameters; test accuracy ")
    port = int(served.url.rsplit(":", 1)[1].strip("/"))
    # The config's default host is loopback: nothing else is bound.
    listening = [
        c.laddr.ip
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert listening == ["127.0.0.1"]
    result = warm.run(
        [sys.executable, "src/serve.py", f"port={port}", f"ckpt_path={served.checkpoint}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot listen on host=127.0.0.1 port={port}: Address already in use"
    ]


@pytest.fixture
def browser() -> Iterator:
    """Headless Chromium (Debian's chromium and chromium-driver), driven by Selenium."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.skip(f"{path} missing: apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1240,900")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_drawing_in_a_real_browser(served: Served, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def state() -> dict:
        return browser.execute_script(
            "const values = [...document.querySelectorAll('.bar .value')];"
            "return {state: document.body.dataset.state, busy: document.body.dataset.busy,"
            " guess: document.getElementById('guess').textContent,"
            " values: values.map(v => v.textContent),"
            " widths: [...document.querySelectorAll('.bar .fill')].map(f => f.style.width),"
            " cells: document.querySelectorAll('#grid div').length,"
            " strongest: document.querySelectorAll('#strongest canvas').length,"
            " model: document.getElementById('model').textContent};"
        )

    browser.get(served.url)
    wait = WebDriverWait(browser, 20)
    wait.until(lambda _: "MLP" in state()["model"] and state()["cells"])
    assert state()["state"] == "empty" and state()["guess"] == "–"

    # A "7", with the mouse: WebDriver's actions reach the page as pointer events.
    pad = browser.find_element(By.ID, "pad")
    stroke = ActionChains(browser).move_to_element_with_offset(pad, -70, -80).click_and_hold()
    for dx, dy in [(70, 0), (70, 0), (-40, 80), (-40, 80)]:
        stroke.move_by_offset(dx, dy)
    stroke.release().perform()
    wait.until(lambda _: state()["state"] == "answered" and state()["busy"] == "0")
    shown = state()
    browser.save_screenshot(str(tmp_path / "drawn.png"))
    assert (tmp_path / "drawn.png").read_bytes()[:4] == b"\x89PNG"

    values = [float(value) for value in shown["values"]]
    assert len(values) == 10 and sum(values) == pytest.approx(1, abs=0.006)  # 10 x rounding
    assert all(width.endswith("%") for width in shown["widths"])
    assert max(float(width[:-1]) for width in shown["widths"]) > 0
    assert shown["cells"] == 128 and 1 <= shown["strongest"] <= 8

    # The API's answer for the very same drawing (the canvas's PNG) is what the page shows.
    png = base64.b64decode(
        browser.execute_script(
            "return document.getElementById('pad').toDataURL('image/png')"
        ).split(",", 1)[1]
    )
    request = urllib.request.Request(served.url + "predict", data=png, method="POST")
    request.add_header("Content-Type", "image/png")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert shown["guess"] == str(answer["guess"])
    assert values == [round(p, 3) for p in answer["probabilities"]]

    browser.find_element(By.ID, "clear").click()
    cleared = state()
    assert cleared["state"] == "empty" and cleared["guess"] == "–"
    assert cleared["values"] == [""] * 10 and cleared["widths"] == ["0px"] * 10
    ink = browser.execute_script(
        "const pad = document.getElementById('pad');"
        "return pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data"
        ".reduce((sum, value) => sum + value, 0);"
    )
    assert ink == 0
    time.sleep(0.3)  # an answer still on its way for the old drawing must not come back
    assert state()["state"] == "empty"
