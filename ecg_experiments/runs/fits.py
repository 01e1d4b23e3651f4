"""What the run drivers share: what one fit leaves (`Fitted`), the folder of one fit inside
a driver's run (`FitFolder`), the configuration a resumed driver must keep, and the mean and
spread over fits (folds, seeds)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf, open_dict

from ecg_experiments.config import build
from ecg_experiments.errors import ConfigError
from ecg_experiments.interruption import TrainingInterrupted, slurm_restart_count
from ecg_experiments.io import atomic_path
from ecg_experiments.runs.sweep_context import sweep_tags
from ecg_experiments.tracking import (
    RUN_ID_FILE,
    choice_tags,
    flatten_config,
    log_run_metadata,
    run_id_in,
)

log = logging.getLogger(__name__)


@dataclass
class Fitted:
    """What one fit (`runs.fit.fit_one`) leaves for a caller: its metrics, the metrics of every
    epoch, the MLflow run (None without a logger) and the DataModule's split table."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    run_id: str | None
    split: Any = None


class FitFolder:
    """The folder of one fit inside a driver's run (`<run>/fold<k>`, `<run>/seed<s>`):
    whether it finished before (its `fitted.json`, the Fitted of that fit), stopped with a
    checkpoint to resume from, or (a seed's cross-validation) had started."""

    def __init__(self, path: Path) -> None:
        self.path = path
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

    def cross_validation_started(self) -> bool:
        """A fit that is itself a cross-validation (a seed with `cv.folds`) had begun."""
        return (self.path / RUN_ID_FILE).is_file() or (self.path / "fold0").is_dir()


CV_CONFIG = "cv_config.yaml"
# what a resume may change: how to resume, and the feature cache (the same model either way)
RESUME_KEYS = ("resume", "ckpt_path", "feature_cache")


def keep_configuration(cfg: DictConfig, run_dir: Path, resuming: bool,
                       saved_name: str = CV_CONFIG, what: str = "the cross-validation") -> None:
    """A run made of several fits (a cross-validation, a repeat over seeds) saves its
    configuration as `saved_name` when it starts; a resume must have the same one (apart
    from RESUME_KEYS), or its fits would mix two experiments."""
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
                    if saved.get(k) != now.get(k) and k.split(".")[0] not in RESUME_KEYS
                    and not (k.endswith("_target_") and same_target(saved.get(k), now.get(k))))
    if differ:
        shown = ", ".join(f"{k} ({saved.get(k)} -> {now.get(k)})" for k in differ[:5])
        raise ConfigError(f"resume of {what} in {run_dir}: its configuration "
                          f"differs from the one it started with: {shown}"
                          + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
                          + "; resume with the printed command, or start a new run")


def same_target(saved: Any, now: Any) -> bool:
    """Whether two `_target_` paths name the same class or function: a run started before a
    module moved names its old path, which is kept as an alias (data/mitbih.py)."""
    try:
        return get_object(str(saved)) is get_object(str(now))
    except (ImportError, AttributeError, ValueError):  # hydra's errors for a missing path
        return False


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


def is_resuming(cfg: DictConfig, run_dir: Path, started: bool, what: str) -> bool:
    """Whether a driver continues an earlier start in `run_dir`: `resume=true` (refused when
    nothing `started` there), or a Slurm job requeued into the folder of one that started."""
    if cfg.get("resume"):
        if not started:
            raise ConfigError(f"resume=true: no {what} to resume in {run_dir}; "
                              "resume inside the interrupted run's folder with "
                              "hydra.run.dir=<outputs/runs/DATE/TIME of that run>")
        return True
    return started and slurm_restart_count() >= 1


def open_parent_run(cfg: DictConfig, run_dir: Path, resuming: bool, tags: dict[str, str],
                    run_name: str, nest_under: Mapping[str, str] | None = None) -> Any:
    """The MLflow run a driver's fits nest under (None without a logger): a new one, with
    the config and `tags` logged and its id written in `run_dir`, or on a resume the
    interrupted one, running again. `nest_under`: tags placing it (e.g. under a seed's run)."""
    if not cfg.get("logger"):
        return None
    parent_id = run_id_in(run_dir) if resuming else None
    parent = build(cfg.logger, tags={**sweep_tags(), **(nest_under or {}), **tags},
                   run_name=run_name, run_id=parent_id)
    if parent_id is None:
        config_file = run_dir / "config.yaml"
        OmegaConf.save(cfg, config_file, resolve=True)
        log_run_metadata(parent, cfg, config_file, {**choice_tags(), **tags})
        (run_dir / RUN_ID_FILE).write_text(parent.run_id)
    else:  # the interrupted parent run continues
        parent.experiment.update_run(parent_id, status="RUNNING")
    return parent


@contextlib.contextmanager
def parent_run_ends(parent: Any) -> Iterator[None]:
    """A parent run whose fits stop: KILLED when interrupted (a resume continues it), FAILED
    otherwise."""
    try:
        yield
    except BaseException as err:
        if parent is not None:
            parent.experiment.set_terminated(
                parent.run_id, "KILLED" if isinstance(err, TrainingInterrupted) else "FAILED")
        raise


def continue_fit(one: DictConfig, folder: FitFolder, resuming: bool, parent: Any) -> None:
    """Set a fit's config to continue where it stopped: from its last checkpoint (in its own
    MLflow run), from a requeued job's checkpoint (fit_one finds it), or from the start, in
    a new run, when it stopped before its first checkpoint."""
    if not resuming:
        return
    if folder.has_checkpoint():
        with open_dict(one):
            one.resume = True
    elif slurm_restart_count() >= 1 and folder.has_slurm_checkpoint():
        pass
    elif parent is not None and folder.stale_run_id():
        parent.experiment.delete_run(folder.stale_run_id())
