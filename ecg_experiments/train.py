"""Train, test and track one experiment: `python -m ecg_experiments.train [overrides]`."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from ecg_experiments.cli import exit_on_user_error
from ecg_experiments.config import group_choice, to_container, validate_train_config
from ecg_experiments.data.beats import BeatsDataModuleBase
from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.report import report_test_results
from ecg_experiments.explore import explore_data
from ecg_experiments.models.classifier import ClassifierModule
from ecg_experiments.tracking import choice_tags, log_files, log_model, log_run_metadata

log = logging.getLogger(__name__)


def _check_accelerator(cfg: DictConfig) -> None:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"{group_choice('trainer')} (trainer.accelerator={accelerator}) needs a CUDA GPU, "
            "but torch.cuda.is_available() is False on this machine; use trainer=cpu or "
            "trainer=default (auto)"
        )


def _class_weights(cfg: DictConfig, datamodule: BeatsDataModuleBase) -> list[float] | None:
    weights = cfg.loss.class_weights
    if weights is None:
        return None
    if weights == "balanced":
        counts = datamodule.class_counts("train").astype(np.float64)
        present = counts > 0
        result = np.zeros_like(counts)
        result[present] = counts.sum() / (present.sum() * counts[present])
        return result.tolist()
    weights = list(weights)
    if len(weights) != datamodule.num_classes:
        raise ConfigError(
            f"loss.class_weights has {len(weights)} values, expected one per class "
            f"({datamodule.num_classes}: {', '.join(datamodule.class_names)}) or 'balanced'"
        )
    return [float(w) for w in weights]


def _write_run_files(cfg: DictConfig, datamodule: BeatsDataModuleBase, run_dir: Path) -> dict:
    """Save the resolved config and the split assignment in the run dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {"config": run_dir / "config.yaml"}
    OmegaConf.save(cfg, files["config"], resolve=True)
    if datamodule.split_frame is not None:
        files["split"] = run_dir / "split.csv"
        datamodule.split_frame.to_csv(files["split"], index=False)
    return files


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint and track one run; return its metrics.

    The result holds the test metrics (`test/...`), the best monitored validation value
    under `cfg.monitor.metric`, and `best_model_path`/`run_id` are left out (see logs).
    """
    validate_train_config(cfg)
    _check_accelerator(cfg)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule: BeatsDataModuleBase = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    net = instantiate(cfg.model.net)
    module = ClassifierModule(
        net=net,
        class_names=datamodule.class_names,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        monitor=cfg.monitor.metric,
        class_weights=_class_weights(cfg, datamodule),
        label_smoothing=cfg.loss.label_smoothing,
        config=to_container(cfg),
    )
    logger = instantiate(cfg.logger) if cfg.get("logger") else None
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if logger is None:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger or False)

    run_dir = Path(cfg.paths.run_dir)
    files = _write_run_files(cfg, datamodule, run_dir)
    if logger is not None:
        tags = choice_tags()
        tags.update({f"data.{k}": v for k, v in datamodule.fingerprint().items()})
        tags.update({str(k): str(v) for k, v in (cfg.get("tags") or {}).items()})
        log_run_metadata(logger, cfg, files["config"], tags)
        if "split" in files:
            logger.experiment.log_artifact(logger.run_id, str(files["split"]))

    if logger is not None and cfg.report.explore:
        explore_files = explore_data(datamodule, run_dir / "explore",
                                     cfg.report.examples_per_class, cfg.seed)
        log_files(logger, explore_files, "explore")

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    history = [module.history[epoch] for epoch in sorted(module.history)]

    metrics: dict[str, float] = {}
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[cfg.monitor.metric] = float(checkpoint.best_model_score)
    if cfg.get("test"):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None,
                               verbose=False)
        metrics.update({k: float(v) for k, v in results[0].items()})
        metrics.update(report_test_results(
            module, metrics, history, run_dir / "report", cfg.report, cfg.seed, logger,
            "Test metrics per class (best checkpoint)",
        ))
    if logger is not None and cfg.report.log_model:
        example = next(iter(datamodule.test_dataloader()))[0][:4]
        preprocessing = {"input_kind": cfg.model.get("input_kind"), "data": to_container(cfg.data)}
        log_model(logger, module.net, example, datamodule.class_names, preprocessing,
                  best_path or None)
    if logger is not None:
        log.info("MLflow run %s in %s", logger.run_id, logger._tracking_uri)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error():
        metrics = train(cfg)
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    main()
