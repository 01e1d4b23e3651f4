"""The plugin module Hydra discovers; the logic lives in ecg_experiments.sweepers.optuna.

Hydra only instantiates plugin classes defined under `hydra_plugins`, hence the subclass.
"""

from hydra.core.config_store import ConfigStore

from ecg_experiments.sweepers.optuna import OptunaSweeperBase, OptunaSweeperConf


class OptunaSweeper(OptunaSweeperBase):
    """`hydra/sweeper=optuna`: see ecg_experiments.sweepers.optuna."""


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="ecg_experiments"
)
