"""Seeded, stratified splits."""

from __future__ import annotations

import numpy as np
import pytest

from ecg_experiments.data.splits import grouped_split, split_table, stratified_split
from ecg_experiments.errors import DataError


def _labels() -> np.ndarray:
    # imbalanced like MIT-BIH: 600 N, 100 S, 200 V, 40 F, 60 Q
    return np.repeat(np.arange(5), [600, 100, 200, 40, 60])


def test_fractions_stratification_and_disjointness() -> None:
    labels = _labels()
    parts = stratified_split(labels, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    sizes = {k: len(v) for k, v in parts.items()}
    assert sizes == {"train": 700, "val": 150, "test": 150}
    joined = np.concatenate(list(parts.values()))
    assert len(np.unique(joined)) == len(labels)  # disjoint and complete
    overall = np.bincount(labels) / len(labels)
    for index in parts.values():
        share = np.bincount(labels[index], minlength=5) / len(index)
        np.testing.assert_allclose(share, overall, atol=0.01)


def test_same_seed_same_split_other_seed_other_split() -> None:
    labels = _labels()
    fractions = {"train": 0.8, "val": 0.2}
    first = stratified_split(labels, fractions, seed=3)
    again = stratified_split(labels, fractions, seed=3)
    other = stratified_split(labels, fractions, seed=4)
    np.testing.assert_array_equal(first["val"], again["val"])
    assert not np.array_equal(first["val"], other["val"])


def test_too_few_samples_of_a_class() -> None:
    labels = np.array([0, 0, 0, 0, 1])
    with pytest.raises(DataError, match="class S has only 1 sample"):
        stratified_split(labels, {"train": 0.5, "val": 0.5}, 0, ["N", "S"], "tiny.csv")


def test_fractions_must_sum_to_one() -> None:
    with pytest.raises(DataError, match="sum to 1"):
        stratified_split(_labels(), {"train": 0.7, "val": 0.2, "test": 0.2}, 0)


def test_split_table_lists_every_row_once() -> None:
    labels = _labels()
    parts = stratified_split(labels, {"train": 0.8, "val": 0.2}, seed=0)
    table = split_table(parts, label=labels)
    assert table["index"].tolist() == list(range(len(labels)))
    assert (table["label"].to_numpy() == labels).all()
    assert table["split"].value_counts().to_dict() == {"train": 800, "val": 200}


def test_bad_fractions_are_reported_before_data_problems() -> None:
    labels = np.array([0, 0, 0, 1])  # class 1 alone could not be stratified either
    with pytest.raises(DataError, match="must be >= 0 and sum to 1"):
        stratified_split(labels, {"train": 0.5, "val": 0.6}, 0)
    with pytest.raises(DataError, match="must be >= 0 and sum to 1"):
        grouped_split(np.array(["a", "b"]), {"train": 0.9, "test": 0.2}, 0)
