"""The README's picture of a sweep's parent run in `mlflow ui`, taken by headless Chromium.

    python docs/sweep_screenshot.py --store sqlite:///mlflow.db --out docs/mlflow-sweep-parent.png

Starts `mlflow ui` on the store, opens the newest sweep parent run (a run tagged
`sweep.best_run_id`) and saves its page as a palette PNG. Needs Debian's `chromium` and
`chromium-driver` and `pip install selenium` (neither is a dependency of the project).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="tracking URI of the sweep's store")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--tab", default="", help="run page tab: '' (overview) or 'artifacts'")
    parser.add_argument("--size", default="1400,1350", help="window width,height in pixels")
    args = parser.parse_args()

    client = MlflowClient(args.store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(
        experiments, "tags.`sweep.best_run_id` != ''", order_by=["start_time DESC"], max_results=1
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.store]
        + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={args.size}")
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit("error: mlflow ui did not start")
                time.sleep(0.5)
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        page = f"{base}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
        # MLflow 3.17's UI takes the experiment's kind from this toggle (default GenAI).
        browser.get(f"{page}/{args.tab}?workflowType=machine_learning")
        deadline = time.monotonic() + 120
        while "Best run:" not in browser.page_source:  # rendered after its API calls
            if time.monotonic() > deadline:
                sys.exit("error: the run page did not render")
            time.sleep(1)
        for close in browser.find_elements(By.CSS_SELECTOR, 'button[aria-label="Close"]'):
            close.click()  # the MLflow Assistant panel, open on a first visit
        for more in browser.find_elements(By.XPATH, '//*[text()="Show more"]'):
            more.click()  # the whole description
        time.sleep(3)
        browser.save_screenshot(str(args.out))
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    # A palette keeps the PNG of a flat web page small (< 300 KB) with no visible loss.
    Image.open(args.out).convert("RGB").quantize(colors=128).save(args.out, optimize=True)
    print(f"{args.out}: {parent.info.run_name} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
