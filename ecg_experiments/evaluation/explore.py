"""What a set-up dataset holds, as files: a class-distribution chart (bars per split and a
pie), example beats (or images) per class and a table of split sizes per class. Written by
the `explore` command and, with `report.explore`, into each training run's `explore/`."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

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
            signals[:, 0].numpy(), labels, names, out_dir / "example_beats.png",  # lead 1
            per_class=examples_per_class, seed=seed,
        )
    log.info("split sizes per class:\n%s", sizes.to_string())
    return files
