"""Results over seeds (`repeat.seeds`): one configuration fitted once per seed.

Each seed is one fit (`runs.fit.fit_one`: train, test, also_test) or, with `cv.folds`, one
cross-validation (`runs.crossval.cross_validate`), tracked as an MLflow child run of one parent
in its own folder `<run>/seed<s>`. The data split is part of the configuration: the seeds
under `data` that choose and split the samples keep their value for every seed, so only the
training draws change. The parent gets the mean and sample sd (ddof=1) over the seeds of
every metric the seeds return (`seeds/<metric>_mean`, `seeds/<metric>_std`, `seeds.csv`)
and, under `best/<metric>`, the seed mean of the optimised and monitored metrics: what
sweeps, Optuna and `compare` read. An interrupted repeat resumes in its folder
(`resume=true`): finished seeds are kept, the stopped one continues.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ecg_experiments.errors import ConfigError
from ecg_experiments.runs.crossval import check_cross_validation, cross_validate
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
from ecg_experiments.tracking import run_id_in

log = logging.getLogger(__name__)

# the configuration a repeat started with (a resume must run the same one)
REPEAT_CONFIG = "repeat_config.yaml"
SEEDS_TABLE = "seeds.csv"
MAX_SEED = 2**32 - 1  # Lightning's seed_everything range
# metrics per MLflow log_batch call (MLflow accepts at most 1000)
METRIC_BATCH = 500


def check_repeats(cfg: DictConfig) -> list[int]:
    """The seeds of `repeat.seeds`, after refusing what cannot be repeated (before any work).

    A count n means `seed`, `seed + 1`, ..., `seed + n - 1`; a list is taken as it is.
    """
    seeds = OmegaConf.select(cfg, "repeat.seeds")
    if _is_int(seeds):
        if seeds < 1:
            raise ConfigError(f"repeat.seeds={seeds}: expected a count >= 1 or a list of "
                              "distinct integer seeds (or null: one fit)")
        seeds = [int(cfg.seed) + k for k in range(seeds)]
    elif isinstance(seeds, ListConfig | list) and seeds and all(_is_int(s) for s in seeds):
        seeds = [int(s) for s in seeds]
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"repeat.seeds={seeds}: a seed is repeated; expected distinct "
                              "seeds")
    else:
        raise ConfigError(f"repeat.seeds={seeds!r}: expected a count >= 1 (e.g. 5: seed and "
                          "the next four) or a non-empty list of distinct integer seeds")
    outside = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if outside:
        raise ConfigError(f"repeat.seeds: seeds {outside} are outside 0..{MAX_SEED}")
    if cfg.get("ckpt_path"):
        raise ConfigError("repeat.seeds: ckpt_path starts one fit from a checkpoint, not a "
                          "repeat over seeds; resume an interrupted repeat with "
                          "hydra.run.dir=<its folder> resume=true")
    if (cfg.get("cv") or {}).get("folds"):
        check_cross_validation(cfg)
    return seeds


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def pinned_data_seeds(cfg: DictConfig) -> dict[str, int]:
    """Every `seed` under `data` outside its augmentation (e.g. `data.seed`,
    `data.source.seed`) with its value in `cfg`: the seeds that choose and split samples."""
    found: dict[str, int] = {}

    def walk(node: DictConfig, path: str) -> None:
        for key in node:
            if OmegaConf.is_missing(node, key):
                continue
            value = node[key]
            if isinstance(value, DictConfig) and key != "augment":
                walk(value, f"{path}.{key}")
            elif key == "seed" and _is_int(value):
                found[f"{path}.{key}"] = int(value)

    if isinstance(cfg.get("data"), DictConfig):
        walk(cfg.data, "data")
    return found


def seed_config(cfg: DictConfig, seed: int, run_dir: Path, name: str,
                pinned: Mapping[str, int]) -> DictConfig:
    """The config of one seed: `seed`, the data seeds `pinned`, its own folder, no repeat."""
    one = copy.deepcopy(cfg)
    with open_dict(one):
        for path, value in pinned.items():
            OmegaConf.update(one, path, value, merge=False)
        one.seed = seed
        one.repeat.seeds = None
        one.resume, one.ckpt_path = False, None  # the driver resumes a seed (FitFolder)
        one.paths.run_dir = str(run_dir / f"seed{seed}")
        one.optuna_trial = None  # Optuna prunes on the seed mean, not on one seed's epochs
        if one.get("logger"):
            one.logger.run_name = f"{name}-seed{seed}"
    return one


def _resuming(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether this continues a repeat that had started in `run_dir`."""
    return is_resuming(cfg, run_dir, (run_dir / REPEAT_CONFIG).is_file(), "repeat over seeds")


def seeds_table(results: list[tuple[int, Fitted]]) -> pd.DataFrame:
    """One row per seed: seed, run_id and every metric all seeds returned. A metric some
    seed could not give (the +P of a class it never predicts) has no seed mean: a mean over
    the seeds that gave it would favour them; the log names what is left out."""
    names = list(dict.fromkeys(k for _, fitted in results for k in fitted.metrics))
    common = [k for k in names if all(k in fitted.metrics for _, fitted in results)]
    if left := [k for k in names if k not in common]:
        log.warning("no seed mean of %s: not every seed logged %s", ", ".join(left),
                    "it" if len(left) == 1 else "them")
    return pd.DataFrame([{"seed": seed, "run_id": fitted.run_id,
                          **{k: float(fitted.metrics[k]) for k in common}}
                         for seed, fitted in results])


def summarise_seeds(per_seed: pd.DataFrame) -> dict[str, float]:
    """`seeds/<metric>_mean` and, with two seeds or more, `seeds/<metric>_std` (ddof=1)
    (`mean_and_sd`)."""
    return mean_and_sd(per_seed.drop(columns=["seed", "run_id"]), "seeds", "seeds")


def repeat_seeds(cfg: DictConfig, fit_one: Callable[..., Fitted],
                 tags: Mapping[str, str] | None = None) -> dict[str, float]:
    """Fit `cfg` once per seed of `repeat.seeds` (each a cross-validation with `cv.folds`),
    tracked under one parent run (with `tags`); return the seed means and sds (`seeds/...`)
    and, under the optimised and monitored metric names, the seed mean of each."""
    seeds = check_repeats(cfg)
    folds = (cfg.get("cv") or {}).get("folds")
    run_dir = Path(cfg.paths.run_dir)
    resuming = _resuming(cfg, run_dir)
    keep_configuration(cfg, run_dir, resuming, REPEAT_CONFIG, "the repeat over seeds")
    pinned = pinned_data_seeds(cfg)
    log.info("repeat over seeds %s: the data split stays the same for every seed (%s "
             "pinned); seed=<s> changes the initial weights, the order of the training "
             "samples, dropout, augmentation and the reports' draws",
             ", ".join(map(str, seeds)),
             ", ".join(f"{k}={v}" for k, v in pinned.items()) or "no data seed")
    listed = ",".join(map(str, seeds))
    name = (cfg.get("logger") or {}).get("run_name") or default_run_name() or "run"
    parent = open_parent_run(cfg, run_dir, resuming, {"repeat.seeds": listed},
                             f"{name}-seeds{len(seeds)}", nest_under=tags)
    results: list[tuple[int, Fitted]] = []
    with parent_run_ends(parent):
        for k, seed in enumerate(seeds):
            folder = FitFolder(run_dir / f"seed{seed}")
            fitted = folder.finished() if resuming else None
            if fitted is not None:
                log.info("repeat: seed %d (%d of %d) finished before (MLflow run %s)",
                         seed, k + 1, len(seeds), fitted.run_id)
            else:
                log.info("repeat: seed %d (%d of %d)", seed, k + 1, len(seeds))
                fitted = _fit_seed(seed_config(cfg, seed, run_dir, name, pinned), folder,
                                   fit_one, resuming, parent, folds,
                                   {"repeat.seed": str(seed), "repeat.seeds": listed})
                folder.save(fitted)
            results.append((seed, fitted))
    if parent is not None:
        log_children_datasets(parent.experiment, parent.run_id, [f.run_id for _, f in results])
    per_seed = seeds_table(results)
    summary = summarise_seeds(per_seed)
    monitor = str(cfg.monitor.metric)
    optimized = str(cfg.get("optimized_metric") or monitor)
    best_means = {m: summary[f"seeds/{m}_mean"] for m in {monitor, optimized}
                  if f"seeds/{m}_mean" in summary}
    per_seed.to_csv(run_dir / SEEDS_TABLE, index=False)
    _print_seeds(per_seed, summary, optimized, monitor)
    if parent is not None:
        logged = {**summary, **{f"best/{m}": v for m, v in best_means.items()}}
        items = list(logged.items())
        for start in range(0, len(items), METRIC_BATCH):
            parent.log_metrics(dict(items[start:start + METRIC_BATCH]))
        parent.experiment.log_artifact(parent.run_id, str(run_dir / SEEDS_TABLE))
        parent.finalize("success")
    if optimized in best_means:
        log.info("repeat over %d seeds: %s = %.4f +- %.4f (seed mean and sd)", len(seeds),
                 optimized, best_means[optimized],
                 summary.get(f"seeds/{optimized}_std", float("nan")))
    else:
        log.warning("repeat over %d seeds: not every seed logged %s (no validation split?), so "
                    "there is no best/%s for sweeps and compare; the seed means of the "
                    "metrics logged are in %s", len(seeds), optimized, optimized, SEEDS_TABLE)
    return {**summary, **best_means}


def _fit_seed(one: DictConfig, folder: FitFolder, fit_one: Callable[..., Fitted],
              resuming: bool, parent: Any, folds: int | None,
              tags: dict[str, str]) -> Fitted:
    """One seed's fit or cross-validation, resumed where it stopped when `resuming`."""
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.run_id
    if folds:
        if resuming and folder.cross_validation_started():
            with open_dict(one):
                one.resume = True  # its finished folds kept, the same CV parent run
        metrics = cross_validate(one, fit_one, tags)
        return Fitted(metrics, [], run_id_in(folder.path))
    continue_fit(one, folder, resuming, parent)
    return fit_one(one, tags)


def _print_seeds(per_seed: pd.DataFrame, summary: dict[str, float], *metrics: str) -> None:
    from rich.console import Console
    from rich.table import Table

    wanted = [*metrics, "test/acc", "test/f1_macro", "cv/val/acc_mean", "cv/val/loss_mean"]
    shown = [m for m in dict.fromkeys(wanted) if m in per_seed]
    view = Table(title=f"Results over {len(per_seed)} seeds (one row per seed)")
    for column in ("seed", "run", *shown):
        view.add_column(f"best {column}" if column in metrics else column, justify="right")
    for row in per_seed.to_dict("records"):
        view.add_row(str(row["seed"]), str(row["run_id"] or "")[:8],
                     *[f"{row[m]:.4f}" for m in shown])

    def spread(m: str) -> str:
        std = summary.get(f"seeds/{m}_std")
        return f"{summary[f'seeds/{m}_mean']:.4f}" + ("" if std is None else f" ± {std:.4f}")

    view.add_row("mean ± sd", "", *[spread(m) for m in shown])
    Console(width=max(Console().width, 100)).print(view)
