"""Beat databases: preparation from raw PhysioNet records (cached, verified) and the DataModule.

`data=physionet` reads any database with a preset (`physionet.DATABASES`: mitdb, svdb,
incartdb), one or several at once; `data=mitbih` is its MIT-BIH preset. Record ids carry
the database (`mitdb/101`, `svdb/800`), so record-grouped splits stay patient-wise.
"""

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

from ecg_experiments.data.augment import SignalAugment
from ecg_experiments.data.beats import BeatsDataModuleBase, write_beats_csv
from ecg_experiments.data.identity import ALSO, beat_ids, distinct_row_ids
from ecg_experiments.data.physionet import (
    AAMI_CLASSES,
    DS1,
    DS2,
    Database,
    database_records,
    databases_of,
    download_into_own_folder,
    ensure_database,
    get_database,
    is_beat_symbol,
    read_record,
    verify_checksums,
)
from ecg_experiments.data.segment import Beats, CenteredRecipe, KachueeRecipe
from ecg_experiments.data.splits import cv_fold, grouped_split, split_table, stratified_split
from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.io import atomic_path
from ecg_experiments.progress import track

log = logging.getLogger(__name__)

Recipe = KachueeRecipe | CenteredRecipe
MANIFEST_VERSION = 3  # 2: record ids carry the database; leads and rates per record;
# 3: records pass data/record_checks.py (tables made before are made again)
SPLITS = ("random", "records", "interpatient", "all")


@dataclass
class BeatTable:
    """Every extracted beat with its record, R-peak sample, symbol, AAMI class and signal."""

    records: np.ndarray  # str [n]
    beats: Beats

    def save(self, path: Path) -> None:
        np.savez(
            path,
            records=self.records.astype("U24"),
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


def record_id(database: str, name: str) -> str:
    """The id of a record across databases: `<database>/<record>`."""
    return f"{database}/{name}"


def prepare_database(
    directory: str | os.PathLike,
    prepared_root: str | os.PathLike,
    recipe: Recipe,
    database: Database | str = "mitdb",
    records: Sequence[str] | None = None,
    leads: Sequence[str] | None = None,
    missing_lead: str = "skip",
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Turn the raw records of one database into a beat table; return its folder.

    Each record is read at its own rate (from its header) with the first lead of `leads`
    (default: the database's preference) it has, and resampled by the recipe. The folder
    `<prepared_root>/<database>-<recipe>-<key>` holds beats.npz, summary.csv and
    manifest.json (the config, the lead and rate of every record, the SHA-256 of every
    input file, and per record the annotations left out because the AAMI map does not cover
    their symbol: `unmapped_symbols`, also logged in one line). When the manifest matches,
    nothing is redone. The folder is built under a
    temporary name and renamed, so an interrupted run leaves nothing half-written.
    """
    database = get_database(database) if isinstance(database, str) else database
    directory = Path(directory)
    leads = list(leads) if leads else list(database.leads)
    # before any download: the preset's record list (a folder's RECORDS once it is there)
    records = list(records) if records else (
        list(database.records) or database_records(directory, database))
    if not records:  # a database known by its folder's listing: fetch it when empty
        if download:
            download_into_own_folder(directory, database)
        records = database_records(directory, database)
        if not records:
            raise DataError(f"{directory}: no {database.name} records (no RECORDS file or "
                            f"headers named like {database.record_pattern}); point data.dir "
                            f"at a copy of {database.name}, or allow data.download")
    config = {
        "version": MANIFEST_VERSION,
        "database": database.name,
        "recipe": recipe.params(),
        "records": records,
        "leads": leads,
        "missing_lead": missing_lead,
    }
    target = Path(prepared_root) / f"{database.name}-{recipe.name}-{_manifest_key(config)}"
    directory = ensure_database(directory, database, records, download=download)
    manifest = {**config, "inputs": verify_checksums(directory, records)}
    manifest_file = target / "manifest.json"
    if manifest_file.is_file():
        found = json.loads(manifest_file.read_text())
        if {key: found.get(key) for key in manifest} == manifest:
            log.info("prepared %s beats are up to date in %s: nothing to do", database.name,
                     target)
            log_unmapped(database.name, found.get("unmapped_symbols") or {}, manifest_file)
            return target
        log.info("the manifest in %s differs from the config or inputs: preparing again", target)

    parts, names, skipped, used, unmapped = [], [], [], {}, {}
    description = f"preparing {database.name}"
    iterator = track(records, description, len(records), "records") if progress else records
    for name in iterator:
        record = read_record(directory, name, lead=leads, missing_lead=missing_lead)
        if record is None:
            skipped.append(name)
            continue
        used[name] = {"lead": record.lead, "fs": record.fs}
        unmapped[name] = dict(record.unmapped)
        beats = recipe.extract(record)
        parts.append(beats)
        names.append(np.full(len(beats.labels), record_id(database.name, name)))
    if not parts:
        raise DataError(f"{directory}: no {database.name} record had a {'/'.join(leads)} "
                        "lead; nothing to prepare (set data.leads or data.missing_lead=first)")
    table = BeatTable(
        records=np.concatenate(names),
        beats=Beats(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                       for f in fields(Beats)}),
    )
    manifest["skipped_records"] = skipped
    manifest["used"] = used
    manifest["beats"] = int(len(table.records))
    manifest["unmapped_symbols"] = unmapped
    with atomic_path(target) as tmp:
        tmp.mkdir()
        table.save(tmp / "beats.npz")
        table.summary().to_csv(tmp / "summary.csv")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    counts = np.bincount(table.beats.labels, minlength=len(AAMI_CLASSES))
    log.info(
        "prepared %d %s beats (%s) from %d records (%s) into %s%s", len(table.records),
        database.name, ", ".join(f"{c} {n:,}" for c, n in zip(AAMI_CLASSES, counts, strict=True)),
        len(parts), describe_sources(used, recipe), target,
        f"; skipped {', '.join(skipped)}" if skipped else "",
    )
    log_unmapped(database.name, unmapped, manifest_file)
    return target


def log_unmapped(database: str, per_record: dict[str, dict[str, int]], manifest: Path) -> None:
    """One line: the annotation symbols (with counts over the records) left out because the
    AAMI map does not cover them, beat symbols (wfdb's QRS labels, e.g. `!` flutter waves)
    apart from other marks (rhythm `+`, noise `~`, comments)."""
    totals: dict[str, int] = {}
    for counts in per_record.values():
        for symbol, n in counts.items():
            totals[symbol] = totals.get(symbol, 0) + int(n)
    if not totals:
        return
    ordered = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    beats = [f"{s} {n:,}" for s, n in ordered if is_beat_symbol(s)]
    marks = [f"{s} {n:,}" for s, n in ordered if not is_beat_symbol(s)]
    parts = ([f"beat symbols of no AAMI class {', '.join(beats)}"] if beats else []) + (
        [f"non-beat annotations {', '.join(marks)}"] if marks else [])
    log.info("%s: annotations left out (symbol outside the AAMI map): %s; per record: %s "
             "(unmapped_symbols)", database, "; ".join(parts), manifest)


def describe_sources(used: dict[str, dict], recipe: Recipe) -> str:
    """`lead ECG1 (10 records), 128 Hz -> 125 Hz (kachuee recipe)`: what a preparation read."""
    leads = pd.Series([u["lead"] for u in used.values()]).value_counts()
    rates = sorted({float(u["fs"]) for u in used.values()})
    lead_text = ", ".join(f"lead {lead} ({n} record{'s' if n > 1 else ''})"
                          for lead, n in leads.items())
    rate_text = "/".join(f"{r:g}" for r in rates)
    return f"{lead_text}; {rate_text} Hz -> {recipe.rate:g} Hz ({recipe.name} recipe)"


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
    """`prepare_database` for the MIT-BIH Arrhythmia Database."""
    return prepare_database(mitdb_dir, prepared_root, recipe, "mitdb", records, [lead],
                            missing_lead, download, progress)


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


def _parse_records(given: Sequence[str] | None, databases: Sequence[Database],
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


def _same_rows(saved: pd.DataFrame, frame: pd.DataFrame) -> bool:
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
    its samples, for models with `num_features` (resnet1d, inception1d).
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
        chosen = _parse_records(records, self.databases)
        excluded = _parse_records(exclude_records, self.databases,
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
        self.missing_lead = missing_lead
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
            name += "-" + _manifest_key({"with": others})
        excluded = sorted(record_id(db, r) for db, names in self._excluded.items()
                          for r in names)
        if excluded:  # the rows beat_table leaves out of the prepared beats
            name += "-x" + _manifest_key({"excluded": excluded})
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
        if self.recipe.name == "kachuee":  # also the row of the CSVs it is exported to
            also = np.asarray(distinct_row_ids(table.beats.signals), dtype=object)
            frame[ALSO] = also[frame["index"].to_numpy()]
        self._save_split(frame, table, parts)
        signals = table.beats.signals
        if self.rr_features:  # appended after the samples; the model splits them off
            signals = np.concatenate([signals, table.beats.features], axis=1)
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
            if not _same_rows(pd.read_csv(saved, dtype=str), frame):
                log.warning("%s holds another split than this run's (same name, other rows): "
                            "replacing it", saved)
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / "split.csv").write_text(text)
            if self.recipe.name == "kachuee":
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


class MitbihDataModule(PhysionetDataModule):
    """The MIT-BIH preset with the options of runs made before `data=physionet` existed
    (`mitdb_dir`, `lead`); `data=mitbih` now builds PhysionetDataModule directly."""

    def __init__(self, mitdb_dir: str, prepared_dir: str, recipe: Recipe,
                 lead: str = "MLII", **options: object) -> None:
        super().__init__(prepared_dir, recipe, database="mitdb", dir=mitdb_dir,
                         leads=[lead], **options)
