"""AAMI EC57 numbers: Q reference beats apart, kappa as scikit-learn computes it, reported."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from ecg_experiments.evaluation.aami import ec57_statistics, ec57_table
from ecg_experiments.evaluation.report import confusion_matrix, write_report

CLASSES = list("NSVFQ")


def test_counts_follow_the_protocol_with_q_reference_beats_left_out() -> None:
    # reference S: 4 beats, 3 called S, 1 called N; two N beats called S; one Q-reference beat
    # called S (does not count against S's +P: Q reference beats are reported apart)
    y_true = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 4, 2, 2])
    y_pred = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 1, 2, 4])
    stats = ec57_statistics(confusion_matrix(y_true, y_pred, 5), CLASSES)
    assert stats["se_S"] == pytest.approx(3 / 4)
    assert stats["ppv_S"] == pytest.approx(3 / 5)  # 3 of the 5 N/S/V/F beats called S
    assert stats["fpr_S"] == pytest.approx(2 / 8)  # 2 of the 8 non-S N/S/V/F beats
    assert stats["se_V"] == pytest.approx(1 / 2)  # a V called Q is a missed V
    assert stats["acc"] == pytest.approx(8 / 12)
    counted = y_true != 4
    assert stats["kappa"] == pytest.approx(
        cohen_kappa_score(y_true[counted], y_pred[counted], labels=range(5)))
    assert stats["se_Q"] == pytest.approx(0.0) and stats["support_Q"] == 1
    assert stats["j"] == pytest.approx(3 / 4 + 3 / 5 + 1 / 2 + 1.0)


def test_the_report_writes_prints_and_bootstraps_the_ec57_table(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    y = rng.choice(5, size=4000, p=[0.8, 0.05, 0.1, 0.02, 0.03])
    pred = np.where(rng.random(4000) < 0.8, y, rng.integers(0, 5, 4000))
    probs = np.eye(5)[pred] + 0.01
    report = write_report(tmp_path, {"test/acc": float((pred == y).mean())}, y, probs,
                          CLASSES, bootstrap_rounds=300, seed=1)
    table = pd.read_csv(tmp_path / "aami.csv")
    s = table[table["class"] == "S"].iloc[0]
    assert s["se_ci_low"] < s["se"] < s["se_ci_high"] and s["ppv_ci_low"] < s["ppv"]
    expected = ec57_table(confusion_matrix(y, pred, 5), CLASSES)
    np.testing.assert_allclose(table["se"][:5], expected["se"][:5])
    per_class = pd.read_csv(tmp_path / "per_class.csv").set_index("class")
    assert per_class.loc["S", "aami_se"] == pytest.approx(s["se"])
    assert report.ci_metrics["test/aami/se_S"] == pytest.approx(s["se"])
    assert "test/aami/kappa_ci_low" in report.ci_metrics
    assert list(table["class"]) == ["N", "S", "V", "F", "Q (apart)", "overall"]


def test_no_ec57_table_for_classes_that_are_not_aami(tmp_path: Path) -> None:
    y = np.array([0, 1, 0, 1])
    report = write_report(tmp_path, {}, y, np.eye(2)[y], ["normal", "abnormal"],
                          bootstrap_rounds=0)
    assert report.aami is None and not (tmp_path / "aami.csv").exists()
