"""Honest numbers: a cross-validation selects on the fold mean at the one epoch count a final
fit trains for (`cv/epochs`), and a macro average is over the classes present in the targets,
the same live (torchmetrics) and in the bootstrap (`report.macro_average`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from torchmetrics.classification import MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from ecg_experiments.evaluation.metrics import classification_metrics, present_class_mean
from ecg_experiments.evaluation.report import bootstrap_ci, confusion_matrix, macro_average
from ecg_experiments.runs.crossval import cross_validate, summarise_folds
from ecg_experiments.runs.fits import Fitted
from tests.conftest import all_runs, compose_config

# ---- 1. the CV value that selects is the fold mean at cv/epochs ----

# per fold, val/f1_macro and val/acc after epochs 1, 2, 3: each fold's best F1 is at another
# epoch (0.9, 0.8, 0.7: mean 0.8), while the fold means per epoch are 0.533, 0.567, 0.633
F1 = [[0.9, 0.5, 0.6], [0.3, 0.5, 0.8], [0.4, 0.7, 0.5]]
ACC = [[0.80, 0.95, 0.90], [0.70, 0.75, 0.85], [0.90, 0.80, 0.70]]


def _fits() -> list[Fitted]:
    fits = []
    for f1, acc in zip(F1, ACC, strict=True):
        history = [{"epoch": e, "val/f1_macro": f, "val/acc": a, "val/loss": 1 - f}
                   for e, (f, a) in enumerate(zip(f1, acc, strict=True))]
        # what fit_one returns: the best value over the epochs of each selection metric
        fits.append(Fitted({"val/f1_macro": max(f1), "val/acc": max(acc)}, history, None))
    return fits


def _expected(values: list[list[float]]) -> tuple[int, float, float]:
    """cv/epochs from the fold-mean F1 curve, the fold mean of `values` there, and the
    mean of their fold bests."""
    epochs = int(np.argmax(np.mean(F1, axis=0))) + 1
    return epochs, float(np.mean(values, axis=0)[epochs - 1]), float(np.mean(np.max(values, 1)))


def test_the_selection_is_the_fold_mean_at_cv_epochs_not_the_mean_of_fold_bests() -> None:
    result = summarise_folds(_fits(), "val/f1_macro", "max", "val/acc")
    epochs, f1_there, f1_bests = _expected(F1)
    _, acc_there, acc_bests = _expected(ACC)
    assert epochs == 3 and result.metrics["cv/epochs"] == epochs
    assert result.selection == pytest.approx({"val/f1_macro": f1_there, "val/acc": acc_there})
    assert f1_there == pytest.approx(0.6333, abs=1e-4) and f1_bests == pytest.approx(0.8)
    assert abs(f1_there - f1_bests) > 0.1 and abs(acc_there - acc_bests) > 0.01
    # both stay logged: the optimistic mean of fold bests under its own name
    assert result.metrics["cv/best/val/f1_macro_mean"] == pytest.approx(f1_bests)
    assert result.metrics["cv/best/val/acc_mean"] == pytest.approx(acc_bests)
    assert result.metrics["cv/at_epochs/val/f1_macro_mean"] == pytest.approx(f1_there)
    assert result.metrics["cv/at_epochs/val/f1_macro_std"] == pytest.approx(
        np.std(np.array(F1)[:, epochs - 1], ddof=1))
    assert list(result.per_fold["epoch"]) == [0, 2, 1]  # each fold's own best epoch
    # a minimised monitor picks its epoch count the same way
    by_loss = summarise_folds(_fits(), "val/loss", "min", "val/loss")
    assert by_loss.metrics["cv/epochs"] == 3
    assert by_loss.selection == pytest.approx({"val/loss": 1 - f1_there})


def test_the_cv_parent_returns_and_logs_the_fold_mean_at_cv_epochs(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Through `cross_validate` (folds fitted by a stand-in): the returned dict and the
    parent run's best/<metric> are the fold means at cv/epochs from the fold histories."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = compose_config(tmp_path, ["data=mitbih", "data.dir=unused", "cv.folds=3",
                                    "optimized_metric=val/acc"])
    fits = iter(_fits())
    result = cross_validate(cfg, lambda one, tags: next(fits))
    epochs, f1_there, f1_bests = _expected(F1)
    _, acc_there, _ = _expected(ACC)
    assert result["cv/epochs"] == epochs
    assert result["val/f1_macro"] == pytest.approx(f1_there)
    assert result["val/acc"] == pytest.approx(acc_there)
    [parent] = all_runs(tmp_path)
    assert parent.data.tags["cv.folds"] == "3" and parent.info.status == "FINISHED"
    assert parent.data.metrics["best/val/f1_macro"] == pytest.approx(f1_there)
    assert parent.data.metrics["best/val/acc"] == pytest.approx(acc_there)
    assert parent.data.metrics["cv/best/val/f1_macro_mean"] == pytest.approx(f1_bests)


# ---- 2. macro averages over the classes present in the targets ----

NAMES = ["N", "S", "V"]


def _absent_class_predicted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets of N and S only; V (absent) is predicted for some N and S samples."""
    y = np.array([0] * 50 + [1] * 30)
    pred = y.copy()
    pred[:6], pred[6:10], pred[50:55], pred[55:58] = 2, 1, 2, 0
    probs = np.full((len(y), 3), 0.1)
    probs[np.arange(len(y)), pred] = 0.8
    probs[np.arange(len(y)), y] += 0.05  # not a tie-free AUROC of 1: the truth a bit higher
    return y, pred, probs / probs.sum(1, keepdims=True)


def _live(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    metrics = classification_metrics(NAMES, "val")
    for part in np.array_split(np.arange(len(y)), 3):  # several batches, compute groups
        metrics.update(torch.as_tensor(probs[part]), torch.as_tensor(y[part]))
    return {k: float(v) for k, v in metrics.compute().items()}


def test_a_predicted_absent_class_leaves_the_macro_average_over_the_present_classes() -> None:
    y, pred, probs = _absent_class_predicted()
    live = _live(y, probs)
    present = [0, 1]
    f1 = f1_score(y, pred, labels=present, average=None)
    assert live["val/f1_macro"] == pytest.approx(f1.mean(), abs=1e-6)
    assert live["val/f1_macro"] == pytest.approx(
        f1_score(y, pred, labels=present, average="macro"), abs=1e-6)
    assert live["val/precision_macro"] == pytest.approx(
        precision_score(y, pred, labels=present, average="macro"), abs=1e-6)
    assert live["val/recall_macro"] == pytest.approx(
        recall_score(y, pred, labels=present, average="macro"), abs=1e-6)
    assert live["val/auroc_macro"] == pytest.approx(
        np.mean([roc_auc_score(y == k, probs[:, k]) for k in present]), abs=1e-4)
    # torchmetrics' and scikit-learn's own macro average would count V as 0 (a third lower)
    plain = float(MulticlassF1Score(3, average="macro")(torch.as_tensor(pred),
                                                       torch.as_tensor(y)))
    assert plain == pytest.approx(f1.sum() / 3, abs=1e-6)
    assert live["val/f1_macro"] > plain + 0.2
    # V's false positives still count: they are missed N and S samples
    assert live["val/f1_macro"] < 1 and live["val/recall_N"] == pytest.approx(40 / 50)


def test_per_class_metrics_are_unchanged() -> None:
    y, pred, probs = _absent_class_predicted()
    live = _live(y, probs)
    tensors = torch.as_tensor(pred), torch.as_tensor(y)
    for name, metric in (("f1", MulticlassF1Score), ("precision", MulticlassPrecision),
                         ("recall", MulticlassRecall)):
        per_class = metric(3, average=None)(*tensors)
        for k, cls in enumerate(NAMES):
            assert live[f"val/{name}_{cls}"] == pytest.approx(float(per_class[k]), abs=1e-6)
    assert live["val/precision_V"] == 0 and live["val/recall_V"] == 0 and live["val/f1_V"] == 0
    assert live["val/specificity_V"] == pytest.approx(1 - 11 / 80)


def test_live_and_bootstrap_macro_f1_are_one_definition() -> None:
    y, pred, probs = _absent_class_predicted()
    live = _live(y, probs)["val/f1_macro"]
    cm = confusion_matrix(y, pred, 3).astype(np.float64)
    tp, support, predicted = np.diagonal(cm), cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
    bootstrap = float(macro_average(f1, support, predicted))
    assert bootstrap == pytest.approx(live, abs=1e-6)  # float32 live, float64 bootstrap
    # the bootstrap's statistic on the data itself (one "round": its confusion matrix)
    low, high = bootstrap_ci(y, pred, NAMES, matrices=cm[None])["f1_macro"]
    assert low == pytest.approx(live, abs=1e-6) and high == pytest.approx(live, abs=1e-6)
    # whether V is predicted does not change what is averaged over: two present classes
    assert float(macro_average(f1, support, np.zeros(3))) == bootstrap


def test_present_class_mean_over_batches_ignores_absent_values() -> None:
    values = torch.tensor([[0.5, float("nan"), 1.0], [0.2, 0.4, 0.0], [0.3, 0.3, 0.3]])
    support = torch.tensor([[3, 0, 1], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(present_class_mean(values, support), [0.75, 0.3, 0.0])
    batch = macro_average(values.numpy().astype(np.float64), support.numpy(), np.ones((3, 3)))
    assert batch.dtype == np.float64
    np.testing.assert_allclose(batch, [0.75, 0.3, 0.0])
