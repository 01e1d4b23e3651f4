"""Several trained models as one: `python -m ecg_experiments.ensemble members=[...]`.

- `members` naming models (checkpoint files, run folders, MLflow run ids, the parent run of
  `repeat.seeds`; runs/members.py): they become one model (models/ensemble.py) saved as
  `<run dir>/checkpoints/ensemble.ckpt` and logged as an MLflow run with its model, which
  `evaluate`, `predict`, `explain`, `export` and `init_from`'s refusal read like any other.
  `test=true` scores it on its own data's test split and on `also_test` data, as train does.
- `members` naming the folder of one repeated cross-validation (`repeat.seeds` with
  `cv.folds`): the seeds are averaged fold by fold and scored on each fold's validation
  records (runs/ensemble_cv.py), beside the mean single model: `cv_ensemble.csv`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from ecg_experiments.config import build, to_container
from ecg_experiments.errors import ConfigError
from ecg_experiments.io import atomic_path
from ecg_experiments.models.checkpoint import TrainedModel, load_trained_model
from ecg_experiments.models.ensemble import build_ensemble, save_ensemble
from ecg_experiments.runs.crossdb import also_test
from ecg_experiments.runs.ensemble_cv import SUMMARY, cross_validate_ensemble
from ecg_experiments.runs.members import Member, repeated_cv, resolve_members
from ecg_experiments.runs.score import evaluate_model
from ecg_experiments.tasks.evaluate import data_for_model
from ecg_experiments.tracking import choice_tags, log_files, log_model, log_run_metadata

log = logging.getLogger(__name__)


def ensemble(cfg: DictConfig) -> dict[str, float]:
    """Build, save, log (and with `test=true` score) the ensemble of `cfg.members`, or the
    cross-validation estimate of a repeated cross-validation's seeds; return the metrics."""
    given = cfg.get("members") or []
    entries = [str(given)] if isinstance(given, str) else [str(e) for e in given]
    if not entries:
        raise ConfigError("members=[...]: name the models to average (checkpoint files, run "
                          "folders, MLflow run ids, or the parent run of repeat.seeds)")
    folds = repeated_cv(Path(entries[0])) if len(entries) == 1 else None
    if folds is not None:
        if cfg.get("test"):
            raise ConfigError(f"test=true: {entries[0]} is a repeated cross-validation, whose "
                              "ensembles are scored on each fold's validation records, never "
                              "on a test split; ensemble the final fits to test (members=[<the "
                              "parent run of their repeat.seeds>])")
        return ensemble_cross_validation(cfg, Path(entries[0]), folds)
    return ensemble_model(cfg, resolve_members(entries, cfg.paths.tracking_uri,
                                               Path(cfg.paths.run_dir) / "members"))


def _logger(cfg: DictConfig, name: str, tags: dict[str, str]) -> object | None:
    if not cfg.get("logger"):
        return None
    return build(cfg.logger, run_name=cfg.logger.get("run_name") or name, tags=tags)


def _scoring_config(cfg: DictConfig, model: TrainedModel) -> DictConfig:
    """What `also_test` reads: the ensemble's data and `also_test` entries (the first
    member's, stored in its config) updated with this command's, with this command's
    trainer, report, logger and seed."""
    merged = OmegaConf.merge(model.config.get("also_test") or {}, cfg.get("also_test") or {})
    entries = {k: v for k, v in merged.items() if v is not None}
    return OmegaConf.create({
        "data": to_container(model.config.data),
        "also_test": {k: to_container(v) for k, v in entries.items()},
        **{k: to_container(cfg[k]) if isinstance(cfg[k], DictConfig) else cfg[k]
           for k in ("trainer", "report", "logger", "seed", "allow_seen") if k in cfg}})


def ensemble_model(cfg: DictConfig, members: list[Member]) -> dict[str, float]:
    """One model of `members`: saved, logged and, with `test=true`, scored."""
    run_dir = Path(cfg.paths.run_dir)
    models = [load_trained_model(m.checkpoint) for m in members]
    model = build_ensemble(models, [m.source for m in members],
                           run_dir / "checkpoints" / "ensemble.ckpt")
    save_ensemble(model)
    log.info("ensemble of %d models (%s) saved in %s", len(models), model.input.describe(),
             model.checkpoint)
    tags = {**choice_tags(), **{str(k): str(v) for k, v in (cfg.get("tags") or {}).items()},
            "ensemble.size": str(len(models)),
            "ensemble.members": ", ".join(m.source for m in members)[:5000]}
    logger = _logger(cfg, f"ensemble-{len(models)}", tags)
    metrics: dict[str, float] = {}
    if cfg.get("test"):
        data = data_for_model(cfg, model, explicit=[])
        metrics = evaluate_model(cfg, model, data, "the model's own data", run_dir,
                                 (lambda: logger) if logger is not None else None, tags,
                                 f"Ensemble of {len(models)} models: its test split")
        samples = int(metrics.pop("test/samples"))
        scoring = _scoring_config(cfg, model)
        if scoring.get("also_test"):
            metrics.update(also_test(scoring, str(model.checkpoint), metrics, samples,
                                     run_dir, logger))
    elif logger is not None:
        config_file = run_dir / "config.yaml"
        OmegaConf.save(cfg, config_file, resolve=True)
        log_run_metadata(logger, cfg, config_file, tags)
    if logger is not None:
        example = torch.rand(2, *model.input.shape, generator=torch.Generator().manual_seed(0))
        log_model(logger, model.net, example, model.class_names,
                  {"input": model.input.to_dict(), "data": to_container(model.config.data)},
                  model.checkpoint)
        logger.experiment.set_terminated(logger.run_id, "FINISHED")
        print(f"ensemble run {logger.run_id}: python -m ecg_experiments.evaluate "
              f"run_id={logger.run_id}")
    return metrics


def _print_summary(summary: dict[str, float], seeds: int, folds: int) -> None:
    view = Table(title=f"Cross-validation: ensemble of {seeds} seeds vs the mean single model "
                       f"({folds} folds, validation records)")
    for column in ("metric", "ensemble (mean ± sd over folds)",
                   "single model (mean ± sd over seeds)", "gain"):
        view.add_column(column, justify="left" if column == "metric" else "right")
    for metric in SUMMARY:
        name = metric.removeprefix("val/")
        if f"cv_ensemble/val/{name}_mean" not in summary:
            continue
        ens, ens_sd = summary[f"cv_ensemble/val/{name}_mean"], summary.get(
            f"cv_ensemble/val/{name}_std", float("nan"))
        one, one_sd = summary[f"cv_members/val/{name}_mean"], summary.get(
            f"cv_members/val/{name}_std", float("nan"))
        view.add_row(name, f"{ens:.4f} ± {ens_sd:.4f}", f"{one:.4f} ± {one_sd:.4f}",
                     f"{summary[f'cv_ensemble/gain/val/{name}']:+.4f}")
    Console(width=max(Console().width, 120)).print(view)


def ensemble_cross_validation(cfg: DictConfig, folder: Path,
                              folds: dict[int, list[Member]]) -> dict[str, float]:
    """The cross-validation estimate of the seeds of `folder` averaged fold by fold."""
    run_dir = Path(cfg.paths.run_dir)
    seeds = len(next(iter(folds.values())))
    table, summary = cross_validate_ensemble(folds)
    out = run_dir / "cv_ensemble.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    _print_summary(summary, seeds, len(folds))
    logger = _logger(cfg, f"ensemble-cv-{folder.name}",
                     {**choice_tags(), "ensemble.cross_validation": str(folder.resolve()),
                      "ensemble.size": str(seeds), "cv.folds": str(len(folds))})
    if logger is not None:
        config_file = run_dir / "config.yaml"
        OmegaConf.save(cfg, config_file, resolve=True)
        log_run_metadata(logger, cfg, config_file, {})
        logger.log_metrics(summary)
        log_files(logger, {"cv_ensemble": out}, "report")
        logger.experiment.set_terminated(logger.run_id, "FINISHED")
    print(f"per fold and model: {out}")
    return summary

