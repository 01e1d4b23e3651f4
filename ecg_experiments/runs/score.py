"""The one scoring stage: a model scored on one part of some data.

Train's test step, `evaluate` and `also_test` all score through `score`: the seen-data
check (evaluation/seen.py), the test loop, the report with intervals over records, the
per-sample predictions, noise robustness and attribution (signal models), and tracking.
`evaluate_model` scores a saved model on a data config as its own MLflow run (`evaluate`,
`also_test`) through `score`. A change to "what happens when a model is scored" is made
here once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import ConcatDataset, DataLoader

from ecg_experiments.config import build, to_container
from ecg_experiments.data.base import ClassDataModule
from ecg_experiments.epoch_lines import progress_bar
from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.attribution import mean_attribution_report
from ecg_experiments.evaluation.report import report_test_results
from ecg_experiments.evaluation.robustness import robustness_report
from ecg_experiments.evaluation.seen import SeenSamples, check_unseen
from ecg_experiments.inputs import RemapLabels, match_classes
from ecg_experiments.models.checkpoint import TrainedModel
from ecg_experiments.models.classifier import ClassifierModule
from ecg_experiments.runs.fit_setup import settle_precision
from ecg_experiments.tracked_data import log_datasets
from ecg_experiments.tracking import log_run_metadata

log = logging.getLogger(__name__)

HOLDOUTS = ("test", "all")
# the tag of a run whose scores include samples the model was fit or validated on
INCLUDES_TRAINING_DATA = "includes_training_data"


def holdout_parts(datamodule: ClassDataModule, holdout: str) -> list[str]:
    """The splits a holdout scores: `test`, or every split the data has (`all`)."""
    if holdout not in HOLDOUTS:
        raise ConfigError(f"holdout={holdout!r}: expected 'test' or 'all'")
    if holdout == "test":
        return ["test"]
    return [s for s in ("train", "val", "test") if s in datamodule.datasets]


def scored_samples(datamodule: ClassDataModule, parts: Sequence[str]) -> pd.DataFrame | None:
    """The sample frames of `parts`, in the order the scoring loader reads them."""
    frames = [datamodule.sample_frame(part) for part in parts]
    if any(frame is None for frame in frames):
        return None
    return pd.concat(frames, ignore_index=True)


def scoring_loader(datamodule: ClassDataModule, parts: Sequence[str],
                   lookup: Sequence[int] | None = None) -> DataLoader:
    """The samples of `parts` (no augmentation, in order), their labels turned into the
    model's (`lookup`, from `inputs.match_classes`)."""
    lookup = list(range(datamodule.num_classes)) if lookup is None else list(lookup)
    if len(parts) == 1:
        data, collate = datamodule.evaluation_dataset(parts[0]), datamodule.collate_fn
    else:  # a ConcatDataset is read row by row: PyTorch's default collate
        data = ConcatDataset([datamodule.evaluation_dataset(s) for s in parts])
        collate = None
    return DataLoader(data, batch_size=datamodule.eval_batch_size, shuffle=False,
                      num_workers=datamodule.num_workers,
                      collate_fn=RemapLabels(lookup, collate))


@dataclass
class Scoring:
    """How a scoring is reported: the `report` config group, the bootstrap seed, where the
    report goes, the MLflow run (None: untracked), the title, the training history (for
    the learning curves) and what the samples were fit on (`seen`, `allow_seen`)."""

    report: Mapping[str, Any]
    seed: int
    out_dir: Path
    logger: Any
    title: str
    what: str = "the test split"
    history: Sequence[Mapping[str, float]] = ()
    seen: SeenSamples | None = None
    allow_seen: bool = False
    tags: dict[str, str] = field(default_factory=dict)


def check_scorable(datamodule: ClassDataModule, parts: Sequence[str], scoring: Scoring
                   ) -> int:
    """Before any work: stop when the samples to score hold samples the model was fit or
    validated on (unless `allow_seen`); return how many they hold."""
    return check_unseen(scored_samples(datamodule, parts), scoring.seen, scoring.allow_seen,
                        scoring.what)


def score(module: ClassifierModule, datamodule: ClassDataModule, trainer: pl.Trainer,
          parts: Sequence[str], scoring: Scoring, lookup: Sequence[int] | None = None,
          ckpt_path: str | None = None) -> dict[str, float]:
    """Score `module` (the weights of `ckpt_path` when given) on the `parts` of a set-up
    DataModule; report, track and return the metrics (`test/...`, with intervals, noise
    metrics, and `test/samples`, which is returned, not logged)."""
    included = check_scorable(datamodule, parts, scoring)
    frame = scored_samples(datamodule, parts)
    loader = scoring_loader(datamodule, parts, lookup)
    results = trainer.test(module, dataloaders=loader, ckpt_path=ckpt_path, verbose=False)
    metrics = {k: float(v) for k, v in results[0].items()}
    if not trainer.is_global_zero:
        return metrics
    logger = scoring.logger
    if trainer.world_size > 1:  # gathered rank by rank: not the order of the sample frame
        log.warning("scored on %d devices: predictions.csv has no sample ids and the intervals "
                    "resample samples, not records (score on one device for those)",
                    trainer.world_size)
        frame = None
    note = (f"includes training data: {included:,} of the scored samples were fit or "
            "validated on (allow_seen=true)") if included else ""
    if included:
        log.warning(note)
    if logger is not None:
        tags = {**scoring.tags, **({INCLUDES_TRAINING_DATA: str(included)} if included else {})}
        for key, value in tags.items():
            logger.experiment.set_tag(logger.run_id, key, value)
    metrics.update(report_test_results(module, metrics, scoring.history, scoring.out_dir,
                                       scoring.report, scoring.seed, logger, scoring.title,
                                       frame, note))
    if datamodule.input_kind == "signal":
        signals = torch.cat([datamodule.signals(part) for part in parts])
        labels = torch.cat([torch.as_tensor(datamodule.labels(part)) for part in parts])
        if lookup is not None:
            labels = torch.as_tensor(list(lookup))[labels]
        spec = module.input_spec or datamodule.input_spec()
        # the recipe: a template-relative beat's SNR is set on the beat before subtraction
        metrics.update(robustness_report(module.net, signals, labels, spec, scoring.report,
                                         scoring.out_dir, scoring.seed, logger,
                                         recipe=getattr(datamodule, "recipe", None)))
        mean_attribution_report(module.net, signals, labels, spec, scoring.report,
                                scoring.out_dir, scoring.seed, logger)
    metrics["test/samples"] = float(len(loader.dataset))
    return metrics


def every_sample_in_test(data: DictConfig) -> None:
    """Put every sample of the data in its test split where the data offers one that does
    (`split=all`): evaluating on all of it needs no split drawn."""
    if "all" in getattr(get_class(data._target_), "splits", ()):
        with open_dict(data):
            data.split = "all"


def dataset_name(data_option: str, tags: dict[str, str]) -> str:
    """The data option's name for a dataset name (`also_test.svdb` -> `svdb`)."""
    if data_option == "the model's own data":
        return tags.get("choice.data", "data")
    return data_option.removeprefix("data=").rsplit(".", 1)[-1]


def evaluate_model(cfg: DictConfig, model: TrainedModel, data_cfg: DictConfig,
                   data_option: str, run_dir: Path, make_logger: Callable[[], Any] | None,
                   tags: dict[str, str], title: str | None = None) -> dict[str, float]:
    """Score a loaded model on the data of `data_cfg` (`cfg.holdout` of it) through the
    scoring stage, into `run_dir` and the MLflow run `make_logger` makes once the data
    passed its checks; `cfg` gives holdout, class_map, allow_seen, trainer, report, seed."""
    datamodule: ClassDataModule = build(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    model.input.check_data(datamodule.input_spec(), data_option)
    lookup = match_classes(model.class_names, datamodule.class_names, cfg.get("class_map"),
                           data_option)
    if lookup != list(range(len(model.class_names))):
        log.info("data classes [%s] matched to the model's [%s] by name",
                 ", ".join(datamodule.class_names), ", ".join(model.class_names))
    parts = holdout_parts(datamodule, cfg.holdout)
    scoring = Scoring(cfg.report, int(cfg.seed), run_dir / "report", None,
                      title or f"Evaluation of {model.checkpoint.name} ({cfg.holdout})",
                      what=f"{data_option} (holdout={cfg.holdout})", history=model.history,
                      seen=model.seen, allow_seen=bool(cfg.get("allow_seen")))
    check_scorable(datamodule, parts, scoring)  # before any MLflow run or test
    module = ClassifierModule(net=model.net, class_names=model.class_names,
                              config=to_container(model.config), input_spec=model.input,
                              seen=model.seen,
                              channels_last=bool(model.config.model.get("channels_last")))
    settle_precision(cfg)
    logger = make_logger() if make_logger is not None else None
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
        log_datasets(logger.experiment, logger.run_id, datamodule,
                     dataset_name(data_option, tags), {part: "testing" for part in parts})
    scoring.logger = logger
    try:
        return score(module, datamodule, trainer, parts, scoring, lookup)
    except BaseException:
        if logger is not None:  # a failed evaluation never stays RUNNING
            logger.experiment.set_terminated(logger.run_id, "FAILED")
        raise
