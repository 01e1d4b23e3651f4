"""Beat signals: Kaggle-format CSV I/O and the DataModules that serve beats as tensors.

The public "ECG Heartbeat Categorization" CSVs (Kachuee et al. 2018) hold one beat per row:
no header, 187 samples at 125 Hz scaled to [0, 1] and zero-padded, then the class label.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import torch
from torch.utils.data import Subset, TensorDataset

from ecg_experiments.data.augment import SignalAugment, reference_power
from ecg_experiments.data.base import ClassDataModule, keep_batch
from ecg_experiments.data.identity import row_ids
from ecg_experiments.data.splits import split_table, stratified_split
from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.inputs import InputSpec, on_signal
from ecg_experiments.io import atomic_path, readable_file, sha256_file, text_encoding

log = logging.getLogger(__name__)

KAGGLE_SIGNAL_LENGTH = 187
KAGGLE_RATE = 125.0
DEFAULT_CLASS_NAMES = ("N", "S", "V", "F", "Q")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _first_line(path: Path, encoding: str) -> str:
    with open(path, encoding=encoding) as handle:
        for line in handle:
            if line.strip():
                return line.strip()
    return ""


def _looks_like_index(column: pd.Series) -> bool:
    values = pd.to_numeric(column, errors="coerce").to_numpy()
    if np.isnan(values).any() or not np.all(values == np.round(values)):
        return False
    return bool(np.all(np.diff(values) > 0))


def read_beats_csv(
    path: str | os.PathLike,
    signal_length: int = KAGGLE_SIGNAL_LENGTH,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    labelled: bool | None = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a Kaggle-format beats CSV into (signals float32 [n, length], labels int64 [n]).

    Accepts the public files as downloaded (no header, plain or e-notation decimals, float
    labels) and also a header row and/or a leading index column, both detected from the
    content. With `labelled=None` a file of `signal_length` columns (no label column) is
    also accepted and its labels are None. Raises DataError naming the file and line for
    any malformed content.
    """
    expected = signal_length + 1
    path = readable_file(path, f"a beats CSV file with {expected} columns per row")
    # a byte-order mark (Excel's UTF-8, UTF-16) is read as such, never taken for a header
    encoding = text_encoding(path)
    try:
        first = _first_line(path, encoding)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text CSV (byte {err.start} is not {encoding} text); "
                        f"expected a beats CSV file with {expected} comma-separated numbers "
                        "per row") from err
    if not first:
        raise DataError(f"{path}: the file is empty (expected rows of {expected} columns)")
    has_header = not all(_is_number(field) for field in first.split(","))
    header_lines = 1 if has_header else 0
    try:
        frame = pd.read_csv(path, header=0 if has_header else None, low_memory=False,
                            encoding=encoding)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: malformed CSV ({str(err).splitlines()[0]}); expected "
                        f"{expected} comma-separated numbers per row") from err
    if frame.empty:
        raise DataError(f"{path}: no data rows (expected rows of {expected} columns)")
    ncols = frame.shape[1]
    if labelled is None:
        with_label = ncols == expected or (
            ncols == expected + 1 and _looks_like_index(frame.iloc[:, 0])
        )
        expected = signal_length + 1 if with_label else signal_length
    if ncols == expected + 1 and _looks_like_index(frame.iloc[:, 0]):
        frame = frame.iloc[:, 1:]
    elif ncols != expected:
        raise DataError(
            f"{path}, line {header_lines + 1}: {ncols} columns, expected {expected} "
            f"({signal_length} signal samples, then the class label)"
        )
    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) | ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raw = frame.iat[row, col]
        what = "a missing value (short row?)" if pd.isna(raw) else f"{raw!r}"
        raise DataError(
            f"{path}, line {header_lines + row + 1}, column {col + 1}: {what}; "
            "expected a finite number"
        )
    if expected == signal_length:  # unlabelled rows
        return values.astype(np.float32), None
    labels = values[:, -1]
    not_integer = labels != np.round(labels)
    if not_integer.any():
        row = int(np.argmax(not_integer))
        raise DataError(
            f"{path}, line {header_lines + row + 1}: label {float(labels[row])} is not an integer "
            f"class index (expected 0..{len(class_names) - 1})"
        )
    out_of_range = (labels < 0) | (labels >= len(class_names))
    if out_of_range.any():
        row = int(np.argmax(out_of_range))
        raise DataError(
            f"{path}, line {header_lines + row + 1}: label {int(labels[row])} is outside the "
            f"classes 0..{len(class_names) - 1} ({', '.join(class_names)})"
        )
    return values[:, :-1].astype(np.float32), labels.astype(np.int64)


def write_beats_csv(path: str | os.PathLike, signals: np.ndarray, labels: np.ndarray) -> None:
    """Write beats in the public Kaggle format (no header, samples then label), atomically."""
    columns = {str(i): pa.array(signals[:, i].astype(np.float32)) for i in range(signals.shape[1])}
    columns["label"] = pa.array(labels.astype(np.float32))
    table = pa.table(columns)
    with atomic_path(path) as tmp:
        pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(include_header=False))


def _split_unique_rows(ids: np.ndarray, labels: np.ndarray, fractions: dict[str, float],
                       seed: int, class_names: Sequence[str], source: str
                       ) -> dict[str, np.ndarray]:
    """A stratified split in which rows with identical values share a part: a copy of a
    training row in the test split would be scored as unseen."""
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    if len(unique) == len(ids):
        return stratified_split(labels, fractions, seed, class_names, source)
    copies = len(ids) - len(unique)
    mixed = int((pd.Series(labels).groupby(inverse).nunique() > 1).sum())
    log.warning("%s: %d row(s) repeat another row's values%s; each set of copies is kept in "
                "one split", source, copies,
                f" ({mixed} set(s) with different labels)" if mixed else "")
    chosen = stratified_split(labels[first], fractions, seed, class_names, source)
    part_of = np.full(len(unique), "", dtype=object)
    for name, rows in chosen.items():
        part_of[rows] = name
    return {name: np.flatnonzero(part_of[inverse] == name) for name in chosen}


class BatchedTensors(TensorDataset):
    """A TensorDataset that the DataLoader reads one batch at a time.

    `__getitems__` (the DataLoader's batched-fetch protocol, also used through Subset) indexes
    each tensor once with the batch's indices, where the default path indexes 128 single rows
    and stacks them again; `keep_batch` is the matching collate function.
    """

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        return tuple(tensor[rows] for tensor in self.tensors)


class BeatsDataModuleBase(ClassDataModule):
    """Serves beat signals of shape [batch, 1, length] with integer labels.

    Subclasses load the arrays and assign them to splits in `load_splits`; this base turns
    them into tensors once. `augment` (a SignalAugment) corrupts training batches after they
    reach the device; validation and test batches are never augmented.
    """

    input_kind = "signal"
    collate_fn = staticmethod(keep_batch)  # the datasets are BatchedTensors
    # set by subclasses: samples per beat, their rate, and the per-beat values appended
    # after the samples (e.g. R-R features), which augmentation and noise never touch
    signal_length: int
    rate: float
    feature_names: tuple[str, ...] = ()
    lead_names: tuple[str, ...] = ()  # one per channel of a several-lead beat
    # set before setup by a fit with adversary=records: training batches then carry each
    # beat's record index (into `training_records`) as a third tensor
    records_in_batches: bool = False
    training_records: list[str] | None = None

    def __init__(
        self,
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        balance: str = "none",
        balance_to: int | None = None,
        augment: SignalAugment | None = None,
    ) -> None:
        super().__init__(class_names, batch_size, eval_batch_size, num_workers, seed, balance,
                         balance_to)
        self.augment = augment

    def load_splits(self) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], pd.DataFrame]:
        """Return {split: (signals [n, length], labels [n])} and a table of the assignment."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        arrays, self.split_frame = self.load_splits()
        for name, (signals, labels) in arrays.items():
            x = torch.from_numpy(np.ascontiguousarray(signals, dtype=np.float32))
            if x.ndim == 2:
                x = x.unsqueeze(1)
            self.split_labels[name] = labels.astype(np.int64)
            tensors = [x, torch.from_numpy(self.split_labels[name])]
            if name == "train" and self.records_in_batches:
                tensors.append(self._training_record_codes())
            self.datasets[name] = BatchedTensors(*tensors)
        self._balance_training()
        counts = {name: len(ds) for name, ds in self.datasets.items()}
        log.info("beats per split: %s", counts)

    def _training_record_codes(self) -> torch.Tensor:
        """Each training beat's record as an index into `training_records` (sorted ids)."""
        frame = self.split_frame
        if frame is None or "record" not in frame:
            raise ConfigError("adversary=records needs the record of every beat; this data "
                              "has none (use data=mitbih or data=physionet)")
        codes, names = pd.factorize(frame.loc[frame["split"] == "train", "record"], sort=True)
        self.training_records = [str(n) for n in names]
        return torch.from_numpy(codes.astype(np.int64))

    def input_spec(self) -> InputSpec:
        return InputSpec("signal", tuple(self.class_names), signal_length=self.signal_length,
                         rate=self.rate, features=self.feature_names, leads=self.lead_names)

    def signals(self, split: str) -> torch.Tensor:
        """The beats [n, 1, length + features] of one split (after setup and balancing)."""
        dataset = self.datasets[split]
        if isinstance(dataset, Subset):
            return dataset.dataset.tensors[0][dataset.indices]
        return dataset.tensors[0]

    def state_dict(self) -> dict[str, Any]:
        """In every checkpoint: the augmentation generator's state (a resumed run draws the
        noise an uninterrupted one would; without a seed it draws from torch's generator,
        which the RandomState callback keeps)."""
        generator = getattr(self.augment, "generator", None)
        return {"augment_generator": generator.get_state()} if generator is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        generator = getattr(self.augment, "generator", None)
        if generator is not None and "augment_generator" in state_dict:
            generator.set_state(state_dict["augment_generator"])

    def training_augmentation(self) -> str | None:
        return None if self.augment is None else f"data.augment ({type(self.augment).__name__})"

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.augment is not None and self.trainer is not None and self.trainer.training:
            x, y, *records = batch  # records: adversary=records
            # a template-relative beat's noise SNR is set on the beat before the subtraction
            power = reference_power(getattr(self, "recipe", None))
            augment = self.augment if power is None else functools.partial(
                self.augment, signal_power=power)
            return (on_signal(x, len(self.feature_names), augment), y, *records)
        return batch


class BeatsDataModule(BeatsDataModuleBase):
    """Beats from Kaggle-format CSV files (`data=beats_csv`), `rate` Hz (125 as published).

    With a `test_file`, validation is carved from `train_file` (stratified, `val_fraction`);
    without one, `train_file` is split train/val/test stratified (70/15/15 by default).
    """

    def __init__(
        self,
        train_file: str,
        test_file: str | None = None,
        class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
        signal_length: int = KAGGLE_SIGNAL_LENGTH,
        rate: float = KAGGLE_RATE,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        balance: str = "none",
        balance_to: int | None = None,
        augment: SignalAugment | None = None,
    ) -> None:
        super().__init__(class_names, batch_size, eval_batch_size, num_workers, seed, balance,
                         balance_to, augment)
        self.train_file = Path(train_file)
        self.test_file = Path(test_file) if test_file else None
        self.signal_length = int(signal_length)
        self.rate = float(rate)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        return read_beats_csv(path, self.signal_length, self.class_names)

    def load_splits(self) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], pd.DataFrame]:
        signals, labels = self._read(self.train_file)
        source = str(self.train_file)
        if self.test_file is not None:
            fractions = {"train": 1.0 - self.val_fraction, "val": self.val_fraction}
        else:
            fractions = {
                "train": 1.0 - self.val_fraction - self.test_fraction,
                "val": self.val_fraction,
                "test": self.test_fraction,
            }
        ids = np.array(row_ids(signals))  # the identity of each row: its values
        parts = _split_unique_rows(ids, labels, fractions, self.seed, self.class_names, source)
        arrays = {name: (signals[index], labels[index]) for name, index in parts.items()}
        table = split_table(parts, label=labels, sample_id=ids).assign(file=source)
        if self.test_file is not None:
            test_signals, test_labels = self._read(self.test_file)
            arrays["test"] = (test_signals, test_labels)
            test_table = pd.DataFrame(
                {
                    "index": np.arange(len(test_labels)),
                    "split": "test",
                    "label": test_labels,
                    "file": str(self.test_file),
                    "sample_id": row_ids(test_signals),
                }
            )
            table = pd.concat([table, test_table], ignore_index=True)
        return arrays, table

    def fingerprint(self) -> dict[str, str]:
        files = {"train_file": self.train_file, "test_file": self.test_file}
        return {
            f"{name}.sha256": sha256_file(path)
            for name, path in files.items()
            if path is not None and path.is_file()
        }
