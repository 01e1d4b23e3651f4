"""Hydra plugin entry (`hydra_plugins.ecg_optuna_sweeper`): registers `hydra/sweeper=optuna`."""
