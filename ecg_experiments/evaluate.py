"""Evaluate a saved model on a holdout set and track it as a new MLflow run.

`python -m ecg_experiments.evaluate ckpt=<path> | run_id=<id> [data=...] [holdout=test|all]
[class_map={data class: model class}]`; noise robustness: `report.noise_snr_db=[24,12,6,0]`.

The work is `ecg_experiments.tasks.evaluate.evaluate`,
imported once Hydra has composed the config.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ecg_experiments.cli import run_cli, task


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with task():
        from ecg_experiments.tasks.evaluate import evaluate

        evaluate(cfg)


if __name__ == "__main__":
    run_cli(main)
