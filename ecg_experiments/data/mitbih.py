"""MIT-BIH beat dataset: preparation from raw records (cached, verified) and its DataModule."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import track

from ecg_experiments.data.augment import SignalAugment
from ecg_experiments.data.beats import BeatsDataModuleBase, write_beats_csv
from ecg_experiments.data.physionet import (
    AAMI_CLASSES,
    DS1,
    DS2,
    MITDB_RECORDS,
    PACED,
    ensure_mitdb,
    read_record,
    verify_checksums,
)
from ecg_experiments.data.segment import RR_FEATURES, Beats, CenteredRecipe, KachueeRecipe
from ecg_experiments.data.splits import grouped_split, split_table, stratified_split
from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.io import atomic_path

log = logging.getLogger(__name__)

Recipe = KachueeRecipe | CenteredRecipe
MANIFEST_VERSION = 1
SPLITS = ("random", "records", "interpatient")


@dataclass
class BeatTable:
    """Every extracted beat with its record, R-peak sample, symbol, AAMI class and signal."""

    records: np.ndarray  # str [n]
    beats: Beats

    def save(self, path: Path) -> None:
        np.savez(
            path,
            records=self.records.astype("U8"),
            signals=self.beats.signals,
            labels=self.beats.labels.astype(np.int8),
            samples=self.beats.samples,
            symbols=self.beats.symbols.astype("U2"),
            features=self.beats.features,
        )

    @classmethod
    def load(cls, path: Path) -> BeatTable:
        with np.load(path) as data:
            beats = Beats(
                signals=data["signals"],
                labels=data["labels"].astype(np.int64),
                samples=data["samples"],
                symbols=data["symbols"],
                features=data["features"],
            )
            return cls(records=data["records"], beats=beats)

    def summary(self) -> pd.DataFrame:
        """Beats per record and AAMI class."""
        frame = pd.DataFrame({"record": self.records, "label": self.beats.labels})
        table = pd.crosstab(frame["record"], frame["label"]).reindex(
            columns=range(len(AAMI_CLASSES)), fill_value=0
        )
        table.columns = list(AAMI_CLASSES)
        return table


def _manifest_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


def prepare_mitbih(
    mitdb_dir: str | os.PathLike,
    prepared_root: str | os.PathLike,
    recipe: Recipe,
    records: Sequence[str] | None = None,
    lead: str = "MLII",
    missing_lead: str = "skip",
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Turn raw MIT-BIH records into a beat table; return its folder.

    The folder `<prepared_root>/mitbih-<recipe>-<key>` holds beats.npz, summary.csv and
    manifest.json (the config and the SHA-256 of every input file). When the manifest
    matches, nothing is redone. The folder is built under a temporary name and renamed,
    so an interrupted run leaves nothing half-written.
    """
    records = list(records) if records else list(MITDB_RECORDS)
    config = {
        "version": MANIFEST_VERSION,
        "recipe": recipe.params(),
        "records": records,
        "lead": lead,
        "missing_lead": missing_lead,
    }
    target = Path(prepared_root) / f"mitbih-{recipe.name}-{_manifest_key(config)}"
    mitdb_dir = ensure_mitdb(mitdb_dir, records, download=download)
    manifest = {**config, "inputs": verify_checksums(mitdb_dir, records)}
    manifest_file = target / "manifest.json"
    if manifest_file.is_file():
        found = json.loads(manifest_file.read_text())
        if {key: found.get(key) for key in manifest} == manifest:
            log.info("prepared beats are up to date in %s: nothing to do", target)
            return target
        log.info("the manifest in %s differs from the config or inputs: preparing again", target)

    parts, names, skipped = [], [], []
    iterator = track(records, description="Preparing MIT-BIH") if progress else records
    for name in iterator:
        record = read_record(mitdb_dir, name, lead=lead, missing_lead=missing_lead)
        if record is None:
            skipped.append(name)
            continue
        beats = recipe.extract(record)
        parts.append(beats)
        names.append(np.full(len(beats.labels), name))
    if not parts:
        raise DataError(f"{mitdb_dir}: no record had a {lead} lead; nothing to prepare")
    table = BeatTable(
        records=np.concatenate(names),
        beats=Beats(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                       for f in fields(Beats)}),
    )
    manifest["skipped_records"] = skipped
    manifest["beats"] = int(len(table.records))
    with atomic_path(target) as tmp:
        tmp.mkdir()
        table.save(tmp / "beats.npz")
        table.summary().to_csv(tmp / "summary.csv")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    counts = np.bincount(table.beats.labels, minlength=len(AAMI_CLASSES))
    log.info(
        "prepared %d beats (%s) from %d records into %s%s", len(table.records),
        ", ".join(f"{c} {n:,}" for c, n in zip(AAMI_CLASSES, counts, strict=True)),
        len(parts), target, f"; skipped {', '.join(skipped)}" if skipped else "",
    )
    return target


def assign_splits(
    table: BeatTable,
    split: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> dict[str, np.ndarray]:
    """Row indices of train/val/test for one split strategy (see MitbihDataModule)."""
    labels, records = table.beats.labels, table.records
    fractions = {  # test first, then validation as a share of the rest
        "train": (1 - test_fraction) * (1 - val_fraction),
        "val": (1 - test_fraction) * val_fraction,
        "test": test_fraction,
    }
    if split == "random":
        return stratified_split(labels, fractions, seed, AAMI_CLASSES, "MIT-BIH beats")
    if split == "records":
        return grouped_split(records, fractions, seed, "MIT-BIH records")
    if split == "interpatient":
        in_ds1 = np.flatnonzero(np.isin(records, DS1))
        if len(in_ds1) == 0 or not np.isin(records, DS2).any():
            raise DataError("interpatient split: the prepared records include no DS1 or no DS2")
        inner = grouped_split(
            records[in_ds1], {"train": 1 - val_fraction, "val": val_fraction}, seed, "DS1"
        )
        return {
            "train": in_ds1[inner["train"]],
            "val": in_ds1[inner["val"]],
            "test": np.flatnonzero(np.isin(records, DS2)),
        }
    raise ConfigError(f"data.split={split!r}: expected one of {', '.join(SPLITS)}")


class MitbihDataModule(BeatsDataModuleBase):
    """Beats prepared from the raw MIT-BIH Arrhythmia Database (`data=mitbih`).

    `prepare_data` downloads the records when `mitdb_dir` has none (wfdb) and runs the
    recipe unless an up-to-date preparation exists. Splits (`split`):
    - random: stratified by class, `test_fraction` (0.2, as the Kaggle files) for test,
      then `val_fraction` of the rest for validation;
    - records: the same shares of whole records, no record in two splits;
    - interpatient: de Chazal's DS1 for train and validation (validation = whole DS1
      records), DS2 for test; paced records (102, 104, 107, 217) excluded.
    The split is saved beside the prepared data (split.csv, plus Kaggle-format
    mitbih_train.csv / mitbih_test.csv for the kachuee recipe). With `rr_features` (centered
    recipe) each beat carries its R-R features after its samples, for models with
    `num_features` (resnet1d, inception1d).
    """

    def __init__(
        self,
        mitdb_dir: str,
        prepared_dir: str,
        recipe: Recipe,
        split: str = "random",
        records: Sequence[str] | None = None,
        exclude_records: Sequence[str] = (),
        lead: str = "MLII",
        missing_lead: str = "skip",
        download: bool = True,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        class_names: Sequence[str] = AAMI_CLASSES,
        signal_length: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        balance: str = "none",
        balance_to: int | None = None,
        augment: SignalAugment | None = None,
        rr_features: bool = False,
    ) -> None:
        super().__init__(class_names, batch_size, eval_batch_size, num_workers, seed, balance,
                         balance_to, augment)
        if split not in SPLITS:
            raise ConfigError(f"data.split={split!r}: expected one of {', '.join(SPLITS)}")
        if signal_length is not None and int(signal_length) != recipe.length:
            raise ConfigError(
                f"data.signal_length={signal_length} but the {recipe.name} recipe makes beats "
                f"of {recipe.length} samples"
            )
        if list(class_names) != list(AAMI_CLASSES):
            raise ConfigError(
                f"data.class_names={list(class_names)}: MIT-BIH beats use the AAMI classes "
                f"{list(AAMI_CLASSES)}"
            )
        self.mitdb_dir = Path(mitdb_dir)
        self.prepared_root = Path(prepared_dir)
        self.recipe = recipe
        self.split = split
        chosen = [str(r) for r in (records or MITDB_RECORDS)]
        excluded = {str(r) for r in exclude_records}
        if split == "interpatient":
            excluded |= set(PACED)
        self.records = [r for r in chosen if r not in excluded]
        self.lead = lead
        self.missing_lead = missing_lead
        self.download = download
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.prepared_path: Path | None = None
        self.rr_features = bool(rr_features)
        if self.rr_features and not isinstance(recipe, CenteredRecipe):
            raise ConfigError(f"data.rr_features=true: the {recipe.name} recipe makes no R-R "
                              "features; use data/recipe=centered")
        self.signal_length = int(recipe.length)
        self.rate = float(recipe.rate)
        self.feature_names = tuple(RR_FEATURES) if self.rr_features else ()

    def prepare_data(self) -> None:
        if self.prepared_path is not None:  # Lightning calls this again in fit and test
            return
        self.prepared_path = prepare_mitbih(
            self.mitdb_dir, self.prepared_root, self.recipe, self.records, self.lead,
            self.missing_lead, self.download,
        )

    def _split_dir(self) -> Path:
        assert self.prepared_path is not None
        fractions = f"v{self.val_fraction:g}" + (
            "" if self.split == "interpatient" else f"-t{self.test_fraction:g}"
        )
        return self.prepared_path / "splits" / f"{self.split}-seed{self.seed}-{fractions}"

    def load_splits(self) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], pd.DataFrame]:
        if self.prepared_path is None:
            self.prepare_data()
        assert self.prepared_path is not None
        table = BeatTable.load(self.prepared_path / "beats.npz")
        parts = assign_splits(table, self.split, self.seed, self.val_fraction, self.test_fraction)
        labels = table.beats.labels
        frame = split_table(parts, record=table.records, sample=table.beats.samples, label=labels)
        self._save_split(frame, table, parts)
        signals = table.beats.signals
        if self.rr_features:  # appended after the samples; the model splits them off
            signals = np.concatenate([signals, table.beats.features], axis=1)
        arrays = {name: (signals[i], labels[i]) for name, i in parts.items()}
        return arrays, frame

    def _save_split(self, frame: pd.DataFrame, table: BeatTable, parts: dict) -> None:
        folder = self._split_dir()
        if (folder / "split.csv").is_file():
            return
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            frame.to_csv(tmp / "split.csv", index=False)
            if self.recipe.name == "kachuee":
                kaggle = {
                    "mitbih_train.csv": np.sort(np.concatenate([parts["train"], parts["val"]])),
                    "mitbih_test.csv": parts["test"],
                }
                beats = table.beats
                for name, index in kaggle.items():
                    write_beats_csv(tmp / name, beats.signals[index], beats.labels[index])
        log.info("split saved in %s", folder)

    def fingerprint(self) -> dict[str, str]:
        info = {"recipe": self.recipe.name, "split": self.split}
        if self.prepared_path is not None:
            info["prepared"] = str(self.prepared_path)
            manifest = self.prepared_path / "manifest.json"
            info["manifest.sha256"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
        return info
