"""Average several trained models into one, or estimate an ensemble by cross-validation.

`python -m ecg_experiments.ensemble members=[<run id | run folder | checkpoint>, ...]
[test=true]`; `members=[<folder of a repeat.seeds cross-validation>]` for its CV estimate.

The work is `ecg_experiments.tasks.ensemble.ensemble`,
imported once Hydra has composed the config.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ecg_experiments.cli import run_cli, task


@hydra.main(version_base="1.3", config_path="../conf", config_name="ensemble")
def main(cfg: DictConfig) -> None:
    with task():
        from ecg_experiments.tasks.ensemble import ensemble

        ensemble(cfg)


if __name__ == "__main__":
    run_cli(main)
