"""Figures and tables of a data option before any training.

`python -m ecg_experiments.explore data=<option>`.

The work is `ecg_experiments.tasks.explore.explore`,
imported once Hydra has composed the config.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ecg_experiments.cli import run_cli, task


@hydra.main(version_base="1.3", config_path="../conf", config_name="explore")
def main(cfg: DictConfig) -> None:
    with task():
        from ecg_experiments.tasks.explore import explore

        explore(cfg)


if __name__ == "__main__":
    run_cli(main)
