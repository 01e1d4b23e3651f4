"""MLflow tracking: where the store is, what every run records, and finding runs again."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

from ecg_experiments.config import project_root

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


def is_remote(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://", "databricks"))


def mlflow_logger(
    tracking_uri: str,
    experiment_name: str,
    artifact_dir: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> MLFlowLogger:
    """An MLFlowLogger on a local SQLite store (artifacts in `artifact_dir`) or a server.

    For a local store the folders are created; a server chooses its own artifact location.
    """
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if not is_remote(tracking_uri) and artifact_dir:
        Path(artifact_dir).mkdir(parents=True, exist_ok=True)
        artifact_location = Path(artifact_dir).resolve().as_uri()
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=tracking_uri,
        tags=dict(tags or {}),
        artifact_location=artifact_location,
        run_id=run_id,
    )


def git_info(root: str | Path | None = None) -> dict[str, str]:
    """The commit and whether the working tree differs from it (empty outside git)."""
    root = str(root or project_root())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(status.strip())).lower()}


def flatten_config(cfg: DictConfig | Mapping, prefix: str = "") -> dict[str, str]:
    """Flatten a config to `a.b.c` keys with string values, as MLflow params."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, str] = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def log_run_metadata(
    logger: MLFlowLogger,
    cfg: DictConfig,
    config_file: Path,
    tags: Mapping[str, str],
) -> None:
    """Log the flattened config as params, the tags, and the resolved config YAML."""
    client, run_id = logger.experiment, logger.run_id
    logger.log_hyperparams(flatten_config(cfg))
    all_tags = {**git_info(), "command": " ".join(sys.argv)[:5000], **tags}
    for key, value in all_tags.items():
        client.set_tag(run_id, key, str(value))
    client.log_artifact(run_id, str(config_file))
