"""The one scoring stage: a model scored on one part of some data.

Train's test step, `evaluate` and `also_test` all score through `score`: the seen-data
check (evaluation/seen.py), the test loop, the report with intervals over records, the
per-sample predictions, noise robustness and attribution (signal models), and tracking.
A change to "what happens when a model is scored" is made here once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader

from ecg_experiments.data.base import ClassDataModule
from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.attribution import mean_attribution_report
from ecg_experiments.evaluation.report import report_test_results
from ecg_experiments.evaluation.robustness import robustness_report
from ecg_experiments.evaluation.seen import SeenSamples, check_unseen
from ecg_experiments.inputs import RemapLabels
from ecg_experiments.models.classifier import ClassifierModule

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
