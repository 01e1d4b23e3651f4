"""Export a trained network to ONNX or TorchScript with a parity check.

`python -m ecg_experiments.export run_id=<id> | ckpt=<path> format=onnx|torchscript`.

The work is `ecg_experiments.tasks.export.export_model`,
imported once Hydra has composed the config.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ecg_experiments.cli import run_cli, task


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with task():
        from ecg_experiments.tasks.export import export_model

        export_model(cfg)


if __name__ == "__main__":
    run_cli(main)
