"""What one fit sets up before it trains: the machine (accelerator, threads), where it
resumes from, the class weights of its loss, the metrics it reports, its callbacks and the
files it writes into its run folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor
from sklearn.utils.class_weight import compute_class_weight

from ecg_experiments.config import group_choice
from ecg_experiments.data.base import ClassDataModule
from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.metrics import metric_names
from ecg_experiments.interruption import TrainingInterrupted, slurm_restart_count
from ecg_experiments.models.precision import resolve_precision
from ecg_experiments.sweepers.optuna import build_from_config
from ecg_experiments.sweepers.pruning import OptunaPruning
from ecg_experiments.tracking import run_id_in

log = logging.getLogger(__name__)


def check_accelerator(cfg: DictConfig) -> None:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"{group_choice('trainer')} (trainer.accelerator={accelerator}) needs a CUDA GPU, "
            "but torch.cuda.is_available() is False on this machine; use trainer=cpu or "
            "trainer=default (auto)"
        )


def settle_precision(cfg: DictConfig) -> str:
    """`trainer.precision` as this machine runs it (`auto` chosen, an unsupported request
    fallen back with one log line: models/precision.py), written into the config so the
    run's saved config and params say what it used."""
    precision = resolve_precision(cfg.trainer.get("precision", "32-true"),
                                  str(cfg.trainer.get("accelerator", "auto")))
    with open_dict(cfg):
        cfg.trainer.precision = precision
    return precision


def set_threads(cfg: DictConfig) -> None:
    """`threads` (int), or under a parallel launcher the cores shared out between its jobs."""
    threads = cfg.get("threads")
    if threads is None and HydraConfig.initialized():
        n_jobs = HydraConfig.get().launcher.get("n_jobs")
        if n_jobs is not None and HydraConfig.get().mode == RunMode.MULTIRUN:
            cores = os.cpu_count() or 1
            jobs = cores if int(n_jobs) < 0 else int(n_jobs)
            threads = max(1, cores // max(jobs, 1))
    if threads:
        torch.set_num_threads(int(threads))


def class_weights(cfg: DictConfig, datamodule: ClassDataModule) -> list[float] | None:
    weights = cfg.loss.class_weights
    if weights is None and datamodule.balance == "class_weights":
        weights = "balanced"
    if weights is None:
        return None
    if weights == "balanced":  # n_samples / (n_classes * n_c) over the classes present
        labels = datamodule.labels("train")
        present = np.unique(labels)
        result = np.zeros(datamodule.num_classes)
        result[present] = compute_class_weight("balanced", classes=present, y=labels)
        # power < 1 tempers the weights of classes seen in very few beats (and patients)
        return (result ** float(cfg.loss.get("class_weight_power", 1.0))).tolist()
    weights = list(weights)
    if len(weights) != datamodule.num_classes:
        raise ConfigError(
            f"loss.class_weights has {len(weights)} values, expected one per class "
            f"({datamodule.num_classes}: {', '.join(datamodule.class_names)}) or 'balanced'"
        )
    return [float(w) for w in weights]


def check_optimized_metric(cfg: DictConfig, class_names: list[str]) -> dict[str, str]:
    """The validation metrics whose best value a run reports, with their direction:
    `monitor.metric` (monitor.mode) and `optimized_metric` (optimized_mode). Stops before
    training when either is not a metric the run computes."""
    known = metric_names(class_names, "val")
    chosen = {str(cfg.monitor.metric): str(cfg.monitor.mode)}
    if cfg.get("optimized_metric") is not None:
        chosen.setdefault(str(cfg.optimized_metric), str(cfg.get("optimized_mode")
                                                          or cfg.monitor.mode))
    for option, name in (("monitor.metric", cfg.monitor.metric),
                         ("optimized_metric", cfg.get("optimized_metric"))):
        if name is not None and str(name) not in known:
            raise ConfigError(f"{option}={name!r}: not a validation metric of this run; "
                              f"expected one of {', '.join(known)}")
    return chosen


def build_callbacks(cfg: DictConfig, with_logger: bool) -> list[pl.Callback]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if not with_logger:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trial = cfg.get("optuna_trial")
    if trial:  # a job of the Optuna sweeper: report to its trial, with the sweeper's pruner
        pruner = None
        if HydraConfig.initialized():
            pruner = build_from_config(HydraConfig.get().sweeper.get("pruner"))
        callbacks.append(OptunaPruning(trial.storage, trial.study_name, int(trial.number),
                                       cfg.optimized_metric, pruner))
    return callbacks


def _requeued_checkpoint(run_dir: Path) -> str | None:
    """In a job that Slurm requeued (SLURM_RESTART_COUNT >= 1, the same run folder, see
    config.run_name): the newest checkpoint of the folder, `checkpoints/last.ckpt` (written
    at SIGTERM) or Lightning's `hpc_ckpt_<n>.ckpt` (written at the SIGUSR1 warning)."""
    if slurm_restart_count() < 1:
        return None
    found = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
             if p.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime_ns)
    log.info("Slurm requeued this job (restart %s): resuming from %s",
             os.environ["SLURM_RESTART_COUNT"], newest)
    return str(newest)


def resume_point(cfg: DictConfig, run_dir: Path) -> tuple[str | None, str | None]:
    """The checkpoint to resume from and the MLflow run to continue, if any.

    `resume=true` (or `ckpt_path=last`) resumes the run whose folder is this run's folder
    (`hydra.run.dir=<that folder>`) from its last checkpoint, in the same MLflow run.
    """
    ckpt = cfg.get("ckpt_path")
    if cfg.get("resume"):
        ckpt = ckpt or "last"
    if not ckpt:
        ckpt = _requeued_checkpoint(run_dir)
    if not ckpt:
        return None, None
    if ckpt == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(
                f"resume=true: no checkpoint at {last}; resume inside the interrupted run's "
                "folder with hydra.run.dir=<outputs/runs/DATE/TIME of that run>"
            )
        ckpt = str(last)
    elif not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint file")
    return ckpt, run_id_in(run_dir)


def interrupted(tracked: Any, what: str, exit_code: int) -> TrainingInterrupted:
    """Mark the MLflow run KILLED; the caller raises the returned exception."""
    if tracked is not None:
        tracked.experiment.set_terminated(tracked.run_id, "KILLED")
    return TrainingInterrupted(what, exit_code)


def write_run_files(cfg: DictConfig, datamodule: ClassDataModule, run_dir: Path) -> dict:
    """Save the resolved config and the split assignment in the run dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {"config": run_dir / "config.yaml"}
    OmegaConf.save(cfg, files["config"], resolve=True)
    if datamodule.split_frame is not None:
        files["split"] = run_dir / "split.csv"
        datamodule.split_frame.to_csv(files["split"], index=False)
    return files
