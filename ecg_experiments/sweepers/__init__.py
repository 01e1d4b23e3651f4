"""Hydra sweepers of the project (Optuna on its current ask/tell API)."""
