"""Train, test and track one experiment: `python -m ecg_experiments.train [overrides]`.

The work is `ecg_experiments.tasks.train.train`; it is imported once Hydra has composed the
config, so that `--help`, `--cfg` and config errors answer at once.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ecg_experiments.cli import run_cli, task
from ecg_experiments.config import validate_train_config


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with task():
        validate_train_config(cfg)  # config mistakes answered before torch loads
        from ecg_experiments.tasks.train import train

        metrics = train(cfg)
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    run_cli(main)
