"""Prepare a dataset without training: `python -m ecg_experiments.prepare [data=...]`."""

from __future__ import annotations

import logging
import time

import hydra
import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from ecg_experiments.cli import exit_on_user_error
from ecg_experiments.config import build
from ecg_experiments.data.base import ClassDataModule

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> ClassDataModule:
    """Run the data config's preparation and split; return the set-up DataModule."""
    datamodule: ClassDataModule = build(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def print_split_counts(datamodule: ClassDataModule) -> None:
    """Beats per split and class."""
    view = Table(title="Beats per split and class")
    view.add_column("split")
    for name in datamodule.class_names:
        view.add_column(name, justify="right")
    view.add_column("total", justify="right")
    for split in datamodule.datasets:
        counts = datamodule.class_counts(split)
        view.add_row(split, *[f"{c:,}" for c in counts], f"{int(np.sum(counts)):,}")
    Console().print(view)


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    start = time.perf_counter()
    with exit_on_user_error():
        datamodule = prepare(cfg)
    print_split_counts(datamodule)
    where = getattr(datamodule, "prepared_path", None)
    print(f"prepared in {time.perf_counter() - start:.1f} s" + (f": {where}" if where else ""))


if __name__ == "__main__":
    main()
