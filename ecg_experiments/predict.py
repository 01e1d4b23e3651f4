"""Class probabilities of new inputs with a saved model.

`python -m ecg_experiments.predict run_id=<id> | ckpt=<path>
input=<beats.csv | record | image | folder>`.

The work is `ecg_experiments.tasks.predict.predict`,
imported once Hydra has composed the config.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ecg_experiments.cli import run_cli, task


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    with task():
        from ecg_experiments.tasks.predict import predict

        predict(cfg)


if __name__ == "__main__":
    run_cli(main)
