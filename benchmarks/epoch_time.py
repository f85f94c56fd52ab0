"""Seconds per training epoch: plain PyTorch vs the pipeline, in one process and end to end.

Measures, in interleaved rounds (a, b, l, m, c, a, b, ...):
  the training loop alone, in this process (median per variant):
  (a) a plain PyTorch loop over in-memory tensors: the practical limit;
  (b) the training part of an epoch of the pipeline as `mnist_pipeline.stages.train.train` runs
      it (Lightning's loop, MLflow logger on a temporary sqlite store, checkpoints, progress bar);
  (c) a typical per-sample `Dataset` + `DataLoader(shuffle=True, num_workers=0)` feeding (a)'s loop;
  (l) a bare `LightningModule` (the same network, `F.cross_entropy`, Adam) on the data module's
      batches in a `pl.Trainer` with no callback, logger or progress bar: Lightning's own floor;
  (m) the pipeline's `LightningModule` (`Classifier`: its train loss and accuracy metrics) in
      (l)'s bare Trainer: (l) to (m) is what the module adds, (m) to (b) the callbacks, loggers
      and progress bar;
  whole epochs as a user waits for them, (T(8 epochs) - T(1 epoch)) / 7 of a command (minimum
  over the rounds): everything an epoch costs, validation, checkpoints and logging included:
  (d) `python src/train.py` (MLflow on a temporary sqlite store) against
  (e) `python benchmarks/plain_loop.py`, the plain loop with a validation pass per epoch;
then the time from command start to the first training step of `python src/train.py` and that
process's peak RSS. Prints tables and one PASS/FAIL line per target.

    python benchmarks/epoch_time.py --data /path/to/mnist --batch-sizes 32 128 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import mlflow
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.config import build_datamodule, validate
from mnist_pipeline.data.download import MIRROR_ENV, fetch, sha256_of
from mnist_pipeline.parts import build_classifier
from mnist_pipeline.stages.train import train

Batch = tuple[torch.Tensor, torch.Tensor]
# (b)/(a) upper bounds per batch size, (d)/(e) upper bound; start-up and memory bounds.
RATIO_TARGETS = {128: 1.5, 32: 1.8}
WHOLE_EPOCH_TARGET = 1.6
WHOLE_EPOCHS = (1, 8)
FIRST_STEP_TARGET_S = 6.0
PEAK_RSS_TARGET_MB = 1000.0
# Output of `python src/train.py` that marks each start-up milestone. The training
# progress bar is renamed "Epoch 0" in on_train_epoch_start, right before the first batch.
MILESTONES = {
    "first log line (imports, config, model built)": "model: MLP",
    "first training step (epoch-0 progress bar)": "Epoch 0:",
    "MLflow run created (in a background thread)": "MLflow run ",
    "fit and test done (test accuracy logged)": "test accuracy",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        help="directory or mirror (file:// or http(s):// URL) holding the MNIST files; default: "
        f"the repository's data/mnist if verified files are there, else ${MIRROR_ENV}",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
    parser.add_argument(
        "--threads",
        type=int,
        help="intra-op threads of torch here and in the timed commands (OMP_NUM_THREADS); "
        "default: torch's (one per CPU). On a CPU busy with other work, 1 keeps the threads "
        "from waiting on each other",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["loop", "whole", "startup"],
        default=["loop", "whole", "startup"],
        help="what to measure: the training loop in this process, whole epochs of the "
        "commands, the start-up",
    )
    args = parser.parse_args()
    if args.rounds < 1 or min(args.batch_sizes) < 1:
        parser.error("--rounds and --batch-sizes must be positive")
    if args.data is None:
        args.data = _default_data()
        if args.data is None:
            parser.error(f"no verified files in data/mnist and ${MIRROR_ENV} unset: pass --data")
    return args


def _default_data() -> str | None:
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        files = compose("config").data.files
    repo_data = PROJECT_ROOT / "data" / "mnist"
    return str(repo_data) if _verified(repo_data, files) else os.environ.get(MIRROR_ENV)


def _verified(directory: Path, files: Mapping[str, str]) -> bool:
    return all(
        (directory / name).is_file() and sha256_of(directory / name) == sha256
        for name, sha256 in files.items()
    )


def _quote(value: object) -> str:
    """`value` as a quoted Hydra override value (paths may hold characters Hydra parses)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def data_dir(source: str, files: Mapping[str, str], workdir: Path) -> Path:
    """`source` itself if it holds the verified files, else a copy fetched into `workdir`."""
    if Path(source).is_dir() and _verified(Path(source), files):
        return Path(source).resolve()
    fetched = workdir / "mnist"
    fetch(fetched, files, [source])
    return fetched


def pipeline_config(overrides: list[str]) -> DictConfig:
    """The pipeline's config composed from conf/ with `overrides`, validated."""
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return validate(compose("config", overrides=overrides))


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Batch]
) -> None:
    """One epoch of the plain loop: forward, cross-entropy, backward, Adam step."""
    model.train()
    for images, labels in batches:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def sliced_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterator[Batch]:
    """(a)'s batches: a fresh permutation, one gather, slices; pixels to float/255 per batch."""
    order = torch.randperm(len(labels))
    images, labels = images.index_select(0, order), labels[order]  # as the data module does
    for start in range(0, len(labels), batch_size):
        end = start + batch_size
        yield images[start:end].float().div_(255.0), labels[start:end]


class PerSample(Dataset):
    """(c)'s data set: one (float image / 255, label) pair per `__getitem__`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Batch:
        return self.images[index].float() / 255.0, self.labels[index]


class PlainLoop:
    """The configured network and Adam, trained one timed epoch at a time on given batches."""

    def __init__(self, batches: Callable[[], Iterable[Batch]], cfg: DictConfig) -> None:
        self.batches = batches
        self.model = instantiate(cfg.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optimizer.lr)

    def epoch(self) -> tuple[float, float]:
        start = _now()
        train_epoch(self.model, self.optimizer, self.batches())
        return _since(start)


class SpeedProbe:
    """A fixed piece of work (100 steps of the plain loop on one batch of 32), timed
    right before each measured epoch: how fast the machine is at that moment. On a shared
    virtual machine it drifts by tens of percent within seconds; dividing each epoch by the
    probe before it shows how much of a ratio is that drift."""

    def __init__(self, cfg: DictConfig, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.loop = PlainLoop(lambda: [(images[:32].float() / 255.0, labels[:32])] * 100, cfg)

    def __call__(self) -> tuple[float, float]:
        return self.loop.epoch()


class EpochTimer(pl.Callback):
    """Times the last epoch (on_train_epoch_start to on_train_end) and its validation pass.

    Added to the pipeline's callbacks the way a user adds one, by a config entry; the newest
    instance is `EpochTimer.latest`.
    """

    latest: EpochTimer | None = None

    def __init__(self) -> None:
        self.epoch_start = self.val_start = (0.0, 0.0)
        self.epoch = self.val = (math.nan, math.nan)
        EpochTimer.latest = self

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_start = _now()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.val_start = _now()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val = _since(self.val_start)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch = _since(self.epoch_start)


def _now() -> tuple[float, float]:
    """(wall, CPU time of this process) in seconds."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _now()
    return now[0] - start[0], now[1] - start[1]


class BareModule(pl.LightningModule):
    """(l)'s module: the configured network, cross-entropy and Adam; nothing logged."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.net, self.lr = instantiate(cfg.model), cfg.optimizer.lr

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.net(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def bare_epoch(cfg: DictConfig, module: pl.LightningModule) -> tuple[float, float]:
    """(l), (m): the second epoch of `module` on the pipeline's data module in a Trainer without
    callbacks, logger or progress bar; (wall, CPU) seconds."""
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        max_epochs=2,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=build_datamodule(cfg.data))
    return timer.epoch


def pipeline_epoch(cfg: DictConfig) -> tuple[tuple[float, float], tuple[float, float]]:
    """(b): `train(cfg)`; (train part, validation pass) of its last epoch, (wall, CPU) seconds.

    `cfg` has an `EpochTimer` among its callbacks. Progress bars go to stderr (Lightning writes
    them to stdout).
    """
    with contextlib.redirect_stdout(sys.stderr):
        train(cfg)
    timer = EpochTimer.latest
    if timer is None or math.isnan(timer.epoch[0]) or math.isnan(timer.val[0]):
        raise RuntimeError("no epoch timed: is callbacks.epoch_timer in the config?")
    train_part = (timer.epoch[0] - timer.val[0], timer.epoch[1] - timer.val[1])
    return train_part, timer.val


def measure_epochs(
    data: Path, batch_sizes: list[int], rounds: int, workdir: Path
) -> tuple[dict[tuple[str, int], list[float]], int]:
    """Seconds per epoch of each variant and batch size, one per round; training set size."""
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    overrides = {
        size: [
            f"data.dir={_quote(data)}",
            "data.local_mirror=null",
            f"data.batch_size={size}",
            "trainer.max_epochs=2",  # a warm-up epoch, then the timed one
            f"logger.mlflow.tracking_uri={_quote(store)}",
            # After fit: test only; the report and the logged model are not timed, so skipped.
            "report=false",
            "logger.mlflow.log_model=false",
            "+callbacks.epoch_timer={_target_:__main__.EpochTimer}",
        ]
        for size in batch_sizes
    }
    configs = {size: pipeline_config(overrides[size]) for size in batch_sizes}
    datamodule = build_datamodule(configs[batch_sizes[0]].data)
    datamodule.setup("fit")
    images, labels = datamodule.train
    plain: dict[tuple[str, int], PlainLoop] = {}
    for size in batch_sizes:
        cfg = configs[size]
        plain["a", size] = PlainLoop(lambda s=size: sliced_batches(images, labels, s), cfg)
        plain["c", size] = PlainLoop(
            lambda s=size: DataLoader(PerSample(images, labels), s, shuffle=True), cfg
        )
    probe = SpeedProbe(configs[batch_sizes[0]], images, labels)
    for loop in (*plain.values(), probe.loop):
        loop.epoch()  # warm-up

    # Wall seconds under (variant, size), CPU seconds under ("cpu " + variant, size).
    times: dict[tuple[str, int], list[float]] = {}

    def record(variant: str, size: int, seconds: tuple[float, float]) -> None:
        times.setdefault((variant, size), []).append(seconds[0])
        times.setdefault((f"cpu {variant}", size), []).append(seconds[1])

    for round_ in range(1, rounds + 1):
        for size in batch_sizes:
            for variant in "ablmc":
                gc.collect()
                record(f"probe {variant}", size, probe())
                if variant in "lm":
                    cfg = configs[size]
                    module = (
                        BareModule(cfg)
                        if variant == "l"
                        else build_classifier(cfg, instantiate(cfg.model))
                    )
                    with contextlib.redirect_stdout(sys.stderr):
                        record(variant, size, bare_epoch(cfg, module))
                elif variant == "b":
                    out = workdir / f"run-{round_}-{size}"
                    cfg = pipeline_config([*overrides[size], f"paths.output_dir={_quote(out)}"])
                    train_part, val = pipeline_epoch(cfg)
                    record("b", size, train_part)
                    record("val", size, val)
                else:
                    record(variant, size, plain[variant, size].epoch())
                print(
                    f"round {round_}/{rounds} batch {size} ({variant}): "
                    f"{times[variant, size][-1]:.3f} s, "
                    f"CPU {times['cpu ' + variant, size][-1]:.3f} s",
                    file=sys.stderr,
                    flush=True,
                )
    return times, len(labels)


def _timed(command: list[str], env: Mapping[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of `command`, run from the repository root; its output on failure."""
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start, _children_cpu() - cpu
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return seconds


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_whole_epochs(data: Path, rounds: int, workdir: Path) -> dict[str, list[float]]:
    """(d), (e): seconds per epoch as (T(8 epochs) - T(1 epoch)) / 7 of each command, per round.

    Start-up, data loading, the test and the report cost the same in both runs of a command and
    cancel out; what remains is what one more epoch costs, epoch ends included.
    """
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'whole' / 'mlflow.db'}",
        "GIT_OPTIONAL_LOCKS": "0",
    }
    (workdir / "whole").mkdir()

    def command(variant: str, epochs: int, run: str) -> list[str]:
        if variant == "plain":
            return [
                sys.executable,
                "benchmarks/plain_loop.py",
                f"--data={data}",
                f"--epochs={epochs}",
            ]
        return [
            sys.executable,
            "src/train.py",
            f"trainer.max_epochs={epochs}",
            f"data.dir={_quote(data)}",
            "data.local_mirror=null",
            f"hydra.run.dir={_quote(workdir / 'whole' / run)}",
        ]

    # Wall seconds per epoch under the variant, CPU seconds under "cpu " + variant.
    per_epoch: dict[str, list[float]] = {}
    low, high = WHOLE_EPOCHS
    for round_ in range(1, rounds + 1):
        for variant in ("pipeline", "plain"):
            short, long = (
                _timed(command(variant, epochs, f"{variant}-{round_}-{epochs}"), env)
                for epochs in (low, high)
            )
            for clock, name in enumerate((variant, f"cpu {variant}")):
                per_epoch.setdefault(name, []).append((long[clock] - short[clock]) / (high - low))
            print(
                f"round {round_}/{rounds} whole epochs, {variant}: {short[0]:.2f} s for {low}, "
                f"{long[0]:.2f} s for {high}: {per_epoch[variant][-1]:.3f} s per epoch "
                f"(CPU {per_epoch['cpu ' + variant][-1]:.3f} s)",
                file=sys.stderr,
                flush=True,
            )
    return per_epoch


def measure_startup(data: Path, workdir: Path, store: str) -> tuple[dict[str, float], float, int]:
    """(d), (e): `python src/train.py trainer.max_epochs=1`: milestones, peak RSS, exit code.

    Returns {milestone: seconds since the command started}, the peak RSS in MB, the exit code.
    Milestones are detected from the process's output as it arrives (see MILESTONES).
    """
    command = [
        sys.executable,
        "src/train.py",
        "trainer.max_epochs=1",
        f"data.dir={_quote(data)}",
        f"hydra.run.dir={_quote(workdir)}",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONUNBUFFERED": "1"}
    seen: dict[str, float] = {}
    output = b""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    while chunk := os.read(process.stdout.fileno(), 1 << 16):
        now = time.perf_counter() - start
        output += chunk
        for name, marker in MILESTONES.items():
            if name not in seen and marker.encode() in output:
                seen[name] = now
    _, status, usage = os.wait4(process.pid, 0)
    seen["exit (total wall time)"] = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    if process.returncode != 0:
        tail = output.decode(errors="replace")[-3000:]
        print(f"train.py exited with {process.returncode}:\n{tail}", file=sys.stderr)
    return seen, usage.ru_maxrss / 1000.0, process.returncode  # ru_maxrss is in KiB


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):7.3f} ({min(values):.3f}-{max(values):.3f})"


def _ratios(times: dict[tuple[str, int], list[float]], num: str, den: str, size: int) -> float:
    """Median over rounds of the per-round ratio: both were timed in the same round."""
    return statistics.median(n / d for n, d in zip(times[num, size], times[den, size], strict=True))


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report_loop(
    times: dict[tuple[str, int], list[float]], batch_sizes: list[int], images: int, rounds: int
) -> bool:
    """The in-process table and its targets; True if they passed."""
    print(
        f"\nThe training loop: seconds per epoch over {images:,} training images; median of "
        f"{rounds} interleaved rounds (min-max)\n"
        "(a) plain loop: in-memory tensors, permutation per epoch, slices, float/255 per batch\n"
        "(b) pipeline: stages.train.train (its pl.Trainer, Lightning's loop), MLflow logger\n"
        "    (temp sqlite), checkpoints, progress bar, train loss logged. Timed: the 2nd epoch's\n"
        "    training part, on_train_epoch_start -> on_train_end minus its validation pass\n"
        "    (shown apart); it includes checkpoint saving, epoch-end metric logging (MLflow\n"
        "    writes) and the LR scheduler step\n"
        "(c) per-sample Dataset + DataLoader(shuffle=True, num_workers=0), (a)'s loop\n"
        "(l) bare LightningModule on the data module's batches, Trainer without callbacks,\n"
        "    logger or bar: what Lightning's loop costs by itself\n"
        "(m) the pipeline's LightningModule (its train metrics) in (l)'s bare Trainer\n"
        "ratios: median of the per-round ratios\n"
    )
    columns = ("a", "b", "val", "l", "m", "c")
    pairs = (("b", "a"), ("l", "a"), ("m", "a"), ("c", "b"))
    header = (
        "(a) plain",
        "(b) pipeline",
        "(b) val pass",
        "(l) bare Lightning",
        "(m) its module",
        "(c) per-sample",
    )
    print(
        f"{'batch':>5}  "
        + "".join(f"{h:<22}" for h in header)
        + "".join(f"{f'{n}/{d}':>7}" for n, d in pairs)
    )
    for clock in ("", "cpu "):
        if clock:
            print("CPU time of this process (one thread: contention-proof), same epochs:")
        for size in batch_sizes:
            cells = [_stats(times[clock + key, size]) for key in columns]
            ratios = [_ratios(times, clock + n, clock + d, size) for n, d in pairs]
            print(
                f"{size:>5}  "
                + "".join(f"{cell:<22}" for cell in cells)
                + "".join(f"{ratio:>6.2f} " for ratio in ratios)
            )
    print(
        "\nThe machine's speed over the same rounds: a fixed probe (100 plain steps at batch 32)\n"
        "timed right before each epoch above; ratios with each epoch divided by its probe\n"
        "(the drift taken out; informative: the targets read the plain ratios)"
    )
    for size in batch_sizes:
        probes = [t for v in "ablmc" for t in times[f"probe {v}", size]]
        normalized = {
            v: [t / p for t, p in zip(times[v, size], times[f"probe {v}", size], strict=True)]
            for v in "ablm"
        }
        per_round = {
            f"{n}/{d}": statistics.median(
                x / y for x, y in zip(normalized[n], normalized[d], strict=True)
            )
            for n, d in (("b", "a"), ("l", "a"), ("m", "a"))
        }
        print(
            f"{size:>5}  probe {statistics.median(probes) * 1000:.0f} ms "
            f"({min(probes) * 1000:.0f}-{max(probes) * 1000:.0f}, slowest/fastest "
            f"{max(probes) / min(probes):.2f}); "
            + ", ".join(f"{k} {v:.2f}" for k, v in per_round.items())
        )
    passed = True
    for size, bound in RATIO_TARGETS.items():
        if size not in batch_sizes:
            print(f"TARGET (b)/(a) <= {bound} at batch {size}: not measured")
            continue
        ratio = _ratios(times, "b", "a", size)
        passed &= ratio <= bound
        print(f"TARGET (b)/(a) <= {bound} at batch {size}: {ratio:.2f} {_verdict(ratio <= bound)}")
    return passed


def report_whole(per_epoch: dict[str, list[float]]) -> bool:
    """The end-to-end table and its target; True if it passed."""
    low, high = WHOLE_EPOCHS
    print(
        f"\nWhole epochs: (T({high} epochs) - T({low})) / {high - low} of each command, batch 128, "
        "seconds per epoch; minimum (and all) of the rounds\n"
        "(d) python src/train.py (MLflow on a temporary sqlite store; validation, checkpoints,\n"
        "    curve, progress bar, logging included)\n"
        "(e) python benchmarks/plain_loop.py (the plain loop and a validation pass per epoch)"
    )
    for clock in ("", "cpu "):
        for label, variant in (("(d) pipeline", "pipeline"), ("(e) plain", "plain")):
            values = ", ".join(f"{v:.3f}" for v in per_epoch[clock + variant])
            print(f"{clock + label:<18}{min(per_epoch[clock + variant]):7.3f}   ({values})")
    cpu_ratio = min(per_epoch["cpu pipeline"]) / min(per_epoch["cpu plain"])
    print(f"(d)/(e) in CPU time of the commands (minima): {cpu_ratio:.2f}")
    ratio = min(per_epoch["pipeline"]) / min(per_epoch["plain"])
    ok = ratio <= WHOLE_EPOCH_TARGET
    print(f"TARGET (d)/(e) <= {WHOLE_EPOCH_TARGET} (minima): {ratio:.2f} {_verdict(ok)}")
    return ok


def report_startup(startups: list[tuple[str, dict[str, float], float, int]]) -> bool:
    """The start-up table and its targets; True if they passed."""
    print("\nStart-up: python src/train.py trainer.max_epochs=1 data.dir=... hydra.run.dir=<tmp>")
    print("with MLFLOW_TRACKING_URI=sqlite:///<tmp>/mlflow.db; seconds since the command started")
    names = [*MILESTONES, "exit (total wall time)"]
    print(f"{'':<48}" + "".join(f"{label:>16}" for label, *_ in startups))
    for name in names:
        cells = "".join(
            f"{seen[name]:>16.2f}" if name in seen else f"{'n/a':>16}" for _, seen, *_ in startups
        )
        print(f"{name:<48}{cells}")
    print(f"{'peak RSS (MB)':<48}" + "".join(f"{rss:>16.0f}" for _, _, rss, _ in startups))
    print(f"{'exit code':<48}" + "".join(f"{code:>16}" for *_, code in startups))
    passed = True
    for label, seen, _rss, code in startups:
        first = seen.get("first training step (epoch-0 progress bar)", float("inf"))
        ok = first <= FIRST_STEP_TARGET_S and code == 0
        passed &= ok
        print(
            f"TARGET start-to-first-step <= {FIRST_STEP_TARGET_S:g} s ({label}): "
            f"{first:.2f} s {_verdict(ok)}"
        )
    rss = max(rss for _, _, rss, _ in startups)
    passed &= rss <= PEAK_RSS_TARGET_MB
    print(
        f"TARGET peak RSS <= {PEAK_RSS_TARGET_MB:g} MB: {rss:.0f} MB "
        f"{_verdict(rss <= PEAK_RSS_TARGET_MB)}"
    )
    return passed


def main() -> int:
    args = parse_args()
    # The pipeline tags runs with `git status`; keep it from taking the repository's index lock.
    os.environ["GIT_OPTIONAL_LOCKS"] = "0"
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the commands timed
    passed = True
    with tempfile.TemporaryDirectory(prefix="epoch-time-") as tmp:
        workdir = Path(tmp)
        data = data_dir(args.data, pipeline_config([]).data.files, workdir)
        load_at_start = os.getloadavg()[0]
        print(
            f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads (default), "
            f"{torch.get_num_interop_threads()} inter-op, {len(os.sched_getaffinity(0))} CPUs; "
            f"pytorch-lightning {pl.__version__}; mlflow {mlflow.__version__}"
        )
        if "loop" in args.parts:
            times, images = measure_epochs(data, args.batch_sizes, args.rounds, workdir)
            passed &= report_loop(times, args.batch_sizes, images, args.rounds)
        if "whole" in args.parts:
            passed &= report_whole(measure_whole_epochs(data, args.rounds, workdir))
        if "startup" in args.parts:
            store = f"sqlite:///{workdir / 'startup' / 'mlflow.db'}"
            (workdir / "startup").mkdir()
            startups = []
            for label in ("new store", "existing store"):
                print(f"start-up run, {label} ...", file=sys.stderr, flush=True)
                seen, rss, code = measure_startup(data, workdir / "startup" / label, store)
                startups.append((label, seen, rss, code))
            passed &= report_startup(startups)
        print(
            f"\n1-min load average {load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at end: "
            "other work on the CPUs skews the times (read the ratios)"
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
