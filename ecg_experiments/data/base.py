"""What every DataModule of the framework offers the training loop, reports and tracking."""

from __future__ import annotations

import logging
import os
import signal
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
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


class EpochSeededSampler(DistributedSampler):
    """The training order as a function of (seed, epoch) alone: DistributedSampler's
    shuffle, or with `weights` (data.balance=sampler) a weighted draw with replacement from a
    generator seeded by seed + epoch; under DDP each process takes its share. A run resumed
    from any checkpoint draws its epoch's order again (the stateful loader then skips the
    batches done). With `tag_epoch` it yields keys for SeededSamples.

    Written here because torch's WeightedRandomSampler draws from one running generator,
    whose position no checkpoint holds, and no sampler passes the epoch on to the dataset.
    The pairs carry the position in the epoch's whole order too (`(index, epoch, position)`):
    a sample drawn several times in an epoch (balance=sampler) is augmented differently
    each time.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int,
                 weights: Sequence[float] | None = None, tag_epoch: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed)
        self.weights = None if weights is None else torch.as_tensor(weights,
                                                                    dtype=torch.double)
        self.tag_epoch = tag_epoch

    def __iter__(self) -> Any:
        if self.weights is None:
            indices = list(super().__iter__())
        else:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            drawn = torch.multinomial(self.weights, self.total_size, replacement=True,
                                      generator=generator).tolist()
            indices = drawn[self.rank:self.total_size:self.num_replicas]
        if self.tag_epoch:  # this rank's share is every num_replicas-th of the whole order
            return iter([(index, self.epoch, self.rank + k * self.num_replicas)
                         for k, index in enumerate(indices)])
        return iter(indices)


class SeededSamples(Dataset):
    """A dataset read with `(index, epoch, position)` keys (EpochSeededSampler): the random
    draws made while reading a sample (image augmentation in the loader workers) come from
    torch's generator seeded by (seed, epoch, position in the epoch's order), so they are the
    same whichever worker reads the sample and after any resume; the worker's own generator
    is left as it was. A plain index (a loader Lightning made itself, e.g. overfit_batches)
    reads the sample unseeded.

    Written here because loader workers' generators run on from sample to sample and
    neither torch's nor torchdata's loader keeps their states in a checkpoint.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int] | int) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, epoch, position = key
        state = np.random.SeedSequence([self.seed, int(epoch), int(position)]).generate_state(2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(state[0]) << 32 | int(state[1]))
            return self.dataset[index]


def keep_batch(batch: Any) -> Any:
    """Collate function of datasets read a batch at a time (`__getitems__`): the batch is
    already stacked."""
    return batch


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
    # whether reading a training sample draws random numbers (augmentation in the loader
    # workers): those draws are then seeded per sample and epoch (SeededSamples)
    random_per_sample = False
    # a FeatureCache (models/feature_cache.py), set by a fit whose frozen layers are computed
    # once: while it is active, training and validation batches hold their outputs
    feature_cache: Any = None

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
        self.class_names = list(class_names) if class_names is not None else []
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        # the run's seed (set by train): orders and draws the training samples, while `seed`
        # draws the split, so seed repeats (repeat.seeds) share a split, not an order
        self.training_seed: int | None = None
        self.datasets: dict[str, Dataset] = {}
        self._stateful_loaders: weakref.WeakSet = weakref.WeakSet()
        self.split_labels: dict[str, np.ndarray] = {}
        self.split_frame: pd.DataFrame | None = None
        # the training rows kept by undersample/resample (None: every row)
        self.balanced_rows: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def evaluation_dataset(self, split: str) -> Dataset:
        """One split as evaluation sees it: no training-time augmentation."""
        return self.datasets[split]

    def training_augmentation(self) -> str | None:
        """What changes training inputs at random from epoch to epoch (None: nothing)."""
        return None

    def sequential_loader(self, split: str) -> DataLoader:
        """The split's samples in order, as evaluation sees them, batched for inference
        with the configured workers (the feature cache's pass)."""
        return DataLoader(self.evaluation_dataset(split), batch_size=self.eval_batch_size,
                          shuffle=False, num_workers=self.num_workers,
                          collate_fn=self.collate_fn,
                          worker_init_fn=loader_worker_init if self.num_workers > 0 else None,
                          generator=torch.Generator().manual_seed(self.seed))

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
        labels = self.split_labels.get("train")
        if labels is None or len(labels) == 0:  # e.g. split=all: every sample is test
            return
        before = np.bincount(labels, minlength=self.num_classes)
        rows = balance_indices(labels, self.balance, self.balance_to, self.seed)
        self.datasets["train"] = Subset(self.datasets["train"], rows.tolist())
        self.balanced_rows = rows
        self.split_labels["train"] = labels[rows]
        log.info("data.balance=%s: training classes %s -> %s", self.balance, before.tolist(),
                 self.class_counts("train").tolist())

    def sample_frame(self, split: str) -> pd.DataFrame | None:
        """One row per sample of `split` in the order its evaluation dataset gives them (after
        setup and balancing): `sample_id` (its identity, evaluation/seen.py), `record` where
        known, and where to find it (sample, path or file row). None without a split table."""
        if self.split_frame is None or "sample_id" not in self.split_frame:
            return None
        frame = self.split_frame[self.split_frame["split"] == split].reset_index(drop=True)
        if split == "train" and self.balanced_rows is not None:
            frame = frame.iloc[self.balanced_rows].reset_index(drop=True)
        return frame

    def seen_frame(self) -> pd.DataFrame | None:
        """The samples a model trained on this data is fit and validated on: the training
        and validation splits as drawn (before any balancing)."""
        if self.split_frame is None or "sample_id" not in self.split_frame:
            return None
        return self.split_frame[self.split_frame["split"].isin(["train", "val"])]

    def labels(self, split: str) -> np.ndarray:
        """Integer labels of one split (after setup)."""
        return self.split_labels[split]

    def class_counts(self, split: str) -> np.ndarray:
        return np.bincount(self.labels(split), minlength=self.num_classes)

    def _cached(self, split: str) -> Dataset | None:
        """The split's cached frozen-layer outputs when the fit's feature cache serves this
        epoch (models/feature_cache.py), else None."""
        cache, trainer = self.feature_cache, self.trainer
        if cache is None or trainer is None or split not in ("train", "val"):
            return None
        return cache.dataset(split, self) if cache.active(trainer.current_epoch) else None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        sampler = None
        cached = self._cached(split)
        dataset = self.datasets[split] if cached is None else cached
        # the cached outputs are read a batch at a time, in this process (no augmentation)
        random_per_sample = self.random_per_sample and cached is None
        workers = self.num_workers if cached is None else 0
        if shuffle:
            # an order seeded by seed + epoch, so a run resumed from a checkpoint sees the
            # order of an uninterrupted one; under DDP each process takes its share
            # (Lightning keeps a DistributedSampler it is given)
            trainer = self.trainer
            distributed = trainer is not None and trainer.world_size > 1
            order_seed = self.seed if self.training_seed is None else self.training_seed
            weights = None
            if self.balance == "sampler":  # 1 / its class count: classes drawn equally often
                labels = self.split_labels[split]
                weights = (1.0 / np.bincount(labels, minlength=self.num_classes)[labels])
            sampler = EpochSeededSampler(
                dataset, num_replicas=trainer.world_size if distributed else 1,
                rank=trainer.global_rank if distributed else 0, seed=order_seed,
                weights=None if weights is None else weights.tolist(),
                tag_epoch=random_per_sample)
            if random_per_sample:
                dataset = SeededSamples(dataset, order_seed)
            # Lightning calls set_epoch (with the count of epochs processed) only after it has
            # made the loader's iterator; a resumed run would otherwise go on in epoch 0's order
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed
                              if trainer is not None else 0)
            shuffle = False
        # the training loader is stateful (torchdata): a checkpoint taken mid-epoch holds how
        # far the epoch got, and a resumed run continues with the next batch of the same
        # order (Lightning saves and restores the state of such loaders)
        loader_class = StatefulDataLoader if split == "train" else DataLoader
        loader = loader_class(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=self.collate_fn if cached is None else keep_batch,
            worker_init_fn=loader_worker_init if workers > 0 else None,
            # the loader's own generator seeds its workers, so making a loader never draws
            # from the global generator that dropout uses (resumed runs draw the same masks)
            generator=torch.Generator().manual_seed(self.seed),
        )
        if isinstance(loader, StatefulDataLoader):
            self._stateful_loaders.add(loader)
        return loader

    def shutdown_workers(self) -> None:
        """Stop the workers of the training loaders this module made (after a fit, however
        it ended). Written here because Lightning shuts down the workers of torch's own loader
        iterators only, not of torchdata's; ours ignore SIGTERM (loader_worker_init), so at
        exit multiprocessing's handler (terminate, then join) would wait for them forever."""
        for loader in list(self._stateful_loaders):
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            loader._iterator = None

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
