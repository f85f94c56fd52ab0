"""How quickly the trained network answers a person: the drawing page's round trip and predict.py.

    python benchmarks/serve_latency.py [--ckpt-path best.ckpt] [--requests 200]

Starts `python src/serve.py` on a free loopback port (by default on the newest finished
training's best checkpoint, as the page does), then times `--requests` round trips of
`POST /predict` with a drawing as the page sends it (a 280x280 PNG, white strokes on a
transparent canvas) over one kept-alive connection, as the browser's fetch does; then the
wall time of `python src/predict.py image=<that drawing>` from command to printed answer. Prints
p50/p95 and exits 1 if a target is missed: round trip p50 <= 50 ms, predict.py <= 3 s (median).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
ROUND_TRIP_P50_MS, PREDICT_S = 50, 3.0


def drawing() -> bytes:
    """A '4' as a person draws it on the page: two white strokes on a transparent canvas."""
    image = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)
    pen.line([(170, 40), (60, 180), (210, 180)], fill="white", width=20, joint="curve")
    pen.line([(170, 90), (170, 250)], fill="white", width=20)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def round_trips(url: str, png: bytes, count: int) -> list[float]:
    """Milliseconds of each of `count` POST /predict requests, after a few warm-up ones."""
    host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    times = []
    for index in range(count + 5):
        start = time.perf_counter()
        connection.request("POST", "/predict", png, {"Content-Type": "image/png"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        elapsed = (time.perf_counter() - start) * 1000
        assert response.status == 200, answer
        if index >= 5:
            times.append(elapsed)
    connection.close()
    return times


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-path", help="default: the newest finished training's best.ckpt")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--predict-runs", type=int, default=3)
    args = parser.parse_args()
    model = [f"ckpt_path={Path(args.ckpt_path).resolve()}"] if args.ckpt_path else []
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs (a busy CPU slows all of this)")

    server = subprocess.Popen(
        [sys.executable, "src/serve.py", "port=0", *model],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in server.stdout:
            lines.append(line)
            if match := re.search(r"http://\S+/", line):
                url = match.group(0)
                break
        else:
            print("".join(lines), file=sys.stderr)
            return 1
        print(lines[0].strip())
        times = round_trips(url, drawing(), args.requests)
    finally:
        server.terminate()
        server.wait()
    p50, p95 = statistics.median(times), percentile(times, 95)

    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "drawing.png"
        image.write_bytes(drawing())
        walls = []
        for _ in range(args.predict_runs):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "src/predict.py", f"image={image}", *model],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
            walls.append(time.perf_counter() - start)
    predict = statistics.median(walls)

    trips = f"POST /predict round trip, {len(times)} requests"
    results = [
        (f"{trips}, p50", f"{p50:.1f} ms", p50 <= ROUND_TRIP_P50_MS, f"<= {ROUND_TRIP_P50_MS} ms"),
        (f"{trips}, p95", f"{p95:.1f} ms", True, "none, reported"),
        (f"predict.py, one image, median of {len(walls)}", f"{predict:.2f} s",
         predict <= PREDICT_S, f"<= {PREDICT_S:g} s"),
    ]  # fmt: skip
    for name, value, ok, target in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value} (target {target})")
    return 0 if all(ok for _, _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
