"""The DataModule of beats from raw PhysioNet records (`data=physionet`, `data=mitbih`).

`data=physionet` reads any database with a preset (`physionet.DATABASES`: mitdb, svdb,
incartdb), one or several at once; `data=mitbih` is its MIT-BIH preset. Record ids carry
the database (`mitdb/101`, `svdb/800`), so record-grouped splits stay patient-wise. The
records become a cached beat table (data/beat_table.py), split by data/record_splits.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd

from ecg_experiments.data.augment import SignalAugment
from ecg_experiments.data.beat_table import (
    BeatTable,
    Recipe,
    describe_sources,
    manifest_key,
    prepare_database,
    record_id,
)
from ecg_experiments.data.beats import BeatsDataModuleBase, write_beats_csv
from ecg_experiments.data.identity import ALSO, beat_ids, distinct_row_ids
from ecg_experiments.data.leads import MISSING_LEAD, Channels, channel_entries, channel_names
from ecg_experiments.data.physionet import AAMI_CLASSES, get_database
from ecg_experiments.data.record_splits import (
    SPLITS,
    assign_splits,
    cross_validation_parts,
    parse_records,
)
from ecg_experiments.data.segment import Beats, CenteredRecipe, with_features
from ecg_experiments.data.splits import split_table
from ecg_experiments.errors import ConfigError
from ecg_experiments.io import atomic_path

log = logging.getLogger(__name__)


def same_rows(saved: pd.DataFrame, frame: pd.DataFrame) -> bool:
    """Whether a saved split table assigns the same rows as `frame` (compared on the columns
    both have: a table saved before a column was added still describes the same split)."""
    common = [c for c in frame.columns if c in saved.columns]
    if len(saved) != len(frame) or not common:
        return False
    ours = frame[common].astype(str).reset_index(drop=True)
    return bool((saved[common].reset_index(drop=True) == ours).all().all())


class PhysionetDataModule(BeatsDataModuleBase):
    """Beats prepared from raw PhysioNet beat databases (`data=physionet`, `data=mitbih`).

    `database` (or several: `databases`) names presets of `physionet.DATABASES`; each is read
    from `dirs[name]`, `dir` (the first database) or `<root_dir>/<name>`, and downloaded there
    with wfdb when the folder holds none of its records (never into another database's
    folder). Each record is read at its own rate, with the first lead of `leads` it has
    (default: each database's preference), and resampled by the recipe. `prepare_data`
    prepares each database once (cached by its manifest). Splits (`split`):
    - random: stratified by class, `test_fraction` (0.2, as the Kaggle files) for test,
      then `val_fraction` of the rest for validation;
    - records: the same shares of whole records, no record in two splits;
    - interpatient: de Chazal's mitdb DS1 for train and validation (validation = whole DS1
      records; every record of another database trains only), mitdb DS2 for test; paced
      records excluded;
    - all: every beat in test (for evaluating a trained model on another database; what
      `evaluate holdout=all` chooses).
    With `folds` and `fold`, train/val become fold `fold` of a record-grouped stratified
    k-fold over the training pool (test unchanged). The split is saved beside the prepared
    data (split.csv, plus Kaggle-format mitbih_train.csv / mitbih_test.csv for the kachuee
    recipe). With `rr_features` (centered recipe) each beat carries its R-R features after
    its samples, for models with `num_features` (resnet1d, inception1d). With `channels`
    (`[MLII, V1]`, data/leads.py) each beat is [channels, length] (`missing_lead` decides
    for records without a named lead; the manifest's `used` names each record's leads).
    """

    splits = SPLITS

    def __init__(
        self,
        prepared_dir: str,
        recipe: Recipe,
        database: str = "mitdb",
        databases: Sequence[str] | None = None,
        dir: str | None = None,  # noqa: A002 - the option users write as data.dir
        dirs: dict[str, str] | None = None,
        root_dir: str | None = None,
        split: str = "random",
        records: Sequence[str] | None = None,
        exclude_records: Sequence[str] = (),
        leads: Sequence[str] | None = None,
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
        folds: int | None = None,
        fold: int | None = None,
        channels: Channels | None = None,
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
                f"data.class_names={list(class_names)}: PhysioNet beats use the AAMI classes "
                f"{list(AAMI_CLASSES)}"
            )
        names = [str(d) for d in (databases or [database])]
        self.databases = [get_database(name) for name in dict.fromkeys(names)]
        if split == "interpatient" and "mitdb" not in names:
            raise ConfigError(f"data.split=interpatient trains on mitdb DS1 and tests on DS2; "
                              f"data.databases={names} has no mitdb (use split=records or all)")
        dirs = {str(k): str(v) for k, v in (dirs or {}).items() if v}
        if dir:
            dirs[self.databases[0].name] = str(dir)
        self.dirs = {}
        for db in self.databases:
            if db.name not in dirs and not root_dir:
                raise ConfigError(f"data.dirs has no folder for {db.name} (set data.dir, "
                                  f"data.dirs.{db.name} or data.root_dir)")
            self.dirs[db.name] = Path(dirs.get(db.name) or Path(str(root_dir)) / db.name)
        self.prepared_root = Path(prepared_dir)
        self.recipe = recipe
        self.split = split
        chosen = parse_records(records, self.databases)
        excluded = parse_records(exclude_records, self.databases,
                                  "data.exclude_records") or {}
        # records per database: those named, else the preset's list (None: every record
        # the folder lists); exclusions (and paced records for interpatient) left out
        self.records: dict[str, list[str] | None] = {}
        self._excluded: dict[str, set[str]] = {}
        for db in self.databases:
            if chosen is not None and not chosen[db.name]:
                continue  # records were named, none of this database
            drop = set(excluded.get(db.name, [])) | (
                set(db.paced) if split == "interpatient" else set())
            picked = chosen[db.name] if chosen is not None else (list(db.records) or None)
            self.records[db.name] = None if picked is None else [
                r for r in picked if r not in drop]
            self._excluded[db.name] = drop
        self.leads = list(leads) if leads else None
        if missing_lead not in MISSING_LEAD:
            raise ConfigError(f"data.missing_lead={missing_lead!r}: expected one of "
                              f"{', '.join(MISSING_LEAD)}")
        self.missing_lead = missing_lead
        if channels and leads:
            raise ConfigError(f"data.leads={list(leads)} and data.channels={list(channels)}: "
                              "give one (data.leads picks one lead; data.channels one per "
                              "channel, each a name or a list of alternatives)")
        self.channels = channel_entries(channels) if channels else None
        self.lead_names = channel_names(self.channels)
        if self.channels and getattr(recipe, "rpeaks", "annotations") != "annotations":
            raise ConfigError("data.channels: beats of several leads are cut at the annotated "
                              f"R-peaks; data.recipe.rpeaks={recipe.rpeaks} would cut each "
                              "lead elsewhere")
        self.download = download
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        if (folds is None) != (fold is None):
            raise ConfigError(f"data.folds={folds} and data.fold={fold}: give both or neither")
        if folds is not None and not 0 <= int(fold) < int(folds):
            raise ConfigError(f"data.fold={fold}: expected 0 <= fold < data.folds={folds}")
        if split == "all" and folds is not None:
            raise ConfigError("data.split=all puts every beat in test: nothing to cross-validate")
        self.folds = None if folds is None else int(folds)
        self.fold = None if fold is None else int(fold)
        self.prepared_paths: dict[str, Path] = {}
        self.rr_features = bool(rr_features)
        if self.rr_features and not isinstance(recipe, CenteredRecipe):
            raise ConfigError(f"data.rr_features=true: the {recipe.name} recipe makes no R-R "
                              "features; use data/recipe=centered")
        self.signal_length = int(recipe.length)
        self.rate = float(recipe.rate)
        self.feature_names = recipe.feature_names if self.rr_features else ()

    @property
    def prepared_path(self) -> Path | None:
        """The prepared folder of the first database (None before `prepare_data`)."""
        return next(iter(self.prepared_paths.values()), None)

    def prepare_data(self) -> None:
        if self.prepared_paths:  # Lightning calls this again in fit and test
            return
        for db in self.databases:
            if db.name not in self.records:
                continue
            self.prepared_paths[db.name] = prepare_database(
                self.dirs[db.name], self.prepared_root, self.recipe, db,
                self.records[db.name], self.leads, self.missing_lead, self.download,
                channels=self.channels,
            )
            log.info("%s: %s", db.name, describe_sources(self.manifest(db.name)["used"],
                                                         self.recipe))

    def manifest(self, database: str) -> dict:
        """The preparation manifest of one database (after `prepare_data`)."""
        return json.loads((self.prepared_paths[database] / "manifest.json").read_text())

    def beat_table(self) -> BeatTable:
        """Every prepared beat of the chosen databases and records (after `prepare_data`)."""
        tables = [BeatTable.load(path / "beats.npz") for path in self.prepared_paths.values()]
        table = tables[0] if len(tables) == 1 else BeatTable(
            records=np.concatenate([t.records for t in tables]),
            beats=Beats(**{f.name: np.concatenate([getattr(t.beats, f.name) for t in tables])
                           for f in fields(Beats)}))
        excluded = [record_id(db, r) for db, names in self._excluded.items() for r in names]
        keep = ~np.isin(table.records, excluded)
        if keep.all():
            return table
        return BeatTable(records=table.records[keep], beats=Beats(
            **{f.name: getattr(table.beats, f.name)[keep] for f in fields(Beats)}))

    def _split_dir(self) -> Path:
        """The folder of this split beside the prepared data, named by everything that picks
        its rows: split, seed, fractions, the databases' prepared folders, the records left
        out of them (`exclude_records`, paced records) and the fold."""
        assert self.prepared_path is not None
        fractions = f"v{self.val_fraction:g}" + (
            "" if self.split == "interpatient" else f"-t{self.test_fraction:g}"
        )
        name = f"{self.split}-seed{self.seed}-{fractions}"
        if len(self.prepared_paths) > 1:  # which databases' beats the split is of
            others = sorted(p.name for p in self.prepared_paths.values())
            name += "-" + manifest_key({"with": others})
        excluded = sorted(record_id(db, r) for db, names in self._excluded.items()
                          for r in names)
        if excluded:  # the rows beat_table leaves out of the prepared beats
            name += "-x" + manifest_key({"excluded": excluded})
        if self.folds is not None:
            name += f"-fold{self.fold}of{self.folds}"
        return self.prepared_path / "splits" / name

    def load_splits(self) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], pd.DataFrame]:
        if self.prepared_path is None:
            self.prepare_data()
        assert self.prepared_path is not None
        table = self.beat_table()
        parts = assign_splits(table, self.split, self.seed, self.val_fraction, self.test_fraction)
        if self.folds is not None:
            parts = cross_validation_parts(table, parts, self.folds, self.fold, self.seed,
                                           self.split)
        labels = table.beats.labels
        frame = split_table(parts, record=table.records, sample=table.beats.samples, label=labels)
        # the identity of each beat (evaluation/seen.py): its record and R-peak sample
        frame["sample_id"] = beat_ids(frame["record"], frame["sample"])
        if self.recipe.name == "kachuee" and not self.channels:  # also the row of the CSVs
            # it is exported to (one lead per row: several-lead beats get no CSV)
            also = np.asarray(distinct_row_ids(table.beats.signals), dtype=object)
            frame[ALSO] = also[frame["index"].to_numpy()]
        self._save_split(frame, table, parts)
        signals = table.beats.signals
        if self.rr_features:  # appended after the samples; the model splits them off
            signals = with_features(signals, table.beats.features)
        arrays = {name: (signals[i], labels[i]) for name, i in parts.items()}
        return arrays, frame

    def _save_split(self, frame: pd.DataFrame, table: BeatTable, parts: dict) -> None:
        """Save the split (and the Kaggle-format CSVs of the kachuee recipe) in `_split_dir`;
        a saved split that differs from this one (a folder named by too little) is
        replaced, with a warning, never left to describe another split."""
        folder = self._split_dir()
        text = frame.to_csv(index=False)
        saved = folder / "split.csv"
        if saved.is_file():
            if saved.read_text() == text:
                return
            if not same_rows(pd.read_csv(saved, dtype=str), frame):
                log.warning("%s holds another split than this run's (same name, other rows): "
                            "replacing it", saved)
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / "split.csv").write_text(text)
            if self.recipe.name == "kachuee" and not self.channels:  # the format has one lead
                kaggle = {
                    "mitbih_train.csv": np.sort(np.concatenate([parts["train"], parts["val"]])),
                    "mitbih_test.csv": parts["test"],
                }
                beats = table.beats
                for name, index in kaggle.items():
                    write_beats_csv(tmp / name, beats.signals[index], beats.labels[index])
        log.info("split saved in %s", folder)

    def record_groups(self) -> np.ndarray | None:
        """The record id of every row of the split table (after setup)."""
        return None if self.split_frame is None else self.split_frame["record"].to_numpy()

    def fingerprint(self) -> dict[str, str]:
        info = {"recipe": self.recipe.name, "rate": f"{self.recipe.rate:g}",
                "split": self.split, "databases": ", ".join(self.records)}
        if self.folds is not None:
            info["fold"] = f"{self.fold} of {self.folds}"
        for name, path in self.prepared_paths.items():
            prefix = "" if len(self.prepared_paths) == 1 else f"{name}."
            info[f"{prefix}prepared"] = str(path)
            manifest = path / "manifest.json"
            info[f"{prefix}manifest.sha256"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
            info[f"{prefix}sources"] = describe_sources(self.manifest(name)["used"], self.recipe)
        return info
