"""Frozen layers computed once (`feature_cache`).

When the freezing policy leaves every layer before the classifier head frozen
(models/frozen_split.py) and the training inputs are not randomly augmented, the frozen
prefix's outputs are the same in every epoch. They are computed once per training and
validation sample, in inference mode and the run's precision, and kept in memory or in .npy
files under `paths.data_dir/feature_cache/<key>` (reused by any run with the same key: the
frozen weights, the cut, the input description, the data fingerprint and configuration, the
precision and memory format). Training and validation batches then carry those outputs and
the module runs only the head on them; the batch order and dropout draws are those of the
uncached run, so it trains the same model. `gradual` uses the cache until its unfreeze
epoch (the loaders are made again then). Test, evaluate, predict, export and init_from see
the whole network as always.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig
from torch.utils.data import Dataset

from ecg_experiments.config import group_choice, to_container
from ecg_experiments.errors import ConfigError
from ecg_experiments.models.frozen_split import FrozenSplit, frozen_split

log = logging.getLogger(__name__)

STORES = ("file", "memory")
CACHED_SPLITS = ("train", "val")


class CachedFeatures(Dataset):
    """A split's prefix outputs (one or more arrays) and labels, read a batch at a time
    (`__getitems__`; the loader's collate function keeps the batch as it is)."""

    def __init__(self, arrays: list[np.ndarray], labels: np.ndarray) -> None:
        self.arrays, self.labels = arrays, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> tuple[Any, torch.Tensor]:
        rows = np.asarray(indices, dtype=np.int64)
        parts = tuple(torch.from_numpy(np.ascontiguousarray(a[rows])) for a in self.arrays)
        return (parts[0] if len(parts) == 1 else parts), torch.from_numpy(self.labels[rows])

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        x, y = self.__getitems__([index])
        return (x[0] if isinstance(x, torch.Tensor) else tuple(p[0] for p in x)), y[0]

    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(a.shape[1:]) for a in self.arrays]


class FeatureCache:
    """The cached prefix outputs of one fit; `active(epoch)` says whether that epoch's
    training and validation batches are cached ones."""

    def __init__(self, split: FrozenSplit, until_epoch: int | None, store: str, folder: Path,
                 key: dict[str, Any]) -> None:
        self.split, self.until_epoch, self.store = split, until_epoch, store
        self.folder, self.key = folder, key
        self.datasets: dict[str, CachedFeatures] = {}
        self.samples: dict[str, str] = {}
        self.seconds: dict[str, float] = {}  # the caching pass of each split (0: read back)

    def active(self, epoch: int) -> bool:
        return self.until_epoch is None or epoch < self.until_epoch

    def digest(self, split: str) -> str:
        text = json.dumps({**self.key, "split": split,
                           "samples": self.samples.get(split)}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def dataset(self, split: str, datamodule: Any) -> CachedFeatures:
        """The split's cached outputs, computed on first use (with the trainer's module):
        the key's weights are the module's as training starts (a checkpoint restored), its
        samples the split's sample ids in order."""
        if split not in self.datasets:
            if "weights" not in self.key:
                net = datamodule.trainer.lightning_module.net
                self.key["weights"] = self.split.weights_digest(net.state_dict())
            frame = datamodule.sample_frame(split)
            if frame is not None:
                self.samples[split] = hashlib.sha256(
                    "\n".join(map(str, frame["sample_id"])).encode()).hexdigest()
            self.datasets[split] = self._load(split, datamodule) or self._compute(split,
                                                                                 datamodule)
        return self.datasets[split]

    def head_input(self, x: Any) -> Any:
        """A batch of cached outputs, checked: a raw input here would be a wiring bug."""
        parts = x if isinstance(x, (tuple, list)) else (x,)
        expected = next(iter(self.datasets.values())).shapes() if self.datasets else None
        if expected is not None and [tuple(p.shape[1:]) for p in parts] != expected:
            raise RuntimeError(f"feature cache: a batch of shape {[tuple(p.shape) for p in parts]}"
                               f" reached the head, which takes cached outputs {expected}")
        return tuple(parts) if isinstance(x, (tuple, list)) else x

    def _files(self, split: str) -> Path:
        return self.folder / self.digest(split)

    def _load(self, split: str, datamodule: Any) -> CachedFeatures | None:
        folder = self._files(split)
        if self.store != "file" or not (folder / "labels.npy").is_file():
            return None
        labels = np.load(folder / "labels.npy")
        arrays = [np.load(p, mmap_mode="r") for p in sorted(folder.glob("part*.npy"))]
        self._check_labels(labels, split, datamodule, folder)
        self.seconds[split] = 0.0
        log.info("feature cache: %s outputs of %s read from %s", split, self.split.boundary,
                 folder)
        return CachedFeatures(arrays, labels)

    @staticmethod
    def _check_labels(labels: np.ndarray, split: str, datamodule: Any, where: Any) -> None:
        if not np.array_equal(labels, datamodule.labels(split)):
            raise RuntimeError(f"feature cache {where}: the {split} labels differ from the "
                               "split's (the samples are not in the split's order)")

    def _compute(self, split: str, datamodule: Any) -> CachedFeatures:
        trainer = datamodule.trainer
        module = trainer.lightning_module
        loader = datamodule.sequential_loader(split)
        count = len(loader.dataset)
        start = time.perf_counter()
        log.info("feature cache: computing %s for %s %s samples (once)", self.split.boundary,
                 f"{count:,}", split)
        temporary = None
        if self.store == "file":
            temporary = self._files(split).with_name(f"{self.digest(split)}.tmp-{os.getpid()}")
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        arrays: list[np.ndarray] = []
        labels = np.empty(count, dtype=np.int64)
        modes = {m: m.training for m in module.modules()}
        module.eval()  # the frozen prefix runs as it does in training (models/frozen_split.py)
        row = 0
        try:
            with torch.inference_mode(), trainer.precision_plugin.forward_context():
                for x, y in loader:
                    x = trainer.precision_plugin.convert_input(x)  # bf16-true etc.
                    out = module.frozen_prefix(move_data_to_device(x, module.device))
                    parts = out if isinstance(out, tuple) else (out,)
                    if not arrays:
                        arrays = [self._allocate(temporary, k, (count, *p.shape[1:]))
                                  for k, p in enumerate(parts)]
                    for array, part in zip(arrays, parts, strict=True):
                        array[row:row + len(y)] = part.float().cpu().numpy()
                    labels[row:row + len(y)] = y.numpy()
                    row += len(y)
        finally:
            for m, mode in modes.items():
                m.training = mode
        self._check_labels(labels, split, datamodule, self.split.boundary)
        if temporary is not None:
            for array in arrays:
                array.flush()
            np.save(temporary / "labels.npy", labels)
            arrays = self._publish(temporary, split)
        self.seconds[split] = time.perf_counter() - start
        size = sum(a.nbytes for a in arrays) / 2**20
        log.info("feature cache: %s %s samples in %.1f s (%.0f/s), %.0f MiB%s", split,
                 f"{count:,}", self.seconds[split], count / max(self.seconds[split], 1e-9), size,
                 f" in {self._files(split)}" if temporary is not None else " in memory")
        return CachedFeatures(arrays, labels)

    @staticmethod
    def _allocate(temporary: Path | None, index: int, shape: tuple[int, ...]) -> np.ndarray:
        if temporary is None:
            return np.empty(shape, dtype=np.float32)
        return np.lib.format.open_memmap(temporary / f"part{index}.npy", mode="w+",
                                         dtype=np.float32, shape=shape)

    def _publish(self, temporary: Path, split: str) -> list[np.ndarray]:
        """The written folder renamed into place (a parallel run that got there first
        wins: same key, same values); the arrays read back from there."""
        final = self._files(split)
        try:
            os.replace(temporary, final)
        except OSError:
            shutil.rmtree(temporary, ignore_errors=True)
            if not (final / "labels.npy").is_file():  # not a parallel run's folder: fail
                raise
        return [np.load(p, mmap_mode="r") for p in sorted(final.glob("part*.npy"))]


def plan_feature_cache(cfg: DictConfig, net: torch.nn.Module, freeze: Any, datamodule: Any,
                       ) -> FeatureCache | None:
    """The run's FeatureCache, or None (`feature_cache.enabled=auto` says why in one log
    line where a frozen part exists; `true` refuses instead)."""
    options = cfg.get("feature_cache") or {}
    enabled = str(options.get("enabled", "auto")).lower()
    if enabled not in ("auto", "true", "false"):
        raise ConfigError(f"feature_cache.enabled={enabled}: expected auto, true or false")
    until = getattr(freeze, "frozen_until", 0)
    if enabled == "false" or until == 0:
        if enabled == "true":
            raise ConfigError(f"feature_cache.enabled=true: {group_choice('freeze')} freezes "
                              "no layers before the head; use freeze=backbone or gradual")
        return None
    store = str(options.get("store", "file"))
    if store not in STORES:
        raise ConfigError(f"feature_cache.store={store}: expected one of {', '.join(STORES)}")
    reason, split = _why_not(cfg, datamodule), None
    if reason is None:  # tried on random inputs of the data's shape (their own generator)
        example = torch.randn(2, *datamodule.input_spec().shape,
                              generator=torch.Generator().manual_seed(0))
        split = frozen_split(net, example)
        if isinstance(split, str):
            reason, split = split, None
    if reason is not None:
        if enabled == "true":
            raise ConfigError(f"feature_cache.enabled=true: cannot cache the frozen layers: "
                              f"{reason}")
        log.info("feature cache off: %s", reason)
        return None
    key = {"boundary": split.boundary, "input": datamodule.input_spec().to_dict(),
           "fingerprint": datamodule.fingerprint(), "data": to_container(cfg.data),
           "model": to_container(cfg.model), "precision": str(cfg.trainer.get("precision")),
           "channels_last": bool(cfg.model.get("channels_last")),
           "versions": _versions()}
    folder = Path(cfg.paths.data_dir) / "feature_cache"
    log.info("feature cache on: %s computed once%s", split.boundary,
             f", until epoch {until}" if until is not None else "")
    return FeatureCache(split, until, store, folder, key)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "torchvision", "timm", "ecg-experiments"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found


def _several_processes(trainer: DictConfig) -> bool:
    if str(trainer.get("strategy", "auto")).startswith(("ddp", "fsdp", "deepspeed")):
        return True
    devices = trainer.get("devices", 1)
    if isinstance(devices, str) and devices not in ("auto", "1"):
        devices = -1 if devices.strip() == "-1" else len(devices.split(","))
    if not isinstance(devices, (int, str)):  # a list of device indices
        return len(devices) > 1
    if devices == "auto":
        return torch.cuda.device_count() > 1 and str(trainer.get("accelerator")) != "cpu"
    return int(devices) > 1 or int(devices) == -1


def _why_not(cfg: DictConfig, datamodule: Any) -> str | None:
    augmentation = datamodule.training_augmentation()
    if augmentation:
        return (f"{augmentation} changes the frozen layers' input in every epoch (set it to "
                "0/null to cache)")
    if _several_processes(cfg.trainer):
        return "several processes (DDP) each hold a share of the data"
    return None
