"""Intervals over patients: the bootstrap resamples records where samples carry one, and the
report keeps every prediction (predictions.csv, per_record.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecg_experiments.evaluation.predictions import per_record_table, prediction_frame
from ecg_experiments.evaluation.report import bootstrap_ci, bootstrap_confusions, write_report

CLASSES = ["N", "S"]


def _records_with_one_holding_all_s(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """20 records of 200 N beats each; record r00 also holds every S beat (300), and the
    model finds S well in it; the S beats of the other 4 records that have a few are missed.
    The between-record spread of S sensitivity is large; the beat count is large too."""
    y, pred, groups = [], [], []
    for r in range(20):
        n = 200
        y += [0] * n
        pred += list((rng.random(n) < 0.02).astype(int))  # a few false S
        groups += [f"r{r:02d}"] * n
    y += [1] * 300  # record r00's S beats: 90% found
    pred += list((rng.random(300) < 0.9).astype(int))
    groups += ["r00"] * 300
    for r in range(1, 5):  # four records with 10 S beats each, all missed
        y += [1] * 10
        pred += [0] * 10
        groups += [f"r{r:02d}"] * 10
    return np.array(y), np.array(pred), np.array(groups)


def test_record_interval_covers_the_between_record_spread_and_the_beat_interval_not() -> None:
    y, pred, groups = _records_with_one_holding_all_s(np.random.default_rng(0))
    beat = bootstrap_ci(y, pred, CLASSES, rounds=2000, seed=1)["recall_S"]
    by_record = bootstrap_ci(y, pred, CLASSES, rounds=2000, seed=1,
                             matrices=bootstrap_confusions(y, pred, 2, 2000, 1,
                                                           groups=groups))["recall_S"]
    per_record = per_record_table(prediction_frame(pd.DataFrame({"record": groups}), y,
                                                   np.eye(2)[pred], CLASSES), CLASSES)
    se = per_record["se_S"].dropna()
    # S sensitivity without r00 is 0, with it ~0.79: a resample of patients ranges over both
    assert se.min() == 0.0 and se.max() > 0.85
    assert by_record[0] < 0.5 < 0.75 < beat[0]  # the record interval reaches far down
    assert by_record[1] - by_record[0] > 5 * (beat[1] - beat[0])
    point = (pred[y == 1] == 1).mean()
    assert beat[0] < point < beat[1] and by_record[0] < point <= by_record[1]


def test_cluster_bootstrap_draws_whole_records_and_counts_every_round_right() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 1, 1, 1, 0, 0])
    groups = np.array(["a", "a", "b", "b", "b", "c"])
    matrices = bootstrap_confusions(y, pred, 2, rounds=300, seed=0, groups=groups)
    per = {"a": np.array([[1, 1], [0, 0]]), "b": np.array([[0, 0], [1, 2]]),
           "c": np.array([[1, 0], [0, 0]])}
    # every round is a sum of 3 whole-record matrices (drawn with replacement)
    combos = {tuple((per[i] + per[j] + per[k]).ravel()) for i in per for j in per for k in per}
    assert all(tuple(m.astype(int).ravel()) in combos for m in matrices)
    assert len({tuple(m.ravel()) for m in matrices}) > 5
    # accuracy per round is over that round's own sample count
    ci = bootstrap_ci(y, pred, CLASSES, matrices=matrices)
    assert 0 <= ci["acc"][0] <= ci["acc"][1] <= 1


def test_the_report_says_what_it_resampled_and_keeps_every_prediction(tmp_path: Path) -> None:
    y, pred, groups = _records_with_one_holding_all_s(np.random.default_rng(2))
    probs = np.eye(2)[pred] * 0.8 + 0.1
    metrics = {"test/acc": float((y == pred).mean())}
    report = write_report(tmp_path, metrics, y, probs, CLASSES, bootstrap_rounds=200, seed=0,
                          groups=groups)
    assert report.ci_over == "20 records"
    saved = pd.read_csv(report.files["confidence_intervals"])
    assert set(saved["resampled"]) == {"20 records"}
    beats = write_report(tmp_path / "b", metrics, y, probs, CLASSES, bootstrap_rounds=200)
    assert beats.ci_over.startswith(f"{len(y):,} samples (no record ids")

    frame = prediction_frame(pd.DataFrame({"record": groups, "sample": np.arange(len(y))}),
                             y, probs, CLASSES)
    assert list(frame.columns) == ["record", "sample", "reference", "predicted", "prob_N",
                                   "prob_S"]
    assert (frame["predicted"] == np.array(CLASSES)[pred]).all()
    table = per_record_table(frame, CLASSES)
    r00 = table.set_index("record").loc["r00"]
    assert r00["samples"] == 500 and r00["n_S"] == 300
    assert r00["se_S"] == pytest.approx((pred[(groups == "r00") & (y == 1)] == 1).mean())
