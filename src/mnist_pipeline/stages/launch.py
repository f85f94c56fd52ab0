"""A training started as several processes by torchrun or SLURM (e.g. on several nodes): what
its processes agree on before Lightning joins them, so that they make one job.

Lightning's own DDP launch (one command, `trainer.devices=N`) starts the other ranks itself and
hands them rank 0's Hydra run directory; torchrun and SLURM start every process alike, and each
would take its own timestamp for `hydra.run.dir`. The conf's `${launch_time:...}` is rank 0's
instead, sent to the others through the rendezvous store that the ranks meet at later anyway.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime, timedelta
from typing import Any


def _external_launch() -> Any | None:
    """Lightning's cluster environment of a job of several processes started by torchrun or
    SLURM (detected as Lightning detects them), else None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "SLURM_NTASKS" not in os.environ:
        return None  # the common case, without importing Lightning
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    # Lightning's order: torchrun may run inside a SLURM allocation.
    for kind in (TorchElasticEnvironment, SLURMEnvironment):
        if kind.detect():
            environment = kind()
            return environment if environment.world_size() > 1 else None
    return None


def rank() -> int:
    """This process's global rank in a job started by torchrun or SLURM; 0 otherwise."""
    environment = _external_launch()
    return environment.global_rank() if environment else 0


# The store stays open: on SLURM rank 0's process serves it, and Lightning's process group joins
# it there (a multi-tenant TCPStore) instead of binding the port a second time.
_store: Any = None


def launch_time() -> datetime:
    """When the command started (as Hydra's `${now:}`); in a job started by torchrun or SLURM,
    when its rank 0 did."""
    return datetime.now() if _external_launch() is None else _agreed_launch_time()


@functools.cache  # one exchange a process, however often Hydra resolves its run directory
def _agreed_launch_time() -> datetime:
    global _store
    from torch.distributed import TCPStore

    now, environment = datetime.now(), _external_launch()
    # Where Lightning's process group meets later (`_init_dist_connection`), and as torch's env://
    # rendezvous does: torchrun's agent serves the store, else rank 0 does. Rank 0 waits for
    # nobody: a one-process training in a SLURM job of several tasks, run without srun, goes on.
    os.environ["MASTER_ADDR"] = environment.main_address
    os.environ["MASTER_PORT"] = str(environment.main_port)
    rank = environment.global_rank()
    serve = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True)
    _store = TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=serve,
        timeout=timedelta(minutes=30),  # Lightning's default for the process group
        multi_tenant=True,
    )
    # torchrun's store outlives a restart of the workers: each attempt is a job of its own.
    key = f"mnist_pipeline/launch_time/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if rank == 0:
        _store.set(key, now.isoformat())
        return now
    return datetime.fromisoformat(_store.get(key).decode())
