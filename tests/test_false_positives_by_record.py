"""scripts/false_positives_by_record.py: per-record false positives of a class over seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from ecg_experiments.config import PROJECT_ROOT


def _seed(folder: Path, seed: int, rows: list[tuple[str, str, str]]) -> None:
    report = folder / f"seed{seed}" / "report"
    report.mkdir(parents=True)
    pd.DataFrame(rows, columns=["record", "reference", "predicted"]).to_csv(
        report / "predictions.csv", index=False)


def test_counts_beats_called_s_whose_reference_is_another_scored_class(tmp_path: Path) -> None:
    """Record 222: 3 then 1 N beats called S (mean 2), record 232: a true S and a Q reference
    called S (neither counts: EC57 leaves Q reference beats out); a second folder side by
    side with its own counts."""
    first, second = tmp_path / "J", tmp_path / "K"
    _seed(first, 42, [("222", "N", "S")] * 3 + [("232", "S", "S"), ("232", "Q", "S"),
                                                ("232", "N", "N")])
    _seed(first, 1, [("222", "N", "S"), ("222", "V", "V"), ("232", "S", "S")])
    _seed(second, 42, [("222", "N", "N"), ("232", "V", "S")])
    out = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "false_positives_by_record.py"),
         str(first), str(second)], capture_output=True, text=True, check=True,
        env={"COLUMNS": "200", "PATH": ""}).stdout
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in out.splitlines() if line.startswith("│")}
    assert rows["222"] == ["2.0 [1, 3]", "0.0 [0, 0]"]
    assert rows["232"] == ["0.0 [0, 0]", "1.0 [1, 1]"]
    assert rows["all records"] == ["2.0 [1, 3]", "1.0 [1, 1]"]
    missing = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "false_positives_by_record.py"),
         str(tmp_path / "none")], capture_output=True, text=True)
    assert missing.returncode != 0 and "no seed*/report/predictions.csv" in missing.stderr
    _seed(tmp_path / "uneven", 42, [("100", "N", "S")])
    _seed(tmp_path / "uneven", 1, [("101", "N", "S")])
    uneven = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "false_positives_by_record.py"),
         str(tmp_path / "uneven")], capture_output=True, text=True)
    assert uneven.returncode != 0 and "the seeds score different records" in uneven.stderr
