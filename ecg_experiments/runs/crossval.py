"""Record-grouped k-fold cross-validation of one configuration (`cv.folds=5`).

The training pool of the data's split (train + validation; the test split is never used)
is cut into folds by record with scikit-learn's StratifiedGroupKFold (`data.folds`,
`data.fold`); each fold is one fit, tracked as an MLflow child run of a parent.

The parent gets (`summarise_folds`) the fold mean and sd of every validation metric
- at each fold's own best epoch of the monitored metric (`cv/<metric>_mean|_std`) and of
  each fold's best values (`cv/best/<metric>_mean|_std`): optimistic, since every fold picks
  its epoch on its own validation data;
- at one common epoch count, `cv/epochs`, where the fold mean of the monitored metric is
  best (`cv/at_epochs/<metric>_mean|_std`; the curve over epoch counts is cv_epochs.csv).
A final fit on the whole pool trains for `cv/epochs` epochs, so the value that selects, the
one returned to sweepers under the optimised and monitored metric names and logged as
`best/<metric>`, is the fold mean at `cv/epochs`: the number such a fit reproduces.
`hparams_search=optuna` with `cv.folds` thus selects on the training pool alone.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import get_class
from omegaconf import DictConfig, open_dict

from ecg_experiments.config import group_choice
from ecg_experiments.errors import ConfigError
from ecg_experiments.runs.fits import (
    FitFolder,
    Fitted,
    continue_fit,
    is_resuming,
    keep_configuration,
    mean_and_sd,
    open_parent_run,
    parent_run_ends,
)
from ecg_experiments.runs.sweep_context import default_run_name
from ecg_experiments.tracked_data import log_children_datasets
from ecg_experiments.tracking import RUN_ID_FILE, log_files

log = logging.getLogger(__name__)


def check_cross_validation(cfg: DictConfig) -> int:
    """The number of folds, after refusing what cannot be cross-validated (before any work)."""
    folds = cfg.cv.folds
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ConfigError(f"cv.folds={folds!r}: expected an integer >= 2 (or null: no CV)")
    target = get_class(cfg.data._target_)
    if "folds" not in inspect.signature(target).parameters:
        raise ConfigError(
            f"cv.folds={folds}: {group_choice('data')} has no record or patient ids to make "
            "record-disjoint folds; use data=mitbih or data=physionet, or data=image_folder "
            "with data.group_regex")
    if getattr(target, "needs_groups_for_folds", False) and not cfg.data.get("group_regex"):
        raise ConfigError(f"cv.folds={folds}: {group_choice('data')} needs data.group_regex "
                          "(the record id in each file name) to keep records within a fold")
    if cfg.get("ckpt_path"):
        raise ConfigError("cv.folds: ckpt_path starts one fit from a checkpoint, not a "
                          "cross-validation; resume an interrupted cross-validation with "
                          "hydra.run.dir=<its folder> resume=true")
    return folds


def fold_config(cfg: DictConfig, fold: int, folds: int, run_dir: Path) -> DictConfig:
    """The config of one fold: its data fold, its own folder, no test split, no pruning."""
    one = copy.deepcopy(cfg)
    with open_dict(one):
        one.data.folds, one.data.fold = folds, fold
        one.cv.folds = None
        one.resume, one.ckpt_path = False, None  # the driver resumes a fold (FitFolder)
        one.test = False  # model selection never looks at the test split
        one.also_test = {}  # nor at other test data
        one.paths.run_dir = str(run_dir / f"fold{fold}")
        one.report.log_model = False
        one.optuna_trial = None  # Optuna prunes on the whole CV, not on one fold's epochs
        if one.get("logger"):
            name = cfg.logger.get("run_name") or cfg.get("run_name") or "cv"
            one.logger.run_name = f"{name}-fold{fold}"
    return one


def _resuming(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether this continues a cross-validation that had started in `run_dir` (its parent
    run or a fold folder is there)."""
    started = (run_dir / RUN_ID_FILE).is_file() or (run_dir / "fold0").is_dir()
    return is_resuming(cfg, run_dir, started, "cross-validation")


def summarise(per_fold: pd.DataFrame) -> dict[str, float]:
    """`cv/<metric>_mean` and `cv/<metric>_std` of every column (`mean_and_sd`)."""
    return mean_and_sd(per_fold.drop(columns=["fold", "epoch", "run_id"]), "cv", "folds")


def epoch_curve(histories: list[list[dict[str, float]]]) -> pd.DataFrame:
    """Mean and sd over the folds of every validation metric at each epoch count (1-based
    `epochs`), over the epochs every fold reached: where the CV-chosen epoch count of a
    final fit on the whole training pool is read."""
    frames = [pd.DataFrame(h).assign(fold=k) for k, h in enumerate(histories) if h]
    table = pd.concat(frames, ignore_index=True)
    columns = [c for c in table if c.startswith("val/")]
    table = table.dropna(subset=columns, how="all")
    reached = table.groupby("fold")["epoch"].max().min()
    table = table[table["epoch"] <= reached]
    grouped = table.groupby("epoch")[columns]
    curve = (grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
             .join(grouped.count().add_suffix("_n")))  # folds holding each value
    curve.insert(0, "folds", table.groupby("epoch")["fold"].nunique())
    curve.index = curve.index.astype(int) + 1
    return curve.rename_axis("epochs").reset_index()


def chosen_epochs(curve: pd.DataFrame, metric: str, mode: str) -> dict[str, float]:
    """`cv/epochs`: the epoch count whose fold-mean of `metric` is best, and every
    validation metric's mean and sd there (`cv/at_epochs/<metric>_mean|_std`)."""
    column = f"{metric}_mean"
    if column not in curve:
        return {}
    row = curve.loc[curve[column].idxmax() if mode == "max" else curve[column].idxmin()]
    values = {f"cv/at_epochs/{k}": float(v) for k, v in row.items()
              if k.endswith(("_mean", "_std"))}
    # a metric some folds lack there is a mean over fewer folds: say over how many
    short = {k.removesuffix("_n"): int(v) for k, v in row.items()
             if k.endswith("_n") and v < row["folds"]}
    values.update({f"cv/at_epochs/{k}_n": float(v) for k, v in short.items()})
    if short:
        log.warning("at %d epochs, averaged over fewer than the %d folds (a value is missing "
                    "in the others): %s", int(row["epochs"]), int(row["folds"]),
                    ", ".join(f"{k} over {v}" for k, v in short.items()))
    return {"cv/epochs": float(row["epochs"]), **values}


def _best_row(history: list[dict[str, float]], metric: str, mode: str) -> dict[str, float]:
    rows = [row for row in history if metric in row]
    pick = max if mode == "max" else min
    return pick(rows, key=lambda row: row[metric]) if rows else {}


@dataclass
class CVSummary:
    """What the folds of a cross-validation add up to (`summarise_folds`)."""

    per_fold: pd.DataFrame  # each fold at its own best epoch, and its best values (best/...)
    curve: pd.DataFrame  # fold mean and sd of every validation metric per epoch count
    metrics: dict[str, float]  # cv/...: what the parent run logs
    selection: dict[str, float]  # monitored and optimised metric: the fold mean at cv/epochs


def summarise_folds(fits: Sequence[Fitted], monitor: str, mode: str,
                    optimized: str) -> CVSummary:
    """The parent's numbers from the folds' fits (their per-epoch histories and best values).

    `selection` (what sweepers get, logged as `best/<metric>`) holds, for the monitored and
    the optimised metric, the fold mean at the common epoch count `cv/epochs`
    (`cv/at_epochs/<metric>_mean`), the count a final fit trains for; not the mean of each
    fold's best (`cv/best/<metric>_mean`, kept as the optimistic figure).
    """
    rows = []
    for fold, fitted in enumerate(fits):
        best = _best_row(fitted.history, monitor, mode)
        row = {"fold": fold, "epoch": best.get("epoch"), "run_id": fitted.run_id}
        row.update({k: v for k, v in best.items() if k.startswith("val/")})
        row.update({f"best/{k}": v for k, v in fitted.metrics.items() if k.startswith("val/")})
        rows.append(row)
    per_fold = pd.DataFrame(rows)
    metrics = summarise(per_fold)
    curve = epoch_curve([fitted.history for fitted in fits])
    metrics.update(chosen_epochs(curve, monitor, mode))
    selection = {name: metrics[f"cv/at_epochs/{name}_mean"]
                 for name in dict.fromkeys([monitor, optimized])
                 if f"cv/at_epochs/{name}_mean" in metrics}
    return CVSummary(per_fold, curve, metrics, selection)


def cross_validate(cfg: DictConfig, fit_one: Callable[..., Any],
                   tags: dict[str, str] | None = None) -> dict[str, float]:
    """Fit every fold of `cfg.cv.folds` and track them under one parent run (with `tags`
    added, e.g. the run it nests under); return the means over the folds (`cv/...`) and,
    under the optimised and monitored metric names, their fold mean at the common epoch
    count `cv/epochs` (what sweepers compare; `summarise_folds`)."""
    folds = check_cross_validation(cfg)
    run_dir = Path(cfg.paths.run_dir)
    resume = _resuming(cfg, run_dir)
    keep_configuration(cfg, run_dir, resume)
    name = (cfg.get("logger") or {}).get("run_name") or default_run_name() or "run"
    if cfg.get("logger"):  # the folds' names build on it; saved with the parent's config
        with open_dict(cfg):
            cfg.logger.run_name = name
    parent = open_parent_run(cfg, run_dir, resume, {"cv.folds": str(folds)},
                             f"{name}-cv{folds}", nest_under=tags)
    monitor, mode = str(cfg.monitor.metric), str(cfg.monitor.mode)
    optimized = str(cfg.get("optimized_metric") or monitor)
    fits: list[Fitted] = []
    assignment = []
    with parent_run_ends(parent):
        for fold in range(folds):
            folder = FitFolder(run_dir / f"fold{fold}")
            fitted = folder.finished() if resume else None
            if fitted is not None:
                log.info("cross-validation: fold %d of %d finished before (MLflow run %s)",
                         fold + 1, folds, fitted.run_id)
            else:
                log.info("cross-validation: fold %d of %d", fold + 1, folds)
                fold_tags = {"cv.fold": str(fold), "cv.folds": str(folds)}
                if parent is not None:
                    fold_tags["mlflow.parentRunId"] = parent.run_id
                one = fold_config(cfg, fold, folds, run_dir)
                continue_fit(one, folder, resume, parent)
                fitted = fit_one(one, fold_tags)
                folder.save(fitted)
            fits.append(fitted)
            frame = fitted.split
            if frame is not None and "record" in frame:
                held = frame.loc[frame["split"] == "val", "record"].unique()
                assignment += [{"record": r, "fold": fold} for r in sorted(held)]
    if parent is not None:
        log_children_datasets(parent.experiment, parent.run_id, [f.run_id for f in fits])
    result = summarise_folds(fits, monitor, mode, optimized)
    per_fold, curve, summary, selection = (result.per_fold, result.curve, result.metrics,
                                           result.selection)
    per_fold.to_csv(run_dir / "cv_folds.csv", index=False)
    curve.to_csv(run_dir / "cv_epochs.csv", index=False)
    files = {"per_fold": run_dir / "cv_folds.csv", "epochs": run_dir / "cv_epochs.csv"}
    if assignment:
        pd.DataFrame(assignment).to_csv(run_dir / "cv_records.csv", index=False)
        files["records"] = run_dir / "cv_records.csv"
    _print_summary(per_fold, summary, monitor, optimized)
    if parent is not None:
        parent.log_metrics({**summary, **{f"best/{k}": v for k, v in selection.items()}})
        log_files(parent, files, "cv")
        parent.finalize("success")
    if "cv/epochs" in summary:
        # a schedule with a length (cosine's T_max follows trainer.max_epochs) must keep the
        # folds' length in the final fit, or its rates after epoch 1 differ
        t_max = (cfg.get("scheduler") or {}).get("T_max")
        schedule = f" scheduler.T_max={t_max}" if t_max is not None else ""
        log.info("cross-validation of %d folds: %s = %.4f +- %.4f, the fold mean after %d "
                 "epochs (what selects, and what a final fit on the whole pool with "
                 "trainer.max_epochs=%d%s reproduces; the mean of the folds' own bests: %.4f, "
                 "optimistic)", folds, optimized,
                 selection.get(optimized, float("nan")),
                 summary.get(f"cv/at_epochs/{optimized}_std", float("nan")),
                 summary["cv/epochs"], summary["cv/epochs"], schedule,
                 summary.get(f"cv/best/{optimized}_mean", float("nan")))
    else:
        log.warning("cross-validation of %d folds: no fold logged %s, nothing to select on",
                    folds, monitor)
    return {**summary, **selection}


def _print_summary(per_fold: pd.DataFrame, summary: dict[str, float], *metrics: str) -> None:
    """Each fold at its own best epoch, their mean (optimistic), then the fold mean at
    `cv/epochs`: the row that selects."""
    from rich.console import Console
    from rich.table import Table

    shown = [m for m in dict.fromkeys([*metrics, "val/acc", "val/loss"]) if m in per_fold]
    view = Table(title=f"Cross-validation by record ({len(per_fold)} folds): each at its own "
                       "best epoch; the last row selects")
    for column in ("fold", "epoch", *shown):
        view.add_column(column, justify="right")
    for row in per_fold.to_dict("records"):
        view.add_row(str(row["fold"]), str(row["epoch"]), *[f"{row[m]:.4f}" for m in shown])

    def mean_sd(prefix: str, metric: str) -> str:
        mean, sd = summary.get(f"{prefix}{metric}_mean"), summary.get(f"{prefix}{metric}_std")
        return "" if mean is None else f"{mean:.4f} ± {sd:.4f}"

    view.add_row("mean ± sd", "own best", *[mean_sd("cv/", m) for m in shown])
    if "cv/epochs" in summary:
        view.add_row("mean ± sd", f"after {int(summary['cv/epochs'])} (cv/epochs)",
                     *[mean_sd("cv/at_epochs/", m) for m in shown])
    Console(width=max(Console().width, 100)).print(view)
