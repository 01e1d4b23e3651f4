"""Look at a dataset before training: `python -m ecg_experiments.explore [data=...]`.

Writes a class-distribution chart (bars per split and a pie), example beats (or images) per
class and a table of split sizes per class. Image datasets take their size from a model
config when one is given (`+model=alexnet`), else 224 pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ecg_experiments.config import build
from ecg_experiments.data.base import ClassDataModule
from ecg_experiments.evaluation.plots import (
    plot_class_distribution,
    plot_example_beats,
    plot_example_images,
)

log = logging.getLogger(__name__)


def explore_data(
    datamodule: ClassDataModule, out_dir: Path, examples_per_class: int = 5, seed: int = 0
) -> dict[str, Path]:
    """Write the exploration figures and split table for a set-up DataModule."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = datamodule.class_names
    counts = {split: datamodule.class_counts(split) for split in datamodule.datasets}
    sizes = pd.DataFrame(counts, index=names).T
    sizes["total"] = sizes.sum(axis=1)
    files = {"split_sizes": out_dir / "split_sizes.csv"}
    sizes.to_csv(files["split_sizes"], index_label="split")
    files["class_distribution"] = plot_class_distribution(
        counts, names, out_dir / "class_distribution.png"
    )
    labels = datamodule.labels("train")
    if datamodule.input_kind == "image":
        files["example_images"] = plot_example_images(
            lambda i: datamodule.image("train", i), labels, names,
            out_dir / "example_images.png",
            per_class=examples_per_class, seed=seed,
        )
    else:
        signals = datamodule.signals("train")
        files["example_beats"] = plot_example_beats(
            signals.numpy(), labels, names, out_dir / "example_beats.png",
            per_class=examples_per_class, seed=seed,
        )
    log.info("split sizes per class:\n%s", sizes.to_string())
    return files


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
