"""Multi-node DDP: two "nodes" on this machine (one process each, gloo on loopback), started as
torchrun and SLURM start them, train as one job: one output directory, one MLflow run, the same
all-reduced metrics on both ranks, checkpoints written once, and a resume into the same run."""

import json
import os
import signal
import subprocess
import sys

import pytest
import warm
from conftest import REPO, free_port, mlflow_runs
from omegaconf import OmegaConf

from mnist_pipeline.checkpoint_files import load_network, read_checkpoint
from mnist_pipeline.data.idx import load_images_and_labels
from mnist_pipeline.reporting.evaluation import logits_of, score

NODES = (
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.num_nodes=2",
    "model.hidden=32",
    "report=false",
    "logger.mlflow.log_model=false",
    "+callbacks.record_samples={_target_:record_samples.RecordSamples,dirpath:null}",
)


def _two_nodes(tiny_run, tmp_path, launcher: str, *overrides: str) -> None:
    """Run `src/train.py` as a job of two nodes, started by `launcher` (torchrun, or two
    processes with the environment SLURM's srun gives them), and wait for both."""
    command = tiny_run.command(*overrides)
    port = str(free_port())
    processes, logs = [], []
    for node in (0, 1):
        env = dict(os.environ)
        if launcher == "torchrun":  # the same command on each node; c10d assigns the ranks
            argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2"]
            argv += ["--nproc-per-node=1", "--rdzv-backend=c10d"]
            argv += [f"--rdzv-endpoint=127.0.0.1:{port}", *command[1:]]
        else:  # what Lightning's SLURMEnvironment reads (a job name other than "bash")
            argv = command
            env.update(SLURM_JOB_ID="4242", SLURM_JOB_NAME="train", SLURM_NNODES="2")
            env.update(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_PROCID=str(node))
            env.update(SLURM_LOCALID="0", SLURM_NODEID=str(node))
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        logs.append((tmp_path / f"{launcher}-node{node}.log").open("w"))
        # torchrun starts its workers itself (cold); SLURM's processes are ours: warm.
        start = subprocess.Popen if launcher == "torchrun" else warm.Popen
        processes.append(
            start(
                argv,
                cwd=REPO,
                env=env,
                stdout=logs[-1],
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: torchrun's worker too
            )
        )
    try:
        codes = [process.wait(timeout=300) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in logs:
            log.close()
    output = "".join((tmp_path / f"{launcher}-node{n}.log").read_text()[-3000:] for n in (0, 1))
    assert codes == [0, 0], output


def _metrics_of_both_ranks(run_dir, run) -> dict[str, float]:
    """The epoch metrics each rank held: the same on both, and the ones logged to MLflow."""
    rank0, rank1 = (
        json.loads((run_dir / "seen" / f"rank{r}-metrics.json").read_text()) for r in (0, 1)
    )
    assert rank0 == rank1
    for key in ("train/acc", "train/loss", "val/acc", "val/loss", "test/acc", "test/loss"):
        assert run.data.metrics[key] == pytest.approx(rank0[key], abs=1e-6), key
    return rank0


@pytest.mark.slow
def test_two_nodes_train_as_one_job_and_resume_it(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests" / "probes"))
    # The configured run directory (under tmp_path): each process resolves it for itself.
    conf = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "config.yaml"))
    configured = conf["hydra"]["run"]["dir"]
    job = (*NODES, f"hydra.run.dir={configured.replace('${project_root:}', str(tmp_path))}")
    runs = tmp_path / "outputs" / "runs"
    _two_nodes(tiny_run, tmp_path, "torchrun", *job, "trainer.max_epochs=1")

    # One output directory, one MLflow run, the checkpoints written once (by rank 0).
    (run_dir,) = runs.glob("*/*")
    _, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert load_network(run_dir / "checkpoints" / "last.ckpt")[1] == run.info.run_id
    first = _metrics_of_both_ranks(run_dir, run)
    # Each node trained on its own half of the epoch's samples; the weights stayed equal.
    seen = run_dir / "seen"
    rank0, rank1 = ((seen / f"rank{r}-epoch0.txt").read_text().split() for r in (0, 1))
    assert len(rank0) == len(rank1) == 250 and not set(rank0) & set(rank1)
    assert len({(seen / f"rank{r}-weights.txt").read_text() for r in (0, 1)}) == 1

    # Resumed for a second epoch under SLURM's variables: the same directory and MLflow run.
    last = run_dir / "checkpoints" / "last.ckpt"
    _two_nodes(tiny_run, tmp_path, "slurm", *job, "trainer.max_epochs=2", f"ckpt_path={last}")
    # The resumed job's own Hydra directory (its config and log), one for both processes.
    resumed_dir = next(p for p in runs.glob("*/*") if p != run_dir)
    assert len(list(runs.glob("*/*"))) == 2
    assert sorted(p.name for p in resumed_dir.iterdir()) == [".hydra", "train.log"]
    client, (resumed,) = mlflow_runs(tmp_path)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert len(steps) == len(set(steps)) == 2 and steps == sorted(steps)  # an epoch each
    assert read_checkpoint(last)["epoch"] == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    second = _metrics_of_both_ranks(run_dir, resumed)
    assert second["train/loss"] < first["train/loss"]
    curve = (run_dir / "reports" / "training_curve.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in curve[1:]] == ["1", "2"]

    # The test accuracy the ranks agreed on is that of the 200 test images, each counted once.
    model, run_id = load_network(run_dir / "checkpoints" / "best.ckpt")
    assert run_id == run.info.run_id
    data = tmp_path / "data" / "mnist"
    images, labels = load_images_and_labels(
        data / "t10k-images-idx3-ubyte", data / "t10k-labels-idx1-ubyte"
    )
    assert second["test/acc"] == pytest.approx(score(logits_of(model, images), labels)["accuracy"])


@pytest.mark.slow
def test_a_sweep_on_two_nodes_is_one_sweep_with_one_parent_run(tiny_run, tmp_path):
    # The configured sweep directory (under tmp_path): each process resolves it for itself.
    conf = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "config.yaml"))
    configured = conf["hydra"]["sweep"]["dir"].replace("${project_root:}", str(tmp_path))
    nodes = [option for option in NODES if not option.startswith(("+callbacks", "model."))]
    sweep = ("-m", "model.hidden=8,16", *nodes, "trainer.max_epochs=1")
    _two_nodes(tiny_run, tmp_path, "slurm", *sweep, f"hydra.sweep.dir={configured}")

    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    client, runs = mlflow_runs(tmp_path)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if run is not parent]
    assert sorted(run.data.params["model.hidden"] for run in children) == ["16", "8"]
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert parent.data.metrics["sweep/runs"] == 2
    # Rank 1 left the parent run to rank 0 (it would have found it only through a shared disk).
    assert "MLflow parent run" not in (tmp_path / "slurm-node1.log").read_text()
