"""The metric collection agrees with scikit-learn, also across epochs (reset)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from ecg_experiments.evaluation.metrics import classification_metrics, per_class_table

CLASSES = ["N", "S", "V", "F", "Q"]


def _specificity(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    negatives = y != k
    return float(((pred != k) & negatives).sum() / negatives.sum())


def test_against_sklearn_over_three_epochs() -> None:
    metrics = classification_metrics(CLASSES, "val")
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        y = torch.randint(0, 5, (300,), generator=generator)
        logits = torch.randn(300, 5, generator=generator) + 2.0 * torch.nn.functional.one_hot(y, 5)
        probs = logits.softmax(-1)
        for chunk in range(3):  # several batches per epoch
            part = slice(chunk * 100, (chunk + 1) * 100)
            metrics.update(probs[part], y[part])
        result = {k: float(v) for k, v in metrics.compute().items()}
        metrics.reset()
        y_np, p_np = y.numpy(), probs.numpy()
        pred = p_np.argmax(1)
        assert np.isclose(result["val/acc"], (pred == y_np).mean(), atol=1e-6)
        assert np.isclose(result["val/f1_macro"], f1_score(y_np, pred, average="macro"), atol=1e-6)
        assert np.isclose(
            result["val/auroc_macro"],
            roc_auc_score(y_np, p_np, multi_class="ovr", average="macro"), atol=1e-4,
        )
        precision = precision_score(y_np, pred, average=None)
        recall = recall_score(y_np, pred, average=None)
        f1 = f1_score(y_np, pred, average=None)
        for k, name in enumerate(CLASSES):
            assert np.isclose(result[f"val/precision_{name}"], precision[k], atol=1e-6)
            assert np.isclose(result[f"val/recall_{name}"], recall[k], atol=1e-6)
            assert np.isclose(result[f"val/f1_{name}"], f1[k], atol=1e-6)
            assert np.isclose(result[f"val/specificity_{name}"], _specificity(y_np, pred, k))


def test_per_class_table_rows() -> None:
    values = {f"test/{m}_{c}": 0.5 for m in ("precision", "recall", "specificity", "f1")
              for c in CLASSES}
    values["test/recall_S"] = 0.25
    table = per_class_table(values, CLASSES, "test", support=[5, 4, 3, 2, 1])
    assert table["class"].tolist() == CLASSES
    assert table.loc[1, "recall"] == 0.25
    assert table["support"].tolist() == [5, 4, 3, 2, 1]
