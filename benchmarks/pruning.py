"""What pruning saves: the default search with and without its pruner, same seeds, real MNIST.

Runs `python src/train.py hparams_search=optuna` twice, each with a fresh study in a temporary
directory (`logger=none`, no report: only the trainings count), once with the configured
median pruner and once with `hydra.sweeper.pruner=none`, and prints the epochs trained, the
best validation accuracy and the wall time of each. Exits 1 unless pruning saves at least
30% of the epochs with a best validation accuracy within 0.002 of the unpruned search's.

    python benchmarks/pruning.py --data /path/to/mnist --trials 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
SAVING_TARGET, ACCURACY_TOLERANCE = 0.30, 0.002


def search(data: str, trials: int, pruner: str | None, folder: Path) -> dict[str, float]:
    """One search into `folder`; its epochs, pruned trials, best value and seconds."""
    journal = folder / "optuna.journal"
    command = [
        sys.executable,
        "src/train.py",
        "hparams_search=optuna",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweeper.storage={journal}",
        f"hydra.sweep.dir={folder / 'multirun'}",
        "logger=none",
        "report=false",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *([f"hydra.sweeper.pruner={pruner}"] if pruner else []),
    ]
    started = time.monotonic()
    subprocess.run(
        command,
        cwd=REPO,
        check=True,
        env={**os.environ, "MNIST_MIRROR": data},
        stdout=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - started
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="mnist-mlp", storage=storage)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return {
        "epochs": sum(len(t.intermediate_values) for t in done),
        "pruned": sum(t.state == TrialState.PRUNED for t in done),
        # A pruned trial's best epoch counts too: its checkpoint exists like any other.
        "best": max(max(t.intermediate_values.values()) for t in done),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="directory or mirror of the MNIST files")
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as pruned_dir, tempfile.TemporaryDirectory() as full_dir:
        pruned = search(args.data, args.trials, None, Path(pruned_dir))
        full = search(args.data, args.trials, "none", Path(full_dir))
    print(f"{args.trials}-trial search | epochs | pruned trials | best val acc | wall time")
    print("---|---:|---:|---:|---:")
    for name, result in (("median pruner", pruned), ("no pruner", full)):
        print(
            f"{name} | {result['epochs']} | {result['pruned']} | {result['best']:.4f} | "
            f"{result['seconds']:.0f} s"
        )
    saving = 1 - pruned["epochs"] / full["epochs"]
    gap = full["best"] - pruned["best"]
    ok = saving >= SAVING_TARGET and gap <= ACCURACY_TOLERANCE
    print(
        f"{'PASS' if ok else 'FAIL'}: pruning saves {saving:.0%} of the epochs "
        f"(target >= {SAVING_TARGET:.0%}); best val acc {gap:+.4f} below the unpruned "
        f"search's (target <= {ACCURACY_TOLERANCE})"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
