"""Reading raw MIT-BIH records and the errors for bad record folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ecg_experiments.data.beat_table import prepare_mitbih
from ecg_experiments.data.physionet import (
    AAMI_CLASSES,
    DS1,
    DS2,
    MITDB_RECORDS,
    PACED,
    aami_label,
    read_record,
)
from ecg_experiments.data.segment import KachueeRecipe
from ecg_experiments.errors import DataError


def test_aami_mapping() -> None:
    symbols = np.array(list("NLRejAaJSVEF/fQ") + ["+", "~", "|", "x"])
    expected = [0] * 5 + [1] * 4 + [2] * 2 + [3] + [4] * 3 + [-1] * 4
    assert aami_label(symbols).tolist() == expected
    assert AAMI_CLASSES == ("N", "S", "V", "F", "Q")


def test_record_lists() -> None:
    assert len(MITDB_RECORDS) == 48 and len(DS1) == 22 and len(DS2) == 22
    assert not set(DS1) & set(DS2)
    assert set(DS1) | set(DS2) | set(PACED) == set(MITDB_RECORDS)


def test_lead_is_chosen_by_name(mitdb_dir: Path) -> None:
    record = read_record(mitdb_dir, "114")  # MLII is the second channel here
    assert record is not None and record.lead == "MLII" and record.fs == 360
    assert len(record.signal) == 650_000
    assert read_record(mitdb_dir, "102") is None  # no MLII: skipped by default
    assert read_record(mitdb_dir, "102", missing_lead="first").lead == "V5"
    with pytest.raises(DataError, match="record 102 has no MLII lead"):
        read_record(mitdb_dir, "102", missing_lead="error")


def test_beat_annotations_only(mitdb_dir: Path) -> None:
    record = read_record(mitdb_dir, "100")
    assert len(record.beat_samples) == 2273  # 2274 annotations less one rhythm '+'
    assert set(record.beat_symbols) == {"N", "A", "V"}


def _copy_records(mitdb_dir: Path, target: Path, names: list[str]) -> Path:
    target.mkdir()
    for name in names:
        for ext in ("hea", "dat", "atr"):
            shutil.copy(mitdb_dir / f"{name}.{ext}", target / f"{name}.{ext}")
    return target


def _prepare(source: Path, out: Path, records: list[str]) -> Path:
    return prepare_mitbih(source, out, KachueeRecipe(), records=records, download=False,
                          progress=False)


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() or list(out.iterdir()) == []


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "mitdb").mkdir()
    with pytest.raises(DataError, match=r"record 100: 100\.hea, 100\.dat, 100\.atr"):
        _prepare(tmp_path / "mitdb", tmp_path / "out", ["100", "101"])
    _assert_nothing_written(tmp_path / "out")


def test_partial_folder_names_the_missing_record(mitdb_dir: Path, tmp_path: Path) -> None:
    source = _copy_records(mitdb_dir, tmp_path / "mitdb", ["100"])
    with pytest.raises(DataError, match=r"record 101: 101\.hea, 101\.dat, 101\.atr") as info:
        _prepare(source, tmp_path / "out", ["100", "101"])
    assert "record 100" not in str(info.value)
    _assert_nothing_written(tmp_path / "out")


def test_missing_atr(mitdb_dir: Path, tmp_path: Path) -> None:
    source = _copy_records(mitdb_dir, tmp_path / "mitdb", ["100", "101"])
    (source / "101.atr").unlink()
    with pytest.raises(DataError, match=r"record 101: 101\.atr"):
        _prepare(source, tmp_path / "out", ["100", "101"])
    _assert_nothing_written(tmp_path / "out")


def test_truncated_dat(mitdb_dir: Path, tmp_path: Path) -> None:
    source = _copy_records(mitdb_dir, tmp_path / "mitdb", ["100", "101"])
    with open(source / "101.dat", "r+b") as handle:
        handle.truncate(1_000_000)
    with pytest.raises(DataError, match=r"record 101: .*101\.dat has 1,000,000 bytes.*truncated"):
        _prepare(source, tmp_path / "out", ["100", "101"])
    _assert_nothing_written(tmp_path / "out")


def test_checksum_mismatch(mitdb_dir: Path, tmp_path: Path) -> None:
    source = _copy_records(mitdb_dir, tmp_path / "mitdb", ["100"])
    shutil.copy(mitdb_dir / "SHA256SUMS", source / "SHA256SUMS")
    data = bytearray((source / "100.dat").read_bytes())
    data[5000] ^= 0xFF
    (source / "100.dat").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"record 100: .*100\.dat does not match its SHA256SUMS"):
        _prepare(source, tmp_path / "out", ["100"])
    _assert_nothing_written(tmp_path / "out")


def test_unknown_record_name(mitdb_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError,
                       match=r"unknown MIT-BIH Arrhythmia Database record name\(s\) 999"):
        _prepare(mitdb_dir, tmp_path / "out", ["100", "999"])
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.slow  # a CLI process; the bad-input suite covers the same cases
def test_prepare_cli_reports_a_bad_record_folder(mitdb_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from ecg_experiments.config import PROJECT_ROOT

    source = _copy_records(mitdb_dir, tmp_path / "mitdb", ["100", "101"])
    (source / "100.atr").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "ecg_experiments.prepare", f"paths.mitdb_dir={source}",
         f"paths.outputs_dir={tmp_path / 'outputs'}", "data.records=[100,101]",
         "data.download=false"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: " in result.stderr and "record 100: 100.atr" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "outputs" / "data").glob("*")) if (
        tmp_path / "outputs" / "data").exists() else True
