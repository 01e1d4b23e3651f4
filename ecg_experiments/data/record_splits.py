"""Splits and folds of a beat table: which beats train, validate and test (random,
by record, de Chazal's inter-patient DS1/DS2, all) and record-grouped cross-validation
folds of the training pool; the records a `data.records` option names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ecg_experiments.data.beat_table import BeatTable, record_id
from ecg_experiments.data.physionet import AAMI_CLASSES, DS1, DS2, Database, databases_of
from ecg_experiments.data.splits import cv_fold, grouped_split, stratified_split
from ecg_experiments.errors import ConfigError, DataError

SPLITS = ("random", "records", "interpatient", "all")


def assign_splits(
    table: BeatTable,
    split: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, np.ndarray]:
    """Row indices of train/val/test for one split strategy (see PhysionetDataModule)."""
    labels, records = table.beats.labels, table.records
    fractions = {  # test first, then validation as a share of the rest
        "train": (1 - test_fraction) * (1 - val_fraction),
        "val": (1 - test_fraction) * val_fraction,
        "test": test_fraction,
    }
    if split == "random":
        return stratified_split(labels, fractions, seed, AAMI_CLASSES, "beats")
    if split == "records":
        return grouped_split(records, fractions, seed, "records")
    if split == "all":  # every beat is test: a trained model evaluated on this data
        empty = np.array([], dtype=np.int64)
        return {"train": empty, "val": empty, "test": np.arange(len(labels))}
    if split == "interpatient":
        ds1 = [record_id("mitdb", r) for r in DS1]
        ds2 = np.isin(records, [record_id("mitdb", r) for r in DS2])
        in_ds1 = np.isin(records, ds1)
        if not in_ds1.any() or not ds2.any():
            raise DataError("data.split=interpatient: the prepared records include no mitdb "
                            "DS1 or no DS2 record (the split trains on DS1, tests on DS2)")
        # validation: whole DS1 records; every record of another database only trains, so
        # models are chosen on the same DS1 patients whatever else they learn from
        pool = np.flatnonzero(in_ds1)
        inner = grouped_split(
            records[pool], {"train": 1 - val_fraction, "val": val_fraction}, seed, "DS1"
        )
        extra = np.flatnonzero(training_only(records, split))
        return {"train": np.sort(np.concatenate([pool[inner["train"]], extra])),
                "val": pool[inner["val"]], "test": np.flatnonzero(ds2)}
    raise ConfigError(f"data.split={split!r}: expected one of {', '.join(SPLITS)}")


def training_only(records: np.ndarray, split: str) -> np.ndarray:
    """Rows that only ever train: with split=interpatient, the records of databases other
    than mitdb (validation and CV folds are DS1 records)."""
    if split != "interpatient":
        return np.zeros(len(records), dtype=bool)
    return ~np.char.startswith(records.astype(str), "mitdb/")


def cross_validation_parts(table: BeatTable, parts: dict[str, np.ndarray], folds: int,
                           fold: int, seed: int, split: str = "random") -> dict[str, np.ndarray]:
    """Fold `fold` of `folds` over the training pool (train + val) by record; test stays.
    Training-only rows (`training_only`) are in every fold's training part."""
    pool = np.sort(np.concatenate([parts["train"], parts["val"]]))
    fixed = pool[training_only(table.records[pool], split)]
    pool = np.setdiff1d(pool, fixed)
    held = cv_fold(table.records[pool], table.beats.labels[pool], folds, seed,
                   "the training pool") == fold
    return {"train": np.sort(np.concatenate([pool[~held], fixed])), "val": pool[held],
            "test": parts["test"]}


def parse_records(given: Sequence[str] | None, databases: Sequence[Database],
                   option: str = "data.records") -> dict[str, list[str]] | None:
    """{database: [record names]} from `mitdb/101`, or plain names matched to the one
    chosen database whose record names they look like; a record named twice (`101` and
    `mitdb/101` alike) is a ConfigError naming it and `option`."""
    if not given:
        return None
    chosen: dict[str, list[str]] = {db.name: [] for db in databases}
    for item in map(str, given):
        if "/" in item:
            name, record = item.split("/", 1)
            if name not in chosen:
                raise ConfigError(f"{option}: {item!r} names database {name!r}, which is "
                                  f"not among data.databases ({', '.join(chosen)})")
        else:
            owners = databases_of(item, databases)
            if not owners:
                raise ConfigError(
                    f"{option}: {item!r} is not a record name of "
                    f"{' or '.join(chosen)}; write <database>/<record>, e.g. mitdb/101")
            name, record = owners[0].name, item
        if record in chosen[name]:
            raise ConfigError(f"{option}: {record_id(name, record)} is named twice ({item!r}); "
                              "expected each record once")
        chosen[name].append(record)
    return chosen
