"""Is params.yaml conf/ composed? DVC's stages run on params.yaml, which `dvc exp run` composes
from conf/ and `dvc repro` does not: an edit of conf/ must not pass unnoticed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import OmegaConf

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.config import differing_keys

log = logging.getLogger(__name__)


def params_drift(params: Path, conf: Path) -> list[str]:
    """The keys whose value in `params` differs from `conf/config.yaml` composed with no
    overrides and resolved, as `dvc exp run` composes it."""
    # In a stage, Hydra is initialised already, for params.yaml: set aside, then put back.
    running = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf), version_base="1.3"):
            composed = compose("config")
    finally:
        restore_gh_from_backup(running)
    expected = OmegaConf.to_container(composed, resolve=True)
    return differing_keys(expected, OmegaConf.to_container(OmegaConf.load(params)))


def warn_if_params_stale(root: Path = PROJECT_ROOT) -> None:
    """Under `dvc repro`, one WARNING line naming the keys where params.yaml is not conf/
    composed; nothing under `dvc exp run` (it composes params.yaml, with its -S overrides) or
    outside DVC. A check that cannot run is a warning too: it never fails the stage."""
    if "DVC_STAGE" not in os.environ or "DVC_EXP_NAME" in os.environ:
        return
    try:
        keys = params_drift(root / "params.yaml", root / "conf")
    except Exception as error:  # noqa: BLE001  whatever it is, the stage itself can go on
        log.warning("could not compare params.yaml with conf/: %s", error)
        return
    if keys:
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        log.warning(
            "params.yaml differs from conf/ at %s: this stage runs on params.yaml; after editing "
            "conf/, run `dvc exp run` (it composes conf/ into params.yaml), not `dvc repro`",
            shown,
        )
