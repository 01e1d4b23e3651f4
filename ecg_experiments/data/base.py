"""What every DataModule of the framework offers the training loop, reports and tracking."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, WeightedRandomSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from ecg_experiments.data.splits import BALANCE_MODES, balance_indices
from ecg_experiments.errors import ConfigError
from ecg_experiments.inputs import InputSpec

log = logging.getLogger(__name__)


def loader_worker_init(worker_id: int) -> None:
    """Loader workers ignore SIGTERM and SIGUSR1: a scheduler's signal to the whole process
    group (`timeout`, Slurm's time-limit warning and kill, preemption) is then handled by
    the main process alone, which saves the run and shuts the workers down (a worker killed
    by it would end the run with a traceback instead). Lightning's worker seeding follows
    when it is on (seed_everything with workers=True), as it would without this function."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


class ClassDataModule(pl.LightningDataModule):
    """Labelled train/val/test datasets with their class names, split table and loaders.

    Subclasses fill `datasets` ({split: Dataset of (input, label)}), `split_labels`
    ({split: int labels}) and `split_frame` (one row per sample and its split) in `setup`.
    `input_kind` ("signal" or "image") is checked against the model's before any work.

    `balance` rebalances the training split only (validation and test stay as drawn):
    none; undersample (every class to the smallest); resample (every class to
    `balance_to`, with replacement where needed); class_weights (a class-weighted loss);
    sampler (a weighted random sampler drawing classes equally often).
    `collate_fn` is the loaders' collate function (None: PyTorch's default).
    """

    collate_fn: Callable[[Any], Any] | None = None

    input_kind = "signal"

    def __init__(
        self,
        class_names: Sequence[str] | None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        balance: str = "none",
        balance_to: int | None = None,
    ) -> None:
        super().__init__()
        if balance not in BALANCE_MODES:
            raise ConfigError(f"data.balance={balance!r}: expected one of "
                              f"{', '.join(BALANCE_MODES)}")
        if balance == "resample" and (balance_to is None or int(balance_to) < 1):
            raise ConfigError(f"data.balance=resample needs data.balance_to >= 1 "
                              f"(got {balance_to})")
        self.balance = balance
        self.balance_to = None if balance_to is None else int(balance_to)
        self._sampler_generator: torch.Generator | None = None
        self.class_names = list(class_names) if class_names is not None else []
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.datasets: dict[str, Dataset] = {}
        self.split_labels: dict[str, np.ndarray] = {}
        self.split_frame: pd.DataFrame | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def evaluation_dataset(self, split: str) -> Dataset:
        """One split as evaluation sees it: no training-time augmentation."""
        return self.datasets[split]

    def input_spec(self) -> InputSpec:
        """What this data gives a model (after setup): kind, shape facts, class names."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, str]:
        """Identifiers of the input data (e.g. file hashes) for tracking."""
        return {}

    def _balance_training(self) -> None:
        """Subsample / resample the training split as `balance` says (after setup)."""
        if self.balance not in ("undersample", "resample"):
            return
        labels = self.split_labels["train"]
        before = np.bincount(labels, minlength=self.num_classes)
        rows = balance_indices(labels, self.balance, self.balance_to, self.seed)
        self.datasets["train"] = Subset(self.datasets["train"], rows.tolist())
        self.split_labels["train"] = labels[rows]
        log.info("data.balance=%s: training classes %s -> %s", self.balance, before.tolist(),
                 self.class_counts("train").tolist())

    def labels(self, split: str) -> np.ndarray:
        """Integer labels of one split (after setup)."""
        return self.split_labels[split]

    def class_counts(self, split: str) -> np.ndarray:
        return np.bincount(self.labels(split), minlength=self.num_classes)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        sampler = None
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if shuffle and self.balance == "sampler":
            # each sample weighted by 1 / its class count: classes drawn equally often
            labels = self.split_labels[split]
            weights = 1.0 / np.bincount(labels, minlength=self.num_classes)[labels]
            if self._sampler_generator is None:  # one stream: each epoch draws anew
                self._sampler_generator = torch.Generator().manual_seed(self.seed)
            sampler = WeightedRandomSampler(weights.tolist(), num_samples=len(labels),
                                            replacement=True, generator=self._sampler_generator)
            shuffle = False
        elif shuffle:
            # An epoch-seeded shuffle (seed + epoch; Lightning calls set_epoch), so a run
            # resumed from a checkpoint sees the same order as an uninterrupted one; under DDP
            # each process takes its share (Lightning keeps a DistributedSampler it is given).
            trainer = self.trainer
            sampler = DistributedSampler(
                self.datasets[split], num_replicas=trainer.world_size if distributed else 1,
                rank=trainer.global_rank if distributed else 0, shuffle=True, seed=self.seed)
            # Lightning calls set_epoch (with the count of epochs processed) only after it has
            # made the loader's iterator; a resumed run would otherwise go on in epoch 0's order
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed
                              if trainer is not None else 0)
            shuffle = False
        # the training loader is stateful (torchdata): a checkpoint taken mid-epoch holds how
        # far the epoch got, and a resumed run continues with the next batch of the same
        # order (Lightning saves and restores the state of such loaders)
        loader = StatefulDataLoader if split == "train" else DataLoader
        return loader(
            self.datasets[split],
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=self.collate_fn,
            worker_init_fn=loader_worker_init if self.num_workers > 0 else None,
            # the loader's own generator seeds its workers, so making a loader never draws
            # from the global generator that dropout uses (resumed runs draw the same masks)
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
