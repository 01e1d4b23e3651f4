"""Train, test and track one experiment: `python -m ecg_experiments.train [overrides]`."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from sklearn.utils.class_weight import compute_class_weight

from ecg_experiments.config import build, group_choice, to_container, validate_train_config
from ecg_experiments.crossval import Fitted, cross_validate
from ecg_experiments.data.base import ClassDataModule
from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.seen import SeenSamples
from ecg_experiments.interruption import (
    TERMINATED_EXIT_CODE,
    CheckpointOnTerminate,
    RandomState,
    TrainingInterrupted,
    exit_interrupted,
    slurm_restart_count,
)
from ecg_experiments.models.checkpoint import init_from
from ecg_experiments.models.classifier import ClassifierModule
from ecg_experiments.models.freezing import NoFreezing, count_trainable
from ecg_experiments.sweepers.optuna import build_from_config
from ecg_experiments.sweepers.parent_run import parent_run_file
from ecg_experiments.sweepers.pruning import OptunaPruning
from ecg_experiments.tasks.explore import explore_data
from ecg_experiments.tasks.score import Scoring, check_scorable, score
from ecg_experiments.tracked_data import CONTEXTS, log_datasets
from ecg_experiments.tracking import (
    RUN_ID_FILE,
    choice_tags,
    log_files,
    log_model,
    log_run_metadata,
    run_id_in,
    sweep_id,
)

log = logging.getLogger(__name__)


def _check_accelerator(cfg: DictConfig) -> None:
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"{group_choice('trainer')} (trainer.accelerator={accelerator}) needs a CUDA GPU, "
            "but torch.cuda.is_available() is False on this machine; use trainer=cpu or "
            "trainer=default (auto)"
        )


def _class_weights(cfg: DictConfig, datamodule: ClassDataModule) -> list[float] | None:
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


def _write_run_files(cfg: DictConfig, datamodule: ClassDataModule, run_dir: Path) -> dict:
    """Save the resolved config and the split assignment in the run dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {"config": run_dir / "config.yaml"}
    OmegaConf.save(cfg, files["config"], resolve=True)
    if datamodule.split_frame is not None:
        files["split"] = run_dir / "split.csv"
        datamodule.split_frame.to_csv(files["split"], index=False)
    return files


def _in_sweep() -> bool:
    """Whether this is one job of a multirun (a composed sweep config alone is not)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    return OmegaConf.select(HydraConfig.get(), "job.num", default=None) is not None


def sweep_tags() -> dict[str, str]:
    """In a multirun: the sweep's id, this job's number and the parent run to nest under."""
    if not _in_sweep():
        return {}
    hydra_cfg = HydraConfig.get()
    tags = {"sweep.id": sweep_id(hydra_cfg.sweep.dir), "sweep.job": str(hydra_cfg.job.num)}
    parent = parent_run_file(hydra_cfg.sweep.dir)
    if parent.is_file():
        tags["mlflow.parentRunId"] = parent.read_text().strip()
    return tags


def default_run_name() -> str | None:
    """`<model>-<data>` from the config choices, plus `-job<n>` in a multirun."""
    choices = choice_tags()
    if not choices:
        return None
    name = f"{choices.get('choice.model', 'model')}-{choices.get('choice.data', 'data')}"
    if _in_sweep():
        name += f"-job{HydraConfig.get().job.num}"
    return name


def _set_threads(cfg: DictConfig) -> None:
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


def _callbacks(cfg: DictConfig, with_logger: bool) -> list[pl.Callback]:
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


def _resume_point(cfg: DictConfig, run_dir: Path) -> tuple[str | None, str | None]:
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


def _interrupted(tracked: Any, what: str, exit_code: int) -> TrainingInterrupted:
    """Mark the MLflow run KILLED; the caller raises the returned exception."""
    if tracked is not None:
        tracked.experiment.set_terminated(tracked.run_id, "KILLED")
    return TrainingInterrupted(what, exit_code)


def check_optimized_metric(cfg: DictConfig, class_names: list[str]) -> dict[str, str]:
    """The validation metrics whose best value a run reports, with their direction:
    `monitor.metric` (monitor.mode) and `optimized_metric` (optimized_mode). Stops before
    training when either is not a metric the run computes."""
    from ecg_experiments.evaluation.metrics import metric_names

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


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint and track one run; return its metrics.

    The result holds the test metrics (`test/...`, with confidence intervals) and the best
    value over the epochs of the monitored and of the optimised validation metric under
    their names (`cfg.monitor.metric`, `cfg.optimized_metric`). With `cv.folds`, the run is
    a record-grouped cross-validation instead (`cross_validate`): no test split is scored
    and the values are the fold means at `cv/epochs`. With `repeat.seeds`, each seed is one such
    run (`repeat_seeds`) and the values are the seed means (`seeds/...`).
    """
    from ecg_experiments.repeats import repeat_seeds

    try:
        if OmegaConf.select(cfg, "repeat.seeds") is not None:
            return repeat_seeds(cfg, fit_one)
        if (cfg.get("cv") or {}).get("folds"):
            return cross_validate(cfg, fit_one)
        return fit_one(cfg).metrics
    except TrainingInterrupted as stop:  # the whole run (all folds) resumes from its folder
        exit_interrupted(stop, Path(cfg.paths.run_dir))


def _after_fit(cfg: DictConfig, module: ClassifierModule, datamodule: ClassDataModule,
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
            raise _interrupted(tracked, "Terminated (SIGTERM) while testing",
                               TERMINATED_EXIT_CODE) from err
        test_samples = int(metrics.pop("test/samples", 0))
        if trainer.is_global_zero and cfg.get("also_test") and not best_path:
            log.warning("also_test: no best checkpoint was saved (fast_dev_run or "
                        "checkpointing off): the other test sets are skipped")
        elif trainer.is_global_zero and cfg.get("also_test"):  # other data, one table
            from ecg_experiments.crossdb import also_test

            metrics.update(also_test(cfg, best_path, metrics, test_samples,
                                     Path(cfg.paths.run_dir), tracked))
    if tracked is not None and cfg.report.log_model:
        example = next(iter(datamodule.test_dataloader()))[0][:4]
        preprocessing = {"input": datamodule.input_spec().to_dict(),
                         "data": to_container(cfg.data)}
        log_model(tracked, module.net, example, datamodule.class_names, preprocessing,
                  best_path or None)
    return metrics


def fit_one(cfg: DictConfig, tags: dict[str, str] | None = None) -> Fitted:
    """One fit (and test, unless `test=false`) of `cfg`, tracked as one MLflow run with
    `tags` added (e.g. the parent run of a cross-validation)."""
    validate_train_config(cfg)
    _check_accelerator(cfg)
    _set_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.run_dir)
    resume_from, resume_run_id = _resume_point(cfg, run_dir)
    if resume_from:  # it writes into its own checkpoint folder again: no clash to warn of
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not")
    # the logger first: an unreachable tracking server fails before any data work
    logger = None
    if cfg.get("logger"):
        logger = build(cfg.logger, tags={**sweep_tags(), **(tags or {})},
                       run_id=resume_run_id,
                       run_name=cfg.logger.get("run_name") or default_run_name())

    datamodule: ClassDataModule = build(cfg.data)
    datamodule.training_seed = int(cfg.seed)  # the order of training samples; data.seed splits
    datamodule.prepare_data()
    datamodule.setup("fit")
    if cfg.data.get("class_names") is None:  # found in the data (e.g. image folder names)
        with open_dict(cfg):
            cfg.data.class_names = list(datamodule.class_names)
    validation_metrics = check_optimized_metric(cfg, datamodule.class_names)
    seen_frame = datamodule.seen_frame()
    scoring = Scoring(cfg.report, int(cfg.seed), run_dir / "report", None,
                      "Test metrics per class (best checkpoint)",
                      seen=SeenSamples.from_frame(seen_frame) if seen_frame is not None
                      else None, allow_seen=bool(cfg.get("allow_seen")))
    if cfg.get("test"):  # test samples identical to training ones stop it before any work
        check_scorable(datamodule, ["test"], scoring)
    net = build(cfg.model.net)
    init = None
    if cfg.model.get("init_from"):  # fine-tune a previous model (before freezing)
        init = init_from(net, str(cfg.model.init_from), cfg.paths.tracking_uri,
                         datamodule.class_names, cfg.model.get("init_class_map"))
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
    parameter_counts = {"model.params_total": sum(p.numel() for p in net.parameters()),
                        "model.params_trainable": count_trainable(net)}
    log.info("parameters: %(model.params_total)d, trainable: %(model.params_trainable)d",
             parameter_counts)
    module = ClassifierModule(
        net=net,
        class_names=datamodule.class_names,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        monitor=cfg.monitor.metric,
        class_weights=_class_weights(cfg, datamodule),
        label_smoothing=cfg.loss.label_smoothing,
        focal_gamma=float(cfg.loss.get("focal_gamma") or 0.0),
        config=to_container(cfg),
        input_spec=datamodule.input_spec(),
        seen=scoring.seen,
    )
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        # ours first: the configured callbacks see checkpoints as they are written
        callbacks=[CheckpointOnTerminate(run_dir / "checkpoints"), RandomState(),
                   *_callbacks(cfg, logger is not None), *freeze.callbacks()],
        logger=logger or False,
    )
    # under DDP every process runs this function; only rank 0 writes files and tracks
    tracked = logger if trainer.is_global_zero else None

    if trainer.is_global_zero:
        files = _write_run_files(cfg, datamodule, run_dir)
    if tracked is not None:
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
            tracked.log_hyperparams(parameter_counts)
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

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    except SIGTERMException as err:  # a scheduler's SIGTERM: CheckpointOnTerminate saved it
        raise _interrupted(tracked, "Terminated (SIGTERM)", TERMINATED_EXIT_CODE) from err
    except SystemExit as err:
        if trainer.interrupted:  # Ctrl-C: Lightning shut down and exits
            raise _interrupted(tracked, "Interrupted", err.code if isinstance(err.code, int)
                               else 1) from err
        raise
    finally:
        datamodule.shutdown_workers()
    history = [module.history[epoch] for epoch in sorted(module.history)]
    try:
        metrics = _after_fit(cfg, module, datamodule, trainer, validation_metrics, history,
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
