"""Evaluate a saved model on a holdout set and track it as a new MLflow run.

`python -m ecg_experiments.evaluate ckpt=<path> | run_id=<id> [data=...] [holdout=test|all]
[class_map={data class: model class}]`
Noise robustness of a signal model: `report.noise_snr_db=[24,12,6,0]` (`report.noise=...`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import ConcatDataset, DataLoader

from ecg_experiments.config import build, group_choice, to_container
from ecg_experiments.data.base import ClassDataModule
from ecg_experiments.epoch_lines import progress_bar
from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.attribution import mean_attribution_report
from ecg_experiments.evaluation.report import report_test_results
from ecg_experiments.evaluation.robustness import robustness_report
from ecg_experiments.inputs import RemapLabels, match_classes
from ecg_experiments.models.checkpoint import TrainedModel, resolve_trained_model
from ecg_experiments.models.classifier import ClassifierModule
from ecg_experiments.tracking import choice_tags, log_run_metadata

log = logging.getLogger(__name__)


def _holdout_loader(datamodule: ClassDataModule, holdout: str, lookup: list[int]) -> DataLoader:
    """The holdout samples with their labels turned into the model's (`match_classes`)."""
    if holdout not in ("test", "all"):
        raise ConfigError(f"holdout={holdout!r}: expected 'test' or 'all'")
    splits = ["test"] if holdout == "test" else [s for s in ("train", "val", "test")
                                                 if s in datamodule.datasets]
    if len(splits) == 1:
        data, collate = datamodule.evaluation_dataset(splits[0]), datamodule.collate_fn
    else:  # a ConcatDataset is read row by row: PyTorch's default collate
        data = ConcatDataset([datamodule.evaluation_dataset(s) for s in splits])
        collate = None
    return DataLoader(data, batch_size=datamodule.eval_batch_size, shuffle=False,
                      num_workers=datamodule.num_workers,
                      collate_fn=RemapLabels(lookup, collate))


def data_for_model(cfg: DictConfig, model: TrainedModel) -> DictConfig:
    """The data config to evaluate `model` on: its own run's data, or the `data=...` given,
    composed with the trained model's `model` node (so `${model.input_size}` and the like
    resolve to the model's) and set to give the model's input (`model.input`)."""
    if not cfg.get("data"):
        return model.config.data
    root = OmegaConf.merge({"model": model.config.model}, cfg)
    data = root.data
    spec = model.input
    if cfg.holdout == "all":
        every_sample_in_test(data)
    with open_dict(data):
        if spec.kind == "image":
            given = spec.to_dict()
            for key in ("image_size", "channels", "mean", "std"):
                if key in data:
                    data[key] = given[key]
        else:
            _cut_beats_as_trained(data, model)
    return data


def every_sample_in_test(data: DictConfig) -> None:
    """Put every sample of the data in its test split where the data offers one that does
    (`split=all`): evaluating on all of it needs no split drawn."""
    if "all" in getattr(get_class(data._target_), "splits", ()):
        with open_dict(data):
            data.split = "all"


def _cut_beats_as_trained(data: DictConfig, model: TrainedModel) -> None:
    """Beats of other records (another database) are cut with the recipe the model was
    trained with, and carry its R-R features or not."""
    trained = model.config.get("data") or {}
    reason = model.record_only_reason() if "recipe" not in data else None
    if reason:
        raise ConfigError(f"{group_choice('data')}: gives ready-cut beats, but {reason}; "
                          "evaluate it on records (data=mitbih or data=physionet)")
    if "recipe" in data and "recipe" in trained:
        recipe = OmegaConf.to_container(trained.recipe, resolve=True)
        if OmegaConf.to_container(data.recipe, resolve=True) != recipe:
            log.info("data.recipe: the model's (%s at %s Hz) replaces %s",
                     trained.recipe.get("_target_", "").rsplit(".", 1)[-1],
                     trained.recipe.get("rate"),
                     data.recipe.get("_target_", "").rsplit(".", 1)[-1])
            data.recipe = recipe
    spec = model.input
    if "rr_features" in data and bool(data.rr_features) != bool(spec.features):
        log.info("data.rr_features=%s: the model takes %s", bool(spec.features),
                 spec.describe())
        data.rr_features = bool(spec.features)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint (or an MLflow run's model) and report; return the metrics.

    The data is checked against the model's stored input description, and its classes are
    matched to the model's by name (`class_map` for deliberate renames).
    """
    lookup_uri = cfg.logger.tracking_uri if cfg.get("logger") else cfg.paths.tracking_uri
    model, source_run = resolve_trained_model(cfg.get("ckpt"), cfg.get("run_id"), lookup_uri)
    data_cfg = data_for_model(cfg, model)
    data_option = group_choice("data") if cfg.get("data") else "the model's own data"
    logger = build(cfg.logger) if cfg.get("logger") else None
    tags = {**choice_tags(), **({"source.run_id": source_run} if source_run else {})}
    return evaluate_model(cfg, model, data_cfg, data_option, Path(cfg.paths.run_dir), logger,
                          tags)


def evaluate_model(cfg: DictConfig, model: TrainedModel, data_cfg: DictConfig,
                   data_option: str, run_dir: Path, logger: Any, tags: dict[str, str],
                   title: str | None = None) -> dict[str, float]:
    """Evaluate a loaded model on the data of `data_cfg` (`cfg.holdout` of it) and report
    into `run_dir` and the MLflow run of `logger`; `cfg` gives holdout, class_map, trainer,
    report and seed."""
    datamodule: ClassDataModule = build(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    model.input.check_data(datamodule.input_spec(), data_option)
    lookup = match_classes(model.class_names, datamodule.class_names, cfg.get("class_map"),
                           data_option)
    if lookup != list(range(len(model.class_names))):
        log.info("data classes [%s] matched to the model's [%s] by name",
                 ", ".join(datamodule.class_names), ", ".join(model.class_names))
    module = ClassifierModule(net=model.net, class_names=model.class_names,
                              config=to_container(model.config), input_spec=model.input)
    # lines in a log as training writes them (a bar on a terminal)
    bar = [progress_bar()] if cfg.trainer.get("enable_progress_bar", True) else []
    trainer = instantiate(cfg.trainer, logger=logger or False, callbacks=bar,
                          enable_checkpointing=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = datamodule.fingerprint()
    if "sources" in fingerprint:  # which lead, rate and recipe the beats were read with
        log.info("evaluating on %s: %s", fingerprint.get("databases", data_option),
                 fingerprint["sources"])
    if logger is not None:
        effective = OmegaConf.create({**to_container(cfg), "data": to_container(data_cfg)})
        config_file = run_dir / "config.yaml"
        OmegaConf.save(effective, config_file, resolve=True)
        tags = {**tags, "source.checkpoint": str(model.checkpoint),
                "model.input": model.input.describe(),
                "data.classes": ", ".join(datamodule.class_names),
                **{f"data.{k}": v for k, v in fingerprint.items()}}
        log_run_metadata(logger, effective, config_file, tags)
    loader = _holdout_loader(datamodule, cfg.holdout, lookup)
    results = trainer.test(module, dataloaders=loader, verbose=False)
    metrics = {k: float(v) for k, v in results[0].items()}
    metrics.update(report_test_results(
        module, metrics, model.history, run_dir / "report", cfg.report, cfg.seed, logger,
        title or f"Evaluation of {model.checkpoint.name} ({cfg.holdout})",
    ))
    if cfg.holdout == "test" and datamodule.input_kind == "signal":
        labels = torch.as_tensor(lookup)[torch.as_tensor(datamodule.labels("test"))]
        signals = datamodule.signals("test")
        metrics.update(robustness_report(module.net, signals, labels, model.input,
                                         cfg.report, run_dir / "report", cfg.seed, logger))
        mean_attribution_report(module.net, signals, labels, model.input, cfg.report,
                                run_dir / "report", cfg.seed, logger)
    metrics["test/samples"] = float(len(loader.dataset))  # returned, not logged
    return metrics
