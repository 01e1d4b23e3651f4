"""Look at a dataset before training: `python -m ecg_experiments.explore [data=...]`.

Writes a class-distribution chart (bars per split and a pie), example beats (or images) per
class and a table of split sizes per class. Image datasets take their size from a model
config when one is given (`+model=alexnet`), else 224 pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from ecg_experiments.config import build
from ecg_experiments.data.base import ClassDataModule
from ecg_experiments.evaluation.explore import explore_data

log = logging.getLogger(__name__)


def explore(cfg: DictConfig) -> dict[str, Path]:
    """`python -m ecg_experiments.explore`: the figures and tables of `cfg.data`, printed."""
    datamodule: ClassDataModule = build(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    files = explore_data(datamodule, Path(cfg.paths.run_dir) / "explore",
                         cfg.report.examples_per_class, cfg.seed)
    total = np.sum([datamodule.class_counts(s) for s in datamodule.datasets], axis=0)
    print(", ".join(f"{n}: {c:,}" for n, c in zip(datamodule.class_names, total, strict=True)))
    for path in files.values():
        print(path)
    return files
