"""Seeded train/val/test splits: stratified by class, or grouped by record (patient)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from ecg_experiments.errors import DataError

SPLITS = ("train", "val", "test")


def _check_stratifiable(labels: np.ndarray, class_names: Sequence[str], source: str) -> None:
    values, counts = np.unique(labels, return_counts=True)
    for value, count in zip(values, counts, strict=True):
        if count < 2:
            name = class_names[int(value)] if int(value) < len(class_names) else str(value)
            raise DataError(
                f"{source}: class {name} has only {count} sample; a stratified split needs "
                "at least 2 samples of every class present (add data or drop the class)"
            )


def stratified_split(
    labels: np.ndarray,
    fractions: dict[str, float],
    seed: int,
    class_names: Sequence[str] = (),
    source: str = "data",
) -> dict[str, np.ndarray]:
    """Split row indices into named parts with the given fractions, stratified by label.

    `fractions` maps part name to its share of all rows and must sum to 1, e.g.
    {"train": 0.7, "val": 0.15, "test": 0.15}. Parts are carved in reverse order so the
    first part gets the remainder. Returns sorted index arrays.
    """
    total = sum(fractions.values())
    if not np.isclose(total, 1.0) or any(f < 0 for f in fractions.values()):
        raise DataError(f"{source}: split fractions {fractions} must be >= 0 and sum to 1")
    _check_stratifiable(labels, class_names, source)
    names = list(fractions)
    remaining = np.arange(len(labels))
    remaining_share = 1.0
    parts: dict[str, np.ndarray] = {}
    for name in reversed(names[1:]):
        share = fractions[name] / remaining_share
        if share <= 0:
            parts[name] = np.array([], dtype=np.int64)
            continue
        try:
            remaining, taken = train_test_split(
                remaining, test_size=share, random_state=seed, stratify=labels[remaining]
            )
        except ValueError as err:
            raise DataError(
                f"{source}: cannot carve a stratified {name!r} split of {share:.0%} from "
                f"{len(remaining)} rows: {err}"
            ) from err
        parts[name] = np.sort(taken)
        remaining_share -= fractions[name]
    parts[names[0]] = np.sort(remaining)
    return {name: parts[name] for name in names}


def split_table(parts: dict[str, np.ndarray], **columns: np.ndarray) -> pd.DataFrame:
    """One row per sample: its index in the source, its split and any extra columns."""
    frames = []
    for name, index in parts.items():
        frame = pd.DataFrame({"index": index, "split": name})
        for column, values in columns.items():
            frame[column] = np.asarray(values)[index]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).sort_values("index", ignore_index=True)


def grouped_split(
    groups: np.ndarray, fractions: dict[str, float], seed: int, source: str = "data"
) -> dict[str, np.ndarray]:
    """Split row indices so that no group (record, patient) is in two parts.

    `fractions` are shares of the groups; parts are carved in reverse order with
    scikit-learn's GroupShuffleSplit (seeded), the first part keeping the remainder.
    """
    total = sum(fractions.values())
    if not np.isclose(total, 1.0) or any(f < 0 for f in fractions.values()):
        raise DataError(f"{source}: split fractions {fractions} must be >= 0 and sum to 1")
    wanted = [name for name, share in fractions.items() if share > 0]
    if len(np.unique(groups)) < len(wanted):
        raise DataError(
            f"{source}: {len(np.unique(groups))} record(s) cannot fill {len(wanted)} "
            f"record-disjoint splits ({', '.join(wanted)})"
        )
    names = list(fractions)
    remaining = np.arange(len(groups))
    remaining_share = 1.0
    parts: dict[str, np.ndarray] = {}
    for name in reversed(names[1:]):
        share = fractions[name] / remaining_share
        if share <= 0:
            parts[name] = np.array([], dtype=np.int64)
            continue
        splitter = GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed)
        try:
            keep, taken = next(splitter.split(remaining, groups=groups[remaining]))
        except ValueError as err:
            raise DataError(
                f"{source}: cannot carve a record-disjoint {name!r} split: {err}"
            ) from err
        parts[name] = np.sort(remaining[taken])
        remaining = remaining[keep]
        remaining_share -= fractions[name]
    if len(remaining) == 0:
        raise DataError(f"{source}: no record left for {names[0]!r} with fractions {fractions}")
    parts[names[0]] = np.sort(remaining)
    return {name: parts[name] for name in names}
