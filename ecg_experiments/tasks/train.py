"""Train, test and track one experiment: `python -m ecg_experiments.train [overrides]`."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ecg_experiments.interruption import TrainingInterrupted, exit_interrupted
from ecg_experiments.runs.crossval import cross_validate
from ecg_experiments.runs.fit import fit_one
from ecg_experiments.runs.repeats import repeat_seeds


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test the best checkpoint and track one run; return its metrics.

    The result holds the test metrics (`test/...`, with confidence intervals) and the best
    value over the epochs of the monitored and of the optimised validation metric under
    their names (`cfg.monitor.metric`, `cfg.optimized_metric`). With `cv.folds`, the run is
    a record-grouped cross-validation instead (`cross_validate`): no test split is scored
    and the values are the fold means at `cv/epochs`. With `repeat.seeds`, each seed is one such
    run (`repeat_seeds`) and the values are the seed means (`seeds/...`).
    """
    try:
        if OmegaConf.select(cfg, "repeat.seeds") is not None:
            return repeat_seeds(cfg, fit_one)
        if (cfg.get("cv") or {}).get("folds"):
            return cross_validate(cfg, fit_one)
        return fit_one(cfg).metrics
    except TrainingInterrupted as stop:  # the whole run (all folds) resumes from its folder
        exit_interrupted(stop, Path(cfg.paths.run_dir))
