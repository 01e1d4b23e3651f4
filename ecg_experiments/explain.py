"""Why a saved model called each input what it did (Captum): beat attributions, Grad-CAM.

`python -m ecg_experiments.explain run_id=<id> | ckpt=<path>
input=<beats.csv | record | image | folder> [only=[V,S]] [items=[...]] [limit=8]`.

The work is `ecg_experiments.tasks.explain.explain`,
imported once Hydra has composed the config.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ecg_experiments.cli import run_cli, task


@hydra.main(version_base="1.3", config_path="../conf", config_name="explain")
def main(cfg: DictConfig) -> None:
    with task():
        from ecg_experiments.tasks.explain import explain

        explain(cfg)


if __name__ == "__main__":
    run_cli(main)
