"""ecg-experiments: config-driven experiments for ECG arrhythmia classification."""

from ecg_experiments.config import register_resolvers

__version__ = "0.1.0"


def register_hydra_plugins() -> None:
    """Make `hydra/sweeper=optuna` available.

    Hydra finds plugins by scanning the `hydra_plugins` namespace on disk, which a regular
    install provides (pyproject maps our plugin there) but an editable install's import
    hook hides from the scan; registering the class directly covers both.
    """
    from hydra.core.plugins import Plugins
    from hydra_plugins.ecg_optuna_sweeper.ecg_optuna_sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)


register_resolvers()
register_hydra_plugins()
