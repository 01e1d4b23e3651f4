"""One fit of one configuration, tracked as one MLflow run: build the data, the network and
the trainer, train, then hand the best checkpoint to the scoring stage (runs/score.py), the
other test sets (runs/crossdb.py) and the model log. `fit_one` is what the drivers (cross-
validation, seed repeats) call once per fold or seed."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ecg_experiments.config import build, group_choice, to_container, validate_train_config
from ecg_experiments.data.base import ClassDataModule
from ecg_experiments.evaluation.explore import explore_data
from ecg_experiments.evaluation.seen import SeenSamples
from ecg_experiments.interruption import (
    TERMINATED_EXIT_CODE,
    CheckpointOnTerminate,
    RandomState,
    TrainingInterrupted,
)
from ecg_experiments.models.adversary import RecordAdversary, feature_width
from ecg_experiments.models.checkpoint import InitReport, init_from
from ecg_experiments.models.classifier import ClassifierModule
from ecg_experiments.models.feature_cache import plan_feature_cache
from ecg_experiments.models.freezing import FreezePolicy, NoFreezing, count_trainable
from ecg_experiments.runs.crossdb import also_test
from ecg_experiments.runs.fit_setup import (
    build_callbacks,
    check_accelerator,
    check_optimized_metric,
    class_weights,
    interrupted,
    resume_point,
    set_threads,
    settle_precision,
    write_run_files,
)
from ecg_experiments.runs.fits import Fitted
from ecg_experiments.runs.score import Scoring, check_scorable, score
from ecg_experiments.runs.sweep_context import default_run_name, sweep_tags
from ecg_experiments.tracked_data import CONTEXTS, log_datasets
from ecg_experiments.tracking import (
    RUN_ID_FILE,
    choice_tags,
    log_files,
    log_model,
    log_run_metadata,
)

log = logging.getLogger(__name__)


def fit_one(cfg: DictConfig, tags: dict[str, str] | None = None) -> Fitted:
    """One fit (and test, unless `test=false`) of `cfg`, tracked as one MLflow run with
    `tags` added (e.g. the parent run of a cross-validation)."""
    validate_train_config(cfg)
    check_accelerator(cfg)
    settle_precision(cfg)
    set_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.run_dir)
    resume_from, resume_run_id = resume_point(cfg, run_dir)
    if resume_from:  # it writes into its own checkpoint folder again: no clash to warn of
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not")
    # the logger first: an unreachable tracking server fails before any data work
    logger = None
    if cfg.get("logger"):
        logger = build(cfg.logger, tags={**sweep_tags(), **(tags or {})},
                       run_id=resume_run_id,
                       run_name=cfg.logger.get("run_name") or default_run_name())
    datamodule = fit_data(cfg)
    validation_metrics = check_optimized_metric(cfg, datamodule.class_names)
    scoring = scoring_for_fit(cfg, datamodule, run_dir)
    net, freeze, init = build_network(cfg, datamodule, scoring)
    module = build_module(cfg, net, datamodule, scoring)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, **attach_feature_cache(cfg, net, freeze, datamodule, module),
        # ours first: the configured callbacks see checkpoints as they are written
        callbacks=[CheckpointOnTerminate(run_dir / "checkpoints"), RandomState(),
                   *build_callbacks(cfg, logger is not None), *freeze.callbacks()],
        logger=logger or False,
    )
    # under DDP every process runs this function; only rank 0 writes files and tracks
    tracked = logger if trainer.is_global_zero else None
    if trainer.is_global_zero:
        start_run_files(cfg, datamodule, run_dir, tracked, resume_from, resume_run_id, init,
                        net)
    train_model(trainer, module, datamodule, tracked, resume_from)
    history = [module.history[epoch] for epoch in sorted(module.history)]
    try:
        metrics = after_fit(cfg, module, datamodule, trainer, validation_metrics, history,
                            scoring, tracked)
    except TrainingInterrupted:
        raise
    except BaseException:  # a failure after training never leaves the run RUNNING
        if tracked is not None:
            tracked.experiment.set_terminated(tracked.run_id, "FAILED")
        raise
    if tracked is not None:
        # Lightning finalises its loggers, but not under fast_dev_run (it swaps in a dummy)
        tracked.finalize("success")
        log.info("MLflow run %s in %s", tracked.run_id, tracked._tracking_uri)
    return Fitted(metrics, history, tracked.run_id if tracked is not None else None,
                  datamodule.split_frame)


def fit_data(cfg: DictConfig) -> ClassDataModule:
    """The DataModule of `cfg.data`, prepared and set up for fitting; class names found in
    the data (e.g. image folder names) are written into the config."""
    datamodule: ClassDataModule = build(cfg.data)
    datamodule.training_seed = int(cfg.seed)  # the order of training samples; data.seed splits
    if cfg.get("adversary"):  # training batches carry each beat's record
        datamodule.records_in_batches = True
    datamodule.prepare_data()
    datamodule.setup("fit")
    if cfg.data.get("class_names") is None:
        with open_dict(cfg):
            cfg.data.class_names = list(datamodule.class_names)
    return datamodule


def scoring_for_fit(cfg: DictConfig, datamodule: ClassDataModule, run_dir: Path) -> Scoring:
    """How the best checkpoint will be scored, knowing the samples the fit sees; test
    samples identical to training ones stop the fit here, before any work."""
    seen_frame = datamodule.seen_frame()
    scoring = Scoring(cfg.report, int(cfg.seed), run_dir / "report", None,
                      "Test metrics per class (best checkpoint)",
                      seen=SeenSamples.from_frame(seen_frame) if seen_frame is not None
                      else None, allow_seen=bool(cfg.get("allow_seen")))
    if cfg.get("test"):
        check_scorable(datamodule, ["test"], scoring)
    return scoring


def build_network(cfg: DictConfig, datamodule: ClassDataModule, scoring: Scoring
                  ) -> tuple[torch.nn.Module, FreezePolicy, InitReport | None]:
    """The network of `cfg.model.net`, loaded from `model.init_from` (whose seen samples the
    new model has seen too) and then frozen by `cfg.freeze`."""
    net = build(cfg.model.net)
    init = None
    if cfg.model.get("init_from"):  # fine-tune a previous model (before freezing)
        init = init_from(net, str(cfg.model.init_from), cfg.paths.tracking_uri,
                         datamodule.class_names, cfg.model.get("init_class_map"),
                         tuple(getattr(datamodule, "feature_names", ()) or ()),
                         tuple(getattr(datamodule, "lead_names", ()) or ()))
    if init is not None and scoring.seen is not None:  # what the source model saw, it saw
        stored = torch.load(init.source, map_location="cpu", weights_only=True)
        scoring.seen = scoring.seen.merged(SeenSamples.from_checkpoint(
            stored.get("ecg_seen") if isinstance(stored, dict) else None))
        if cfg.get("test"):
            check_scorable(datamodule, ["test"], scoring)
    freeze = build(cfg.freeze) if cfg.get("freeze") else NoFreezing()
    freeze.apply(net)
    if (not isinstance(freeze, NoFreezing) and cfg.model.get("pretrained", "") is None
            and not cfg.model.get("init_from")):
        log.warning("%s freezes layers of a randomly initialised network "
                    "(model.pretrained=null); set model.pretrained=imagenet or a weights file "
                    "for transfer learning", group_choice("freeze"))
    log.info("parameters: %(model.params_total)d, trainable: %(model.params_trainable)d",
             parameter_counts(net))
    return net, freeze, init


def attach_feature_cache(cfg: DictConfig, net: torch.nn.Module, freeze: FreezePolicy,
                         datamodule: ClassDataModule, module: ClassifierModule
                         ) -> dict[str, Any]:
    """Frozen layers computed once where they can be (models/feature_cache.py); the
    Trainer options that go with it: with `gradual`, the loaders are made again at every
    epoch, so each epoch's batches (cached or not) follow the epoch, resumed runs too."""
    cache = plan_feature_cache(cfg, net, freeze, datamodule)
    datamodule.feature_cache = module.feature_cache = cache
    if cache is None or cache.until_epoch is None:
        return {}
    return {"reload_dataloaders_every_n_epochs": 1}


def parameter_counts(net: torch.nn.Module) -> dict[str, int]:
    return {"model.params_total": sum(p.numel() for p in net.parameters()),
            "model.params_trainable": count_trainable(net)}


def build_module(cfg: DictConfig, net: torch.nn.Module, datamodule: ClassDataModule,
                 scoring: Scoring) -> ClassifierModule:
    """The LightningModule: loss, optimizer and scheduler, metrics, and what its checkpoints
    store (config, input description, seen samples)."""
    return ClassifierModule(
        net=net,
        class_names=datamodule.class_names,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        monitor=cfg.monitor.metric,
        class_weights=class_weights(cfg, datamodule),
        label_smoothing=cfg.loss.label_smoothing,
        focal_gamma=float(cfg.loss.get("focal_gamma") or 0.0),
        config=to_container(cfg),
        input_spec=datamodule.input_spec(),
        seen=scoring.seen,
        channels_last=bool(cfg.model.get("channels_last")),
        adversary=build_adversary(cfg, net, datamodule),
    )


def build_adversary(cfg: DictConfig, net: torch.nn.Module, datamodule: ClassDataModule
                    ) -> RecordAdversary | None:
    """`adversary=records`: a record classifier over this fit's training records."""
    if not cfg.get("adversary"):
        return None
    records = list(datamodule.training_records or [])
    adversary = instantiate(cfg.adversary)(
        width=feature_width(net, datamodule.input_spec().shape), records=len(records))
    log.info("adversary=records: a record classifier over the %d training records, its "
             "gradient reversed into the features (weight %g, %s schedule)", len(records),
             adversary.weight, adversary.schedule)
    return adversary


def start_run_files(cfg: DictConfig, datamodule: ClassDataModule, run_dir: Path,
                    tracked: Any, resume_from: str | None, resume_run_id: str | None,
                    init: InitReport | None, net: torch.nn.Module) -> None:
    """Rank 0, before training: the run folder's files and, when tracked, the run's tags,
    params, datasets and exploration figures."""
    files = write_run_files(cfg, datamodule, run_dir)
    if tracked is None:
        return
    tags = choice_tags()
    tags.update({f"data.{k}": v for k, v in datamodule.fingerprint().items()})
    tags.update({str(k): str(v) for k, v in (cfg.get("tags") or {}).items()})
    if resume_from:
        tags["resumed_from"] = resume_from
    if init is not None:
        tags["init_from.checkpoint"] = str(init.source)
        tags["init_from.loaded_tensors"] = str(len(init.loaded))
        tags["init_from.reinitialised"] = ", ".join(init.reinitialised) or "none"
        tags["init_from.classes_by_name"] = ", ".join(init.matched_classes) or "none"
    # params are immutable in MLflow: a resumed run keeps those it started with
    log_run_metadata(tracked, cfg, files["config"], tags, params=resume_run_id is None)
    if resume_run_id is None:
        tracked.log_hyperparams(parameter_counts(net))
        # a part the run never scores (a CV fold, test=false) is not logged as testing
        log_datasets(tracked.experiment, tracked.run_id, datamodule,
                     tags.get("choice.data", "data"),
                     {k: v for k, v in CONTEXTS.items() if k != "test" or cfg.get("test")})
    (run_dir / RUN_ID_FILE).write_text(tracked.run_id)
    if "split" in files:
        tracked.experiment.log_artifact(tracked.run_id, str(files["split"]))
    if cfg.report.explore:
        explore_files = explore_data(datamodule, run_dir / "explore",
                                     cfg.report.examples_per_class, cfg.seed)
        log_files(tracked, explore_files, "explore")


def train_model(trainer: pl.Trainer, module: ClassifierModule, datamodule: ClassDataModule,
                tracked: Any, resume_from: str | None) -> None:
    """`trainer.fit`; a scheduler's SIGTERM or Ctrl-C mark the run KILLED and raise
    TrainingInterrupted (CheckpointOnTerminate saved where it stopped)."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    except SIGTERMException as err:
        raise interrupted(tracked, "Terminated (SIGTERM)", TERMINATED_EXIT_CODE) from err
    except SystemExit as err:
        if trainer.interrupted:  # Ctrl-C: Lightning shut down and exits
            raise interrupted(tracked, "Interrupted", err.code if isinstance(err.code, int)
                              else 1) from err
        raise
    finally:
        datamodule.shutdown_workers()


def after_fit(cfg: DictConfig, module: ClassifierModule, datamodule: ClassDataModule,
              trainer: pl.Trainer, validation_metrics: dict[str, str],
              history: list[dict[str, float]], scoring: Scoring, tracked: Any
              ) -> dict[str, float]:
    """The best validation values, the test of the best checkpoint (the scoring stage) and
    the other test sets, and the logged model; returns the run's metrics."""
    metrics: dict[str, float] = {}
    # the checkpoint of the best validation epoch, or of the last epoch when model_checkpoint
    # monitors nothing (a fixed epoch count, e.g. the one CV chose); time_checkpoint keeps
    # no top-k checkpoint
    checkpoint = next((c for c in trainer.callbacks
                       if isinstance(c, ModelCheckpoint) and c.save_top_k != 0), None)
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    # the best value over the epochs of the monitored and the optimised metric: what the
    # sweeper gets, what the parent run of a sweep compares (best/<metric>)
    best = {name: module.best(name, mode) for name, mode in validation_metrics.items()}
    best = {name: value for name, value in best.items() if value is not None}
    metrics.update(best)
    if tracked is not None and best:
        tracked.log_metrics({f"best/{name}": value for name, value in best.items()})
    if cfg.get("test"):
        scoring.history, scoring.logger = history, tracked
        try:
            metrics.update(score(module, datamodule, trainer, ["test"], scoring,
                                 ckpt_path=best_path or None))
        except SIGTERMException as err:  # the fit is complete: resume=true tests it again
            raise interrupted(tracked, "Terminated (SIGTERM) while testing",
                               TERMINATED_EXIT_CODE) from err
        test_samples = int(metrics.pop("test/samples", 0))
        if trainer.is_global_zero and cfg.get("also_test") and not best_path:
            log.warning("also_test: no best checkpoint was saved (fast_dev_run or "
                        "checkpointing off): the other test sets are skipped")
        elif trainer.is_global_zero and cfg.get("also_test"):  # other data, one table
            metrics.update(also_test(cfg, best_path, metrics, test_samples,
                                     Path(cfg.paths.run_dir), tracked))
    if tracked is not None and cfg.report.log_model:
        example = next(iter(datamodule.test_dataloader()))[0][:4]
        preprocessing = {"input": datamodule.input_spec().to_dict(),
                         "data": to_container(cfg.data)}
        log_model(tracked, module.net, example, datamodule.class_names, preprocessing,
                  best_path or None)
    return metrics
