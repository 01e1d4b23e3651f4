"""Records to a cached beat table: every beat of a PhysioNet database's records, cut by a
recipe, checked and cached under the prepared-data folder (`beats.npz`, `summary.csv`,
`manifest.json`); a cache whose manifest matches is reused."""

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

from ecg_experiments.data.leads import Channels, channel_entries, channel_names
from ecg_experiments.data.physionet import (
    AAMI_CLASSES,
    Database,
    database_records,
    download_into_own_folder,
    ensure_database,
    get_database,
    is_beat_symbol,
    read_record,
    verify_checksums,
)
from ecg_experiments.data.segment import Beats, CenteredRecipe, KachueeRecipe, cut_beats
from ecg_experiments.errors import DataError
from ecg_experiments.io import atomic_path
from ecg_experiments.progress import track

log = logging.getLogger(__name__)

Recipe = KachueeRecipe | CenteredRecipe
MANIFEST_VERSION = 3  # 2: record ids carry the database; leads and rates per record;
# 3: records pass data/record_checks.py (tables made before are made again)


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


def manifest_key(config: dict) -> str:
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
    channels: Channels | None = None,
) -> Path:
    """Turn the raw records of one database into a beat table; return its folder.

    Each record is read at its own rate (from its header) with the first lead of `leads`
    (default: the database's preference) it has, or with one lead per channel of `channels`
    (beats [n, channels, length]; data/leads.py), and resampled by the recipe. The folder
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
        # only when set: the key of one-lead tables made before stays what it was
        **({"channels": channel_entries(channels)} if channels else {}),
    }
    target = Path(prepared_root) / f"{database.name}-{recipe.name}-{manifest_key(config)}"
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
        record = read_record(directory, name, lead=leads, missing_lead=missing_lead,
                             channels=channels)
        if record is None:
            skipped.append(name)
            continue
        used[name] = {"lead": record.lead, "fs": record.fs}
        unmapped[name] = dict(record.unmapped)
        beats = cut_beats(recipe, record)
        parts.append(beats)
        names.append(np.full(len(beats.labels), record_id(database.name, name)))
    if not parts:
        wanted = "+".join(channel_names(channels)) if channels else "/".join(leads)
        raise DataError(f"{directory}: no {database.name} record had a {wanted} lead; nothing "
                        "to prepare (set data.leads, data.channels or data.missing_lead=first)")
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
