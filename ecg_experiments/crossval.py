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
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from ecg_experiments.config import build, group_choice
from ecg_experiments.errors import ConfigError
from ecg_experiments.interruption import TrainingInterrupted, slurm_restart_count
from ecg_experiments.io import atomic_path
from ecg_experiments.tracked_data import log_children_datasets
from ecg_experiments.tracking import RUN_ID_FILE, run_id_in

log = logging.getLogger(__name__)


@dataclass
class Fitted:
    """What one fit (`train.fit_one`) leaves for a caller: its metrics, the metrics of every
    epoch, the MLflow run (None without a logger) and the DataModule's split table."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    run_id: str | None
    split: Any = None


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
        one.resume, one.ckpt_path = False, None  # the driver resumes a fold (FoldFolder)
        one.test = False  # model selection never looks at the test split
        one.also_test = {}  # nor at other test data
        one.paths.run_dir = str(run_dir / f"fold{fold}")
        one.report.log_model = False
        one.optuna_trial = None  # Optuna prunes on the whole CV, not on one fold's epochs
        if one.get("logger"):
            name = cfg.logger.get("run_name") or cfg.get("run_name") or "cv"
            one.logger.run_name = f"{name}-fold{fold}"
    return one


class FoldFolder:
    """A fold's folder (`<run>/fold<k>`): whether it finished before (its `fitted.json`, the
    Fitted of that fit) or stopped with a checkpoint to resume from."""

    def __init__(self, run_dir: Path, fold: int) -> None:
        self.path = run_dir / f"fold{fold}"
        self.result = self.path / "fitted.json"

    def finished(self) -> Fitted | None:
        if not self.result.is_file():
            return None
        saved = json.loads(self.result.read_text())
        split = self.path / "split.csv"
        return Fitted(saved["metrics"], saved["history"], saved["run_id"],
                      pd.read_csv(split) if split.is_file() else None)

    def save(self, fitted: Fitted) -> None:
        """Written last, atomically: a fold with this file is complete."""
        text = json.dumps({"metrics": fitted.metrics, "history": fitted.history,
                           "run_id": fitted.run_id})
        with atomic_path(self.result) as work:
            work.write_text(text)

    def has_checkpoint(self) -> bool:
        return (self.path / "checkpoints" / "last.ckpt").is_file()

    def has_slurm_checkpoint(self) -> bool:
        """Lightning's `hpc_ckpt_<n>.ckpt` (Slurm's warning), which a requeued fit resumes."""
        return any(self.path.glob("hpc_ckpt_*.ckpt"))

    def stale_run_id(self) -> str | None:
        """The MLflow run of a fit that stopped before its first checkpoint."""
        return run_id_in(self.path)


CV_CONFIG = "cv_config.yaml"
# what may differ between a cross-validation and its resume
RESUME_KEYS = ("resume", "ckpt_path")


def keep_configuration(cfg: DictConfig, run_dir: Path, resuming: bool,
                       saved_name: str = CV_CONFIG, what: str = "the cross-validation") -> None:
    """A run made of several fits (a cross-validation, a repeat over seeds) saves its
    configuration as `saved_name` when it starts; a resume must have the same one (apart
    from RESUME_KEYS), or its fits would mix two experiments."""
    from ecg_experiments.tracking import flatten_config

    saved_file = run_dir / saved_name
    if not resuming:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, saved_file, resolve=True)
        return
    if not saved_file.is_file():
        return
    saved = flatten_config(OmegaConf.load(saved_file))
    now = flatten_config(cfg)
    differ = sorted(k for k in set(saved) | set(now)
                    if saved.get(k) != now.get(k) and k.split(".")[0] not in RESUME_KEYS)
    if differ:
        shown = ", ".join(f"{k} ({saved.get(k)} -> {now.get(k)})" for k in differ[:5])
        raise ConfigError(f"resume of {what} in {run_dir}: its configuration "
                          f"differs from the one it started with: {shown}"
                          + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
                          + "; resume with the printed command, or start a new run")


def _resuming(cfg: DictConfig, run_dir: Path) -> bool:
    """`resume=true`, or a Slurm job requeued into the folder of a cross-validation that
    had started (its parent run or a fold folder is there)."""
    started = (run_dir / RUN_ID_FILE).is_file() or (run_dir / "fold0").is_dir()
    if cfg.get("resume"):
        if not started:
            raise ConfigError(f"resume=true: no cross-validation to resume in {run_dir}; "
                              "resume inside the interrupted run's folder with "
                              "hydra.run.dir=<outputs/runs/DATE/TIME of that run>")
        return True
    return started and slurm_restart_count() >= 1


def mean_and_sd(values: pd.DataFrame, prefix: str, unit: str) -> dict[str, float]:
    """`<prefix>/<metric>_mean` and, over two rows or more, `_std` (ddof=1) of every column.

    A metric missing in some rows (a class no fold's validation split holds, a figure a
    seed could not compute) is averaged over the rows that have it: `_n` then says over how
    many, and a warning names it, so a mean over fewer folds or seeds is never passed off as
    one over all of them.
    """
    values = values.astype(float)
    summary = {f"{prefix}/{k}_mean": float(v) for k, v in values.mean().items()}
    if len(values) > 1:
        summary.update({f"{prefix}/{k}_std": float(v) for k, v in values.std(ddof=1).items()})
    counts = values.notna().sum()
    short = counts[counts < len(values)]
    summary.update({f"{prefix}/{k}_n": float(n) for k, n in short.items()})
    if len(short):
        log.warning("averaged over fewer than the %d %s (a value is missing in the others): "
                    "%s", len(values), unit,
                    ", ".join(f"{k} over {int(n)}" for k, n in short.items()))
    return summary


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
    from ecg_experiments.tasks.train import default_run_name, sweep_tags
    from ecg_experiments.tracking import choice_tags, log_files, log_run_metadata

    folds = check_cross_validation(cfg)
    run_dir = Path(cfg.paths.run_dir)
    resuming = _resuming(cfg, run_dir)
    keep_configuration(cfg, run_dir, resuming)
    parent = None
    if cfg.get("logger"):
        name = cfg.logger.get("run_name") or default_run_name() or "run"
        parent_id = run_id_in(run_dir) if resuming else None
        parent = build(cfg.logger, tags={**sweep_tags(), **(tags or {}), "cv.folds": str(folds)},
                       run_name=f"{name}-cv{folds}", run_id=parent_id)
        with open_dict(cfg):
            cfg.logger.run_name = name
        if parent_id is None:
            config_file = run_dir / "config.yaml"
            OmegaConf.save(cfg, config_file, resolve=True)
            log_run_metadata(parent, cfg, config_file,
                             {**choice_tags(), "cv.folds": str(folds)})
            (run_dir / RUN_ID_FILE).write_text(parent.run_id)
        else:  # the interrupted parent run continues
            parent.experiment.update_run(parent_id, status="RUNNING")
    monitor, mode = str(cfg.monitor.metric), str(cfg.monitor.mode)
    optimized = str(cfg.get("optimized_metric") or monitor)
    fits: list[Fitted] = []
    assignment = []
    try:
        for fold in range(folds):
            folder = FoldFolder(run_dir, fold)
            fitted = folder.finished() if resuming else None
            if fitted is not None:
                log.info("cross-validation: fold %d of %d finished before (MLflow run %s)",
                         fold + 1, folds, fitted.run_id)
            else:
                log.info("cross-validation: fold %d of %d", fold + 1, folds)
                fold_tags = {"cv.fold": str(fold), "cv.folds": str(folds)}
                if parent is not None:
                    fold_tags["mlflow.parentRunId"] = parent.run_id
                one = fold_config(cfg, fold, folds, run_dir)
                if resuming and folder.has_checkpoint():
                    with open_dict(one):
                        one.resume = True  # in the fold's own MLflow run
                elif resuming and slurm_restart_count() >= 1 and folder.has_slurm_checkpoint():
                    pass  # fit_one resumes a requeued job from its newest checkpoint
                elif resuming and parent is not None and folder.stale_run_id():
                    # stopped before its first checkpoint: the fold starts again, in a new run
                    parent.experiment.delete_run(folder.stale_run_id())
                fitted = fit_one(one, fold_tags)
                folder.save(fitted)
            fits.append(fitted)
            frame = fitted.split
            if frame is not None and "record" in frame:
                held = frame.loc[frame["split"] == "val", "record"].unique()
                assignment += [{"record": r, "fold": fold} for r in sorted(held)]
    except BaseException as err:
        if parent is not None:  # an interrupted CV resumes (resume=true); a failed one not
            parent.experiment.set_terminated(
                parent.run_id, "KILLED" if isinstance(err, TrainingInterrupted) else "FAILED")
        raise
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
        log.info("cross-validation of %d folds: %s = %.4f +- %.4f, the fold mean after %d "
                 "epochs (what selects, and what a final fit on the whole pool with "
                 "trainer.max_epochs=%d reproduces; the mean of the folds' own bests: %.4f, "
                 "optimistic)", folds, optimized,
                 selection.get(optimized, float("nan")),
                 summary.get(f"cv/at_epochs/{optimized}_std", float("nan")),
                 summary["cv/epochs"], summary["cv/epochs"],
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
