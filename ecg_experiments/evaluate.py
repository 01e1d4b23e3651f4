"""Evaluate a saved model on a holdout set and track it as a new MLflow run.

`python -m ecg_experiments.evaluate ckpt=<path> | run_id=<id> [data=...] [holdout=test|all]`
Noise robustness of a signal model: `report.noise_snr_db=[24,12,6,0]` (`report.noise=...`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import ConcatDataset, DataLoader

from ecg_experiments.cli import exit_on_user_error
from ecg_experiments.config import build, to_container
from ecg_experiments.data.base import ClassDataModule
from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.report import report_test_results
from ecg_experiments.evaluation.robustness import robustness_report
from ecg_experiments.models.checkpoint import resolve_trained_model
from ecg_experiments.models.classifier import ClassifierModule
from ecg_experiments.tracking import choice_tags, log_run_metadata

log = logging.getLogger(__name__)


def _holdout_loader(datamodule: ClassDataModule, holdout: str) -> DataLoader:
    if holdout == "test":
        return datamodule.test_dataloader()
    if holdout == "all":
        data = ConcatDataset([datamodule.datasets[s] for s in ("train", "val", "test")
                              if s in datamodule.datasets])
        return DataLoader(data, batch_size=datamodule.eval_batch_size, shuffle=False)
    raise ConfigError(f"holdout={holdout!r}: expected 'test' or 'all'")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint (or an MLflow run's model) and report; return the metrics."""
    lookup_uri = cfg.logger.tracking_uri if cfg.get("logger") else cfg.paths.tracking_uri
    model, source_run = resolve_trained_model(cfg.get("ckpt"), cfg.get("run_id"), lookup_uri)
    data_cfg = cfg.data if cfg.get("data") else model.config.data
    datamodule: ClassDataModule = build(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    if datamodule.num_classes != len(model.class_names):
        raise ConfigError(
            f"the model predicts {len(model.class_names)} classes ({', '.join(model.class_names)})"
            f" but the data has {datamodule.num_classes} ({', '.join(datamodule.class_names)})"
        )
    module = ClassifierModule(net=model.net, class_names=datamodule.class_names,
                              config=to_container(model.config))
    logger = build(cfg.logger) if cfg.get("logger") else None
    trainer = instantiate(cfg.trainer, logger=logger or False, callbacks=[],
                          enable_checkpointing=False)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    effective = OmegaConf.create({**to_container(cfg), "data": to_container(data_cfg)})
    if logger is not None:
        config_file = run_dir / "config.yaml"
        OmegaConf.save(effective, config_file, resolve=True)
        tags = {**choice_tags(), "source.checkpoint": str(model.checkpoint),
                **{f"data.{k}": v for k, v in datamodule.fingerprint().items()}}
        if source_run:
            tags["source.run_id"] = source_run
        log_run_metadata(logger, effective, config_file, tags)
    results = trainer.test(module, dataloaders=_holdout_loader(datamodule, cfg.holdout),
                           verbose=False)
    metrics = {k: float(v) for k, v in results[0].items()}
    metrics.update(report_test_results(
        module, metrics, model.history, run_dir / "report", cfg.report, cfg.seed, logger,
        f"Evaluation of {model.checkpoint.name} ({cfg.holdout})",
    ))
    if cfg.holdout == "test":
        metrics.update(robustness_report(module, datamodule, cfg.report, run_dir / "report",
                                         cfg.seed, logger))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        evaluate(cfg)


if __name__ == "__main__":
    main()
