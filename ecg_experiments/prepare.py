"""Prepare a data option (beat tables from raw records, rendered images) ahead of training.

`python -m ecg_experiments.prepare data=<option> [render=...]`.

The work is `ecg_experiments.tasks.prepare.prepare_and_print`,
imported once Hydra has composed the config.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ecg_experiments.cli import run_cli, task


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    with task():
        from ecg_experiments.tasks.prepare import prepare_and_print

        prepare_and_print(cfg)


if __name__ == "__main__":
    run_cli(main)
