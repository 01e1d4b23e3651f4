"""MIT-BIH Arrhythmia Database records via wfdb: fetch, verify, read a lead, map beats to AAMI.

Record lists follow de Chazal et al. (2004): DS1 trains, DS2 tests, paced records excluded.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import wfdb

from ecg_experiments.errors import DataError
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
    """One lead of one record with its reference beat annotations."""

    name: str
    lead: str
    fs: float
    signal: np.ndarray  # physical units (mV), float64 [samples]
    beat_samples: np.ndarray  # int64 sample index of each beat annotation
    beat_symbols: np.ndarray  # str symbol of each beat annotation


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


def download_mitdb(directory: Path) -> None:
    """Download the whole database with wfdb into `directory` (via a temp dir, then rename)."""
    log.info("downloading the MIT-BIH Arrhythmia Database from PhysioNet into %s", directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mitdb-", dir=directory.parent))
    try:
        wfdb.dl_database("mitdb", dl_dir=str(tmp))
        if directory.exists():
            for item in tmp.iterdir():
                os.replace(item, directory / item.name)
        else:
            os.replace(tmp, directory)
    except Exception as err:
        raise DataError(
            f"{directory}: the MIT-BIH records are not there and downloading them from "
            f"PhysioNet failed ({err}); download https://physionet.org/content/mitdb/1.0.0/ "
            "by hand and set paths.mitdb_dir (env ECG_MITDB_DIR) to that folder"
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_mitdb(directory: str | os.PathLike, records: list[str], download: bool = True) -> Path:
    """Make sure every record's .hea/.dat/.atr is in `directory`; download if none are.

    A folder that holds some records but not all is an error naming what is missing
    (no silent partial download over the user's files).
    """
    directory = Path(directory)
    unknown = sorted(set(records) - set(MITDB_RECORDS))
    if unknown:
        raise DataError(
            f"unknown MIT-BIH record name(s) {', '.join(unknown)}; the database has "
            f"{len(MITDB_RECORDS)} records: {' '.join(MITDB_RECORDS)}"
        )
    missing = _missing_files(directory, records)
    if missing and len(missing) == len(records) and download:
        download_mitdb(directory)
        missing = _missing_files(directory, records)
    if missing:
        listed = "; ".join(f"record {n}: {', '.join(files)}" for n, files in missing.items())
        raise DataError(
            f"{directory}: MIT-BIH files missing ({listed}); expected .hea, .dat and .atr for "
            "each record (point paths.mitdb_dir / ECG_MITDB_DIR at a complete copy)"
        )
    return directory


def verify_checksums(directory: Path, records: list[str]) -> dict[str, str]:
    """Check the records' files against SHA256SUMS when the folder has one.

    Returns {file name: sha256} for the records' files (computed either way), which the
    preparation manifest records as its input identity.
    """
    expected: dict[str, str] = {}
    sums = directory / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                expected[parts[1].lstrip("*")] = parts[0]
    hashes = {}
    for name in records:
        for path in _record_files(directory, name):
            digest = sha256_file(path)
            if path.name in expected and expected[path.name] != digest:
                raise DataError(
                    f"record {name}: {path} does not match its SHA256SUMS entry (corrupt or "
                    "truncated download?); fetch the record again"
                )
            hashes[path.name] = digest
    return hashes


def _check_dat_size(directory: Path, header: wfdb.Record) -> None:
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
    directory: str | os.PathLike, name: str, lead: str = "MLII", missing_lead: str = "skip",
    require_annotations: bool = True,
) -> Record | None:
    """Read one lead of a record and its beat annotations.

    `missing_lead` says what to do when the record has no lead of that name: "skip"
    (return None and log it), "first" (use the record's first channel) or "error".
    Without a .atr file and `require_annotations=False`, beats come from the XQRS
    detector and their symbols are "?" (unknown class).
    """
    directory = Path(directory)
    base = str(directory / name)
    readable_file(f"{base}.hea", f"the WFDB header of record {name}")
    try:
        header = wfdb.rdheader(base)
    except Exception as err:
        raise DataError(f"record {name}: cannot read {base}.hea ({err or type(err).__name__});"
                        " expected a WFDB header (record line, then one line per signal)"
                        ) from err
    channel_names = list(header.sig_name)
    if lead in channel_names:
        channel = channel_names.index(lead)
    elif missing_lead == "first":
        channel = 0
        log.warning("record %s has no %s lead (%s): using %s", name, lead,
                    ", ".join(channel_names), channel_names[0])
    elif missing_lead == "skip":
        log.warning("record %s has no %s lead (%s): skipped", name, lead, ", ".join(channel_names))
        return None
    else:
        raise DataError(
            f"record {name} has no {lead} lead (it has {', '.join(channel_names)}); set "
            "data.missing_lead to skip or first, or exclude the record"
        )
    _check_dat_size(directory, header)
    annotated = require_annotations or Path(f"{base}.atr").is_file()
    try:
        signal, fields = wfdb.rdsamp(base, channels=[channel])
        annotation = wfdb.rdann(base, "atr") if annotated else None
    except FileNotFoundError as err:
        raise DataError(f"record {name}: {err.filename} is missing") from err
    except Exception as err:
        raise DataError(f"record {name}: cannot read it with wfdb ({err})") from err
    signal = signal[:, 0].astype(np.float64)
    if annotation is None:
        log.info("record %s has no .atr annotations: detecting beats with XQRS", name)
        samples = detect_beats(signal, float(fields["fs"]))
        symbols = np.full(len(samples), "?")
    else:
        symbols = np.asarray(annotation.symbol)
        samples = np.asarray(annotation.sample, dtype=np.int64)
        is_beat = np.isin(symbols, list(AAMI_MAP))
        symbols, samples = symbols[is_beat], samples[is_beat]
    return Record(
        name=name,
        lead=channel_names[channel],
        fs=float(fields["fs"]),
        signal=signal,
        beat_samples=samples,
        beat_symbols=symbols,
    )
