"""PhysioNet beat databases via wfdb: presets, fetch, verify, read a lead, beats -> AAMI.

One `Database` preset per database (mitdb, svdb, incartdb): its record names, lead
preference, paced records and nominal rate; the reader takes the rate of each record from
its header and the lead from a preference list, never assuming mitdb's. MIT-BIH record
lists follow de Chazal et al. (2004): DS1 trains, DS2 tests, paced records excluded.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import wfdb

from ecg_experiments.data.leads import Channels, choose_channels, choose_lead
from ecg_experiments.data.record_checks import (
    check_annotation_codes,
    check_annotation_file,
    check_annotations,
    check_header,
    check_signal,
)
from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.io import readable_file, sha256_file

log = logging.getLogger(__name__)

MITDB_RECORDS = (
    "100 101 102 103 104 105 106 107 108 109 111 112 113 114 115 116 117 118 119 121 122 123 "
    "124 200 201 202 203 205 207 208 209 210 212 213 214 215 217 219 220 221 222 223 228 230 "
    "231 232 233 234"
).split()
DS1 = (
    "101 106 108 109 112 114 115 116 118 119 122 124 201 203 205 207 208 209 215 220 223 230"
).split()
DS2 = (
    "100 103 105 111 113 117 121 123 200 202 210 212 213 214 219 221 222 228 231 232 233 234"
).split()
PACED = ("102", "104", "107", "217")


@dataclass(frozen=True)
class Database:
    """What the framework needs to know of one PhysioNet beat database.

    `name` is its PhysioNet slug (what `wfdb.dl_database` takes); `records` its record
    names when the folder has no RECORDS file; `record_pattern` tells its records from
    another database's; `leads` is the lead preference (the first a record has is read);
    `rate` is nominal only (each record's header gives the rate used).
    """

    name: str
    title: str
    rate: float
    leads: tuple[str, ...]
    record_pattern: str
    records: tuple[str, ...] = ()
    paced: tuple[str, ...] = ()

    def is_record(self, name: str) -> bool:
        return re.fullmatch(self.record_pattern, name) is not None


DATABASES = {
    "mitdb": Database("mitdb", "MIT-BIH Arrhythmia Database", 360.0, ("MLII",),
                      r"1\d\d|2[0-3]\d", tuple(MITDB_RECORDS), PACED),
    # 78 half-hour records 800-894 (not all numbers used), leads ECG1 / ECG2, no paced record
    "svdb": Database("svdb", "MIT-BIH Supraventricular Arrhythmia Database", 128.0,
                     ("ECG1", "ECG2"), r"8\d\d"),
    # St Petersburg INCART 12-lead Arrhythmia Database: 75 records I01-I75, 257 Hz; lead II
    # is the limb lead closest to MLII
    "incartdb": Database("incartdb", "St Petersburg INCART 12-lead Arrhythmia Database", 257.0,
                         ("II", "MLII", "V1"), r"I\d\d",
                         tuple(f"I{n:02d}" for n in range(1, 76))),
}


def databases_of(record: str, among: Sequence[Database] = tuple(DATABASES.values())
                 ) -> list[Database]:
    """The databases (of `among`) whose record names look like `record` (the presets'
    patterns do not overlap, so at most one of them)."""
    return [db for db in among if db.is_record(record)]


def get_database(name: str) -> Database:
    """The preset of a database by its PhysioNet name."""
    if name not in DATABASES:
        raise ConfigError(f"data.database={name!r}: expected one of {', '.join(DATABASES)} "
                          "(PhysioNet names of beat databases with a preset)")
    return DATABASES[name]


def database_records(directory: str | os.PathLike, database: Database) -> list[str]:
    """The records of `database` in a folder: its RECORDS file, else the preset's list, else
    the headers in the folder that name records of this database."""
    listing = Path(directory) / "RECORDS"
    if listing.is_file():
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        return [n for n in names if database.is_record(n)]
    if database.records:
        return list(database.records)
    return sorted(p.stem for p in Path(directory).glob("*.hea") if database.is_record(p.stem))

AAMI_CLASSES = ("N", "S", "V", "F", "Q")
# AAMI EC57 grouping of MIT-BIH beat symbols; any other annotation symbol is not a beat.
AAMI_MAP = {
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N",
    "A": "S", "a": "S", "J": "S", "S": "S",
    "V": "V", "E": "V",
    "F": "F",
    "/": "Q", "f": "Q", "Q": "Q",
}
_BYTES_PER_SAMPLE = {"212": 1.5, "16": 2.0, "80": 1.0, "8": 1.0, "24": 3.0, "32": 4.0}


@dataclass(frozen=True)
class Record:
    """One lead (or several) of one record with its reference beat annotations."""

    name: str
    lead: str  # the lead read, or the leads joined by "+" (MLII+V1)
    fs: float
    signal: np.ndarray  # physical units (mV), float64 [samples] or [samples, channels]
    beat_samples: np.ndarray  # int64 sample index of each beat annotation
    beat_symbols: np.ndarray  # str symbol of each beat annotation
    # annotations left out because AAMI_MAP does not cover their symbol: {symbol: count}
    unmapped: dict[str, int] = field(default_factory=dict)


def unmapped_symbols(symbols: Sequence[str]) -> dict[str, int]:
    """{symbol: count} of the annotation symbols that AAMI_MAP does not cover (rhythm and
    noise marks, comments, and beat symbols of no AAMI class such as `!` flutter waves),
    most frequent first."""
    kept = np.asarray([s for s in symbols if s not in AAMI_MAP], dtype=str)
    names, counts = np.unique(kept, return_counts=True)
    order = sorted(range(len(names)), key=lambda k: (-counts[k], names[k]))
    return {str(names[k]): int(counts[k]) for k in order}


def is_beat_symbol(symbol: str) -> bool:
    """Whether wfdb's annotation table marks `symbol` as a beat (QRS) label."""
    from wfdb.io.annotation import ann_label_table, is_qrs

    stores = ann_label_table.loc[ann_label_table["symbol"] == symbol, "label_store"]
    return any(0 <= int(k) < len(is_qrs) and is_qrs[int(k)] for k in stores)


def aami_label(symbols: np.ndarray) -> np.ndarray:
    """Class index (into AAMI_CLASSES) per beat symbol; -1 for symbols that are not beats."""
    lookup = {symbol: AAMI_CLASSES.index(cls) for symbol, cls in AAMI_MAP.items()}
    return np.array([lookup.get(s, -1) for s in symbols], dtype=np.int64)


def _record_files(directory: Path, name: str) -> list[Path]:
    return [directory / f"{name}.{ext}" for ext in ("hea", "dat", "atr")]


def _missing_files(directory: Path, records: list[str]) -> dict[str, list[str]]:
    missing = {}
    for name in records:
        absent = [p.name for p in _record_files(directory, name) if not p.is_file()]
        if absent:
            missing[name] = absent
    return missing


def download_database(directory: Path, database: Database) -> None:
    """Download a whole database with wfdb into `directory` (via a temp dir, then rename)."""
    log.info("downloading the %s from PhysioNet into %s", database.title, directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{database.name}-", dir=directory.parent))
    try:
        wfdb.dl_database(database.name, dl_dir=str(tmp))
        if directory.exists():
            for item in tmp.iterdir():
                os.replace(item, directory / item.name)
        else:
            os.replace(tmp, directory)
    except Exception as err:
        raise DataError(
            f"{directory}: the {database.name} records are not there and downloading them from "
            f"PhysioNet failed ({err}); download https://physionet.org/content/{database.name}/ "
            "by hand and point data.dir at that folder"
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_database(directory: str | os.PathLike, database: Database | str,
                    records: Sequence[str], download: bool = True) -> Path:
    """Make sure every record's .hea/.dat/.atr is in `directory`; download if none are.

    A folder that holds some records but not all is an error naming what is missing (no
    silent partial download over the user's files); a folder holding another database's
    records is never downloaded into.
    """
    database = get_database(database) if isinstance(database, str) else database
    directory = Path(directory)
    unknown = sorted(r for r in records if not database.is_record(r)
                     or (database.records and r not in database.records))
    if unknown:
        known = (f"{len(database.records)} records: {' '.join(database.records)}"
                 if database.records else f"records named like {database.record_pattern}")
        raise DataError(f"unknown {database.title} record name(s) {', '.join(unknown)}; the "
                        f"database has {known}")
    missing = _missing_files(directory, records)
    if missing and len(missing) == len(records) and download:
        download_into_own_folder(directory, database)
        missing = _missing_files(directory, records)
    if missing:
        listed = "; ".join(f"record {n}: {', '.join(files)}" for n, files in missing.items())
        raise DataError(
            f"{directory}: {database.name} files missing ({listed}); expected .hea, .dat and "
            f".atr for each record (point data.dir at a complete copy of {database.name})"
        )
    return directory


def download_into_own_folder(directory: Path, database: Database) -> None:
    """Download `database` into `directory`, unless the folder holds another database's
    records (a folder of its own, or an empty one, only)."""
    others = sorted(p.name for p in Path(directory).glob("*.hea")
                    if not database.is_record(p.stem))
    if others:
        raise DataError(
            f"{directory}: none of the {database.name} records are there, and the folder "
            f"holds other records ({', '.join(others[:3])}...); not downloading "
            f"{database.name} into it: point data.dir at a folder of its own"
        )
    download_database(Path(directory), database)


def checksum_file(directory: Path) -> Path | None:
    """The folder's SHA256SUMS (or SHA256SUMS.txt, PhysioNet's name), if it has one."""
    for name in ("SHA256SUMS", "SHA256SUMS.txt"):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def verify_checksums(directory: Path, records: list[str]) -> dict[str, str]:
    """Check the records' files against SHA256SUMS when the folder has one.

    Returns {file name: sha256} for the records' files (computed either way), which the
    preparation manifest records as its input identity.
    """
    expected: dict[str, str] = {}
    sums = checksum_file(directory)
    if sums is not None:
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                expected[parts[1].lstrip("*")] = parts[0]
    hashes = {}
    for name in records:
        for path in _record_files(directory, name):
            if not path.is_file():  # a record read without annotations (predict)
                continue
            digest = sha256_file(path)
            if path.name in expected and expected[path.name] != digest:
                raise DataError(
                    f"record {name}: {path} does not match its {sums.name} entry; expected "
                    "the file as published (a corrupt or truncated download? fetch the record "
                    f"again; a file you changed on purpose needs its line in {sums} updated)"
                )
            hashes[path.name] = digest
    return hashes


def _check_dat_size(directory: Path, header: wfdb.Record) -> None:
    if header.sig_len is None:  # no length in the record line: wfdb takes the file's
        return
    sizes: dict[str, float] = {}
    for file_name, fmt in zip(header.file_name, header.fmt, strict=True):
        per_sample = _BYTES_PER_SAMPLE.get(str(fmt))
        if per_sample is None:
            return
        sizes[file_name] = sizes.get(file_name, 0.0) + per_sample * header.sig_len
    for file_name, expected in sizes.items():
        actual = readable_file(directory / file_name, f"the signal file of record "
                               f"{header.record_name}").stat().st_size
        if actual < int(expected):
            raise DataError(
                f"record {header.record_name}: {directory / file_name} has {actual:,} bytes but "
                f"its header promises {int(expected):,} ({header.sig_len:,} samples); the file "
                "is truncated (expected the whole signal file: download the record again)"
            )


def detect_beats(signal: np.ndarray, fs: float) -> np.ndarray:
    """R-peak samples found by wfdb's XQRS detector, moved onto the local maximum."""
    from wfdb import processing

    peaks = processing.xqrs_detect(signal, fs=fs, verbose=False)
    radius = int(round(0.1 * fs))
    corrected = processing.correct_peaks(signal, peaks, search_radius=radius,
                                         smooth_window_size=int(round(0.15 * fs)),
                                         peak_dir="compare")
    return np.unique(np.asarray(corrected, dtype=np.int64))


def read_record(
    directory: str | os.PathLike, name: str, lead: str | Sequence[str] = "MLII",
    missing_lead: str = "skip", require_annotations: bool = True,
    channels: Channels | None = None,
) -> Record | None:
    """Read one lead of a record (or one per channel of `channels`: a signal [samples,
    channels], data/leads.py) and its beat annotations, at the record's own rate.

    `lead` is a lead name or a preference list (`["MLII", "ECG1", "II"]`): the first the
    record has is read. `missing_lead` says what to do when it has none of them: "skip"
    (return None and log it), "first" (use the record's first channel) or "error".
    Without a .atr file and `require_annotations=False`, beats come from the XQRS
    detector and their symbols are "?" (unknown class). The files are checked against the
    folder's SHA256SUMS when it has one, and the record by `record_checks` (header values,
    signal length, annotation file structure and codes, annotation order, beat rate).
    Annotations whose symbol AAMI_MAP does not cover are left out and counted
    (`Record.unmapped`).
    """
    directory = Path(directory)
    base = str(directory / name)
    readable_file(f"{base}.hea", f"the WFDB header of record {name}")
    if checksum_file(directory) is not None:  # a PhysioNet folder: every byte is checked
        verify_checksums(directory, [name])
    try:
        header = wfdb.rdheader(base)
    except Exception as err:
        raise DataError(f"record {name}: cannot read {base}.hea ({err or type(err).__name__});"
                        " expected a WFDB header (record line, then one line per signal)"
                        ) from err
    check_header(header, Path(f"{base}.hea"))
    # a signal line without its (optional) description has no name
    channel_names = [str(n) if n else f"signal {k} (unnamed)"
                     for k, n in enumerate(header.sig_name or [])]
    if channels:
        chosen = choose_channels(name, channel_names, channels, missing_lead)
    else:
        wanted = [lead] if isinstance(lead, str) else [str(x) for x in lead]
        one = choose_lead(name, channel_names, wanted, missing_lead)
        chosen = None if one is None else [one]
    if chosen is None:
        return None
    _check_dat_size(directory, header)
    atr = Path(f"{base}.atr")
    annotated = require_annotations or atr.is_file()
    if atr.is_file():  # a missing one is named by wfdb's reading below
        check_annotation_file(readable_file(atr, f"the annotations of record {name}"))
    try:
        signal, fields = wfdb.rdsamp(base, channels=chosen)
        annotation = wfdb.rdann(base, "atr") if annotated else None
    except FileNotFoundError as err:
        raise DataError(f"record {name}: {err.filename} is missing") from err
    except Exception as err:
        raise DataError(f"record {name}: cannot read it with wfdb ({err})") from err
    signal = signal.astype(np.float64)
    for column, channel in enumerate(chosen):
        check_signal(signal[:, column], header,
                     Path(base).with_name(header.file_name[channel]))
    if not channels:
        signal = signal[:, 0]
    if annotation is None:
        log.info("record %s has no .atr annotations: detecting beats with XQRS (lead %s)",
                 name, channel_names[chosen[0]])
        samples = detect_beats(signal if signal.ndim == 1 else signal[:, 0],
                               float(fields["fs"]))
        symbols = np.full(len(samples), "?")
        unmapped: dict[str, int] = {}
    else:
        symbols = np.asarray(annotation.symbol)
        samples = np.asarray(annotation.sample, dtype=np.int64)
        kinds, counts = np.unique(symbols, return_counts=True)
        beats = sum(int(n) for kind, n in zip(kinds, counts, strict=True) if is_beat_symbol(kind))
        check_annotation_codes(annotation, atr)
        check_annotations(samples, beats, len(signal), float(fields["fs"]), atr, annotation.fs)
        unmapped = unmapped_symbols(annotation.symbol)
        is_beat = np.isin(symbols, list(AAMI_MAP))
        symbols, samples = symbols[is_beat], samples[is_beat]
    return Record(
        name=name,
        lead="+".join(channel_names[k] for k in chosen),
        fs=float(fields["fs"]),
        signal=signal,
        beat_samples=samples,
        beat_symbols=symbols,
        unmapped=unmapped,
    )
