"""The plugin module Hydra discovers; the logic lives in ecg_experiments.sweepers.optuna.

Hydra only instantiates plugin classes defined under `hydra_plugins`, and this module is
imported with `ecg_experiments` (to register the plugin under an editable install too), so
it stays light: Optuna is imported when a sweep starts, not when a config is composed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.ecg_optuna_sweeper.ecg_optuna_sweeper.OptunaSweeper"
    # sampler and pruner stay configs: the sweeper builds them (see OptunaSweeperBase._study)
    _recursive_: bool = False
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler",
                                                  "seed": None})
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner",
                                                 "n_startup_trials": 2, "n_warmup_steps": 1})
    direction: Any = "minimize"
    storage: Any = None
    study_name: str | None = None
    n_trials: int = 20
    n_jobs: int = 1
    max_failure_rate: float = 0.0
    params: dict[str, str] | None = None


class OptunaSweeper(Sweeper):
    """`hydra/sweeper=optuna`: see ecg_experiments.sweepers.optuna.OptunaSweeperBase."""

    def __init__(self, **options: Any) -> None:
        from ecg_experiments.sweepers.optuna import OptunaSweeperBase

        self.sweeper = OptunaSweeperBase(**options)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function,
                           config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="ecg_experiments"
)
