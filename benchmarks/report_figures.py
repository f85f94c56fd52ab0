"""CPU seconds of each figure of a report, on a trained network and the real test set.

    python benchmarks/report_figures.py --ckpt-path checkpoints/best.ckpt [--data data/mnist]
        [--rounds 5] [--out DIR]

Runs `write_report` (what every `python src/train.py` and the DVC evaluate stage end with)
`--rounds` times in one warm process, each figure function timed by the process CPU time it
takes; prints the minimum per figure and of the whole report. `--out` keeps the last round's
report (to look at the PNGs); otherwise it is written to a temporary directory. Other work on the
CPUs adds to the times: compare runs taken under the same load.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from mnist_pipeline.checkpoint_files import load_network
from mnist_pipeline.data.idx import load_images_and_labels
from mnist_pipeline.reporting import evaluation, figures

REPORT_FIGURES = (
    "confusion_matrix_figure",
    "misclassified_figure",
    "first_layer_weights_figure",
    "digit_walkthrough_figure",
    "training_curves_figure",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-path", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("data/mnist"))
    parser.add_argument("--curve", type=Path, default=Path("reports/training_curve.csv"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    net, _ = load_network(args.ckpt_path)
    images, labels = load_images_and_labels(
        args.data / "t10k-images-idx3-ubyte.gz", args.data / "t10k-labels-idx1-ubyte.gz"
    )
    seconds: dict[str, list[float]] = defaultdict(list)

    def timed(name: str, draw):
        @functools.wraps(draw)
        def wrapper(*a, **kw):
            start = time.process_time()
            draw(*a, **kw)
            seconds[name].append(time.process_time() - start)

        return wrapper

    for name in REPORT_FIGURES:
        setattr(figures, name, timed(name, getattr(figures, name)))
    with tempfile.TemporaryDirectory() as scratch:
        reports = args.out or Path(scratch)
        (reports / "figures").mkdir(parents=True, exist_ok=True)
        if args.curve.exists():
            (reports / "training_curve.csv").write_bytes(args.curve.read_bytes())
        for _ in range(args.rounds):
            start = time.process_time()
            evaluation.write_report(net, images, labels, reports)
            seconds["write_report (all)"].append(time.process_time() - start)
        sizes = {p.name: p.stat().st_size for p in (reports / "figures").glob("*.png")}

    print(f"CPU seconds, min (max) of {args.rounds} rounds")
    for name, times in seconds.items():
        print(f"  {name:28s} {min(times):6.3f} ({max(times):6.3f})")
    for name, size in sorted(sizes.items()):
        print(f"  {name:28s} {size / 1024:6.0f} KiB")


if __name__ == "__main__":
    main()
