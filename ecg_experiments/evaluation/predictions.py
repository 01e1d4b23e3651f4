"""The per-sample predictions of a scored model and the per-record table made from them.

Every test and evaluation writes `predictions.csv` (one row per scored sample: its record,
identity and where to find it, the reference and predicted class by name, and every class
probability) so any figure of the report can be recomputed outside the framework (McNemar
tests, other intervals, per-patient tables), and `per_record.csv` (per record: samples, and
per class its support, Se and +P).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ecg_experiments.io import atomic_path

# the columns of a sample frame that say where a sample is (kept in predictions.csv)
WHERE = ("record", "sample", "path", "file", "index", "split", "sample_id")


def prediction_frame(samples: pd.DataFrame | None, y_true: np.ndarray, probs: np.ndarray,
                     class_names: Sequence[str]) -> pd.DataFrame:
    """One row per scored sample; `samples` (its sample frame, same order) may be None."""
    names = np.asarray(class_names, dtype=object)
    frame = pd.DataFrame()
    if samples is not None and len(samples) == len(y_true):
        frame = samples[[c for c in WHERE if c in samples]].reset_index(drop=True).copy()
    frame["reference"] = names[np.asarray(y_true)]
    frame["predicted"] = names[probs.argmax(axis=1)]
    for k, name in enumerate(class_names):
        frame[f"prob_{name}"] = probs[:, k]
    return frame


def per_record_table(predictions: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per record: samples, and per class its reference count, Se and +P (NaN where the
    record has no such reference beat or prediction)."""
    rows = []
    for record, group in predictions.groupby("record", sort=True):
        row: dict[str, object] = {"record": record, "samples": len(group),
                                  "correct": float((group["reference"]
                                                    == group["predicted"]).mean())}
        for name in class_names:
            reference, predicted = group["reference"] == name, group["predicted"] == name
            hits = int((reference & predicted).sum())
            row[f"n_{name}"] = int(reference.sum())
            row[f"se_{name}"] = hits / reference.sum() if reference.any() else np.nan
            row[f"ppv_{name}"] = hits / predicted.sum() if predicted.any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def write_predictions(out_dir: Path, predictions: pd.DataFrame,
                      class_names: Sequence[str]) -> dict[str, Path]:
    """predictions.csv, and per_record.csv where records are known; returns the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"predictions": out_dir / "predictions.csv"}
    with atomic_path(files["predictions"]) as tmp:
        predictions.to_csv(tmp, index=False)
    if "record" in predictions:
        files["per_record"] = out_dir / "per_record.csv"
        with atomic_path(files["per_record"]) as tmp:
            per_record_table(predictions, class_names).to_csv(tmp, index=False)
    return files
