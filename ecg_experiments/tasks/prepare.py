"""Prepare a dataset without training: `python -m ecg_experiments.prepare [data=...]`."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from ecg_experiments.config import build, group_choice
from ecg_experiments.data.base import ClassDataModule
from ecg_experiments.data.images import ImageDataModule
from ecg_experiments.data.physionet_datamodule import PhysionetDataModule
from ecg_experiments.data.render import RenderedBeats
from ecg_experiments.errors import ConfigError

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> ClassDataModule:
    """Run the data config's preparation and split; return the set-up DataModule.

    With `render` set, the MIT-BIH beats are also rendered to images and the returned
    DataModule serves those images (split 70/15/15 as data=image_folder would).
    """
    datamodule: ClassDataModule = build(cfg.data)
    if cfg.get("render"):
        datamodule = rendered_images(cfg, datamodule)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def rendered_images(cfg: DictConfig, beats: ClassDataModule) -> ImageDataModule:
    """An image DataModule over the beats of `beats` rendered as `cfg.render` says."""
    if not isinstance(beats, PhysionetDataModule):
        raise ConfigError(f"render={group_choice('render')}: rendering draws the beats of "
                          f"data=mitbih or data=physionet, not of {group_choice('data')}")
    source = RenderedBeats(beats=beats, renderer=build(cfg.render),
                           out_dir=str(Path(cfg.paths.data_dir) / "images"),
                           image_size=int(cfg.image_size), max_per_class=cfg.max_per_class,
                           seed=int(cfg.seed))
    size = int(cfg.image_size)
    return ImageDataModule(source=source, class_names=beats.class_names, split="stratified",
                           image_size=size, mean=[0.5] * 3, std=[0.5] * 3, seed=int(cfg.seed))


def print_split_counts(datamodule: ClassDataModule) -> None:
    """Beats per split and class."""
    what = "Images" if datamodule.input_kind == "image" else "Beats"
    view = Table(title=f"{what} per split and class")
    view.add_column("split")
    for name in datamodule.class_names:
        view.add_column(name, justify="right")
    view.add_column("total", justify="right")
    for split in datamodule.datasets:
        counts = datamodule.class_counts(split)
        view.add_row(split, *[f"{c:,}" for c in counts], f"{int(np.sum(counts)):,}")
    Console().print(view)


def prepare_and_print(cfg: DictConfig) -> ClassDataModule:
    """`python -m ecg_experiments.prepare`: prepare, then print the split sizes, the leads and
    rates read and where the result is."""
    start = time.perf_counter()
    datamodule = prepare(cfg)
    print_split_counts(datamodule)
    for key, value in datamodule.fingerprint().items():
        if key.endswith("sources"):  # which lead and rate each database was read with
            print(f"{key.removesuffix('sources').rstrip('.') or 'read'}: {value}")
    where = getattr(datamodule, "prepared_path", None)
    print(f"prepared in {time.perf_counter() - start:.1f} s" + (f": {where}" if where else ""))
    return datamodule
