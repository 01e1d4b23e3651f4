"""Seeded train/val/test splits: stratified by class, or grouped by record (patient)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, train_test_split

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


def _check_fractions(fractions: dict[str, float], source: str) -> None:
    if not np.isclose(sum(fractions.values()), 1.0) or any(f < 0 for f in fractions.values()):
        raise DataError(f"{source}: split fractions {fractions} must be >= 0 and sum to 1")


def _carve(
    n_rows: int,
    fractions: dict[str, float],
    source: str,
    split_off: Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Carve parts off the rows in reverse order; the first part keeps the remainder.

    `split_off(rows, fraction)` returns (kept rows, taken rows), taking `fraction` of all
    units (rows or groups) out of `rows`.
    """
    names = list(fractions)
    remaining = np.arange(n_rows)
    parts: dict[str, np.ndarray] = {}
    for name in reversed(names[1:]):
        if fractions[name] <= 0:
            parts[name] = np.array([], dtype=np.int64)
            continue
        try:
            remaining, taken = split_off(remaining, fractions[name])
        except ValueError as err:
            raise DataError(
                f"{source}: cannot carve a {name!r} split of {fractions[name]:.0%} from "
                f"{len(remaining)} rows: {err}"
            ) from err
        parts[name] = np.sort(taken)
    if len(remaining) == 0:
        raise DataError(f"{source}: nothing left for {names[0]!r} with fractions {fractions}")
    parts[names[0]] = np.sort(remaining)
    return {name: parts[name] for name in names}


def _units(fraction: float, total: int) -> int:
    """Whole units for a fraction of `total`, rounded (30 of 200 for 0.15), at least 1."""
    return max(1, int(round(fraction * total)))


def stratified_split(
    labels: np.ndarray,
    fractions: dict[str, float],
    seed: int,
    class_names: Sequence[str] = (),
    source: str = "data",
) -> dict[str, np.ndarray]:
    """Split row indices into named parts with the given fractions, stratified by label.

    `fractions` maps part name to its share of all rows and must sum to 1, e.g.
    {"train": 0.7, "val": 0.15, "test": 0.15}. Returns sorted index arrays.
    """
    _check_fractions(fractions, source)  # the options first, then the data
    _check_stratifiable(labels, class_names, source)

    def split_off(rows: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        # a class left with a single row here (e.g. 2 F beats, one already carved off for
        # test) cannot be stratified: that row stays with the first part
        values, counts = np.unique(labels[rows], return_counts=True)
        single = np.isin(labels[rows], values[counts < 2])
        kept, taken = train_test_split(rows[~single], test_size=_units(fraction, len(labels)),
                                       random_state=seed, stratify=labels[rows[~single]])
        return np.concatenate([kept, rows[single]]), taken

    return _carve(len(labels), fractions, source, split_off)


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

    `fractions` are shares of the groups, carved with scikit-learn's GroupShuffleSplit
    (seeded).
    """
    _check_fractions(fractions, source)
    wanted = [name for name, share in fractions.items() if share > 0]
    if len(np.unique(groups)) < len(wanted):
        raise DataError(
            f"{source}: {len(np.unique(groups))} record(s) cannot fill {len(wanted)} "
            f"record-disjoint splits ({', '.join(wanted)})"
        )

    n_groups = len(np.unique(groups))

    def split_off(rows: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        splitter = GroupShuffleSplit(n_splits=1, test_size=_units(fraction, n_groups),
                                     random_state=seed)
        keep, taken = next(splitter.split(rows, groups=groups[rows]))
        return rows[keep], rows[taken]

    return _carve(len(groups), fractions, source, split_off)


def cv_fold(groups: np.ndarray, labels: np.ndarray, folds: int, seed: int,
            source: str = "data") -> np.ndarray:
    """The fold (0..folds-1) of every row: scikit-learn's StratifiedGroupKFold (shuffled,
    seeded), so no group (record, patient) is in two folds and each class reaches as many
    folds as its groups allow."""
    n_groups = len(np.unique(groups))
    if int(folds) < 2 or n_groups < int(folds):
        raise DataError(f"{source}: {n_groups} record(s) cannot make cv.folds={folds} "
                        "record-disjoint folds (expected 2 <= folds <= records)")
    fold = np.full(len(groups), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=int(folds), shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(groups)), labels, groups)):
        fold[held] = k
    return fold


BALANCE_MODES = ("none", "undersample", "resample", "class_weights", "sampler")


def balance_indices(labels: np.ndarray, mode: str, per_class: int | None = None,
                    seed: int = 0) -> np.ndarray:
    """Row indices of a rebalanced training split (sorted).

    undersample: every class down to the smallest class present; resample: every class to
    `per_class` rows (drawn without replacement where a class has enough, with replacement
    where it has fewer), both with scikit-learn's `resample`, seeded. Other modes keep all
    rows (class_weights and sampler act in the loss and the loader).
    """
    from sklearn.utils import resample

    if mode not in BALANCE_MODES:
        raise DataError(f"data.balance={mode!r}: expected one of {', '.join(BALANCE_MODES)}")
    if mode not in ("undersample", "resample"):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    if mode == "resample":
        if per_class is None or int(per_class) < 1:
            raise DataError(f"data.balance=resample needs data.balance_to >= 1 (got {per_class})")
        target = int(per_class)
    else:
        target = int(counts.min())
    parts = []
    for k, label in enumerate(classes):
        rows = np.flatnonzero(labels == label)
        parts.append(resample(rows, replace=counts[k] < target, n_samples=target,
                              random_state=seed + k))
    return np.sort(np.concatenate(parts))
