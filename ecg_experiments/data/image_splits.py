"""Splits of an image folder: given train/val/test folders (exact copies left out of later
splits), or drawn stratified by class or grouped by record, with duplicate images (same
SHA-256) always kept in one split."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ecg_experiments.data.splits import grouped_split, stratified_split
from ecg_experiments.errors import DataError

log = logging.getLogger(__name__)

GIVEN = ("train", "val", "test")


def duplicate_groups(*keys: np.ndarray) -> np.ndarray:
    """Group id per row: rows sharing a value in any key column are in one group."""
    n = len(keys[0])
    rows, cols = [], []
    for key in keys:
        _, first = np.unique(key, return_inverse=True)
        anchor = np.zeros(first.max() + 1 if n else 0, dtype=np.int64)
        anchor[first[::-1]] = np.arange(n)[::-1]  # the first row holding each value
        rows.append(np.arange(n))
        cols.append(anchor[first])
    graph = coo_matrix((np.ones(n * len(keys)), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(n, n))
    return connected_components(graph, directed=False)[1]


def record_ids(paths: pd.Series, regex: re.Pattern) -> np.ndarray:
    """The record id in each file name: the regex's first group, else its whole match."""
    names = [Path(p).name for p in paths]
    found = [regex.search(name) for name in names]
    bad = [name for name, match in zip(names, found, strict=True) if match is None]
    if bad:
        raise DataError(f"{paths.iloc[names.index(bad[0])]}: data.group_regex="
                        f"{regex.pattern!r} finds no record id in the file name")
    return np.array([m.group(1) if m.groups() else m.group(0) for m in found])


def assign_image_splits(frame: pd.DataFrame, fractions: dict[str, float], seed: int,
                        class_names: Sequence[str], source: str,
                        records: np.ndarray | None = None
                        ) -> tuple[dict[str, np.ndarray], int]:
    """Row indices per split and the count of exact copies left out of a later given split.
    Given folders (`frame.given`) are kept, validation carved from train/ when there is no
    val/; else `records` (one per row) group the draw, or it is stratified by class."""
    if frame["given"].notna().all():
        parts = {p: np.flatnonzero(frame["given"].to_numpy() == p) for p in GIVEN}
        if len(parts["val"]) == 0:  # no val/ folder: carve validation from train/
            train = parts["train"]
            val_fraction = fractions["val"]
            inner = grouped_stratified(frame.iloc[train], {"train": 1 - val_fraction,
                                                           "val": val_fraction},
                                       seed, class_names, f"{source}/train")
            parts["train"], parts["val"] = train[inner["train"]], train[inner["val"]]
        return drop_cross_split_duplicates(frame, parts, source)
    if records is not None:
        groups = duplicate_groups(frame["sha256"].to_numpy(), records)
        return grouped_split(groups, fractions, seed, f"{source} records"), 0
    return grouped_stratified(frame, fractions, seed, class_names, source), 0


def drop_cross_split_duplicates(frame: pd.DataFrame, parts: dict[str, np.ndarray],
                                source: str) -> tuple[dict[str, np.ndarray], int]:
    """Given splits: an image whose exact copy (same SHA-256) is in an earlier split
    (train, then val, then test) is left out of the later one, so no image is both
    trained and tested on; returns the parts and how many were left out (logged)."""
    digests = frame["sha256"].to_numpy()
    seen: set[str] = set()
    kept = {}
    for name in GIVEN:
        rows = parts[name]
        keep = np.array([digests[r] not in seen for r in rows], dtype=bool)
        seen.update(digests[rows].tolist())
        kept[name] = rows[keep]
        if (~keep).any():
            log.warning("%s/%s: %d image(s) are exact copies of images in an earlier split "
                        "and are left out of %s (e.g. %s)", source, name,
                        int((~keep).sum()), name, frame["path"].iloc[rows[~keep][0]])
    return kept, sum(len(parts[n]) - len(kept[n]) for n in GIVEN)


def grouped_stratified(frame: pd.DataFrame, fractions: dict[str, float], seed: int,
                       class_names: Sequence[str], source: str) -> dict[str, np.ndarray]:
    """Stratified split of duplicate groups (one representative each), then expanded."""
    groups = duplicate_groups(frame["sha256"].to_numpy())
    _, first = np.unique(groups, return_index=True)
    labels = frame["label"].to_numpy()
    chosen = stratified_split(labels[first], fractions, seed, class_names, source)
    group_part = {}
    for part, rows in chosen.items():
        group_part.update(dict.fromkeys(groups[first[rows]].tolist(), part))
    part_of = np.array([group_part[g] for g in groups.tolist()])
    return {part: np.flatnonzero(part_of == part) for part in fractions}
