"""torchmetrics collections with the project's metric names, and the per-class table.

Macro averages (`f1_macro`, `precision_macro`, `recall_macro`, `auroc_macro`) are the mean of
torchmetrics' per-class values over the classes PRESENT IN THE TARGETS (`present_class_mean`):
a class absent from a validation fold or a test set is left out whether or not the model
predicts it. torchmetrics' and scikit-learn's own macro averages leave such a class out only
while it is not predicted and count it as 0 once it is (its AUROC always as 0), so what they
average over depends on the predictions. The bootstrap (`report.macro_average`) uses the same
definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassSpecificity,
)
from torchmetrics.utilities import dim_zero_cat

PER_CLASS_METRICS = {
    "precision": MulticlassPrecision,
    "recall": MulticlassRecall,
    "specificity": MulticlassSpecificity,
    "f1": MulticlassF1Score,
}


def present_class_mean(per_class: Tensor, support: Tensor) -> Tensor:
    """The project's macro average: the mean of per-class values [..., classes] over the
    classes with `support` (their count in the targets) > 0; 0 where no class is present.

    A class absent from the targets is left out whether or not it is predicted. Its false
    positives still count: each is a missed sample of a present class, lowering that class's
    recall and F1. Values of absent classes (0 or NaN) never reach the mean.
    """
    present = support > 0
    kept = torch.where(present, per_class, torch.zeros_like(per_class))
    return kept.sum(dim=-1) / present.sum(dim=-1).clamp(min=1)


class _PresentClassMacro:
    """Mixin for a torchmetrics multiclass metric: built with `average=None`, its `compute`
    returns `present_class_mean` of the per-class values (support = `_support()`)."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(num_classes, average=None, **kwargs)  # type: ignore[call-arg]

    def _support(self) -> Tensor:
        """Per-class count in the targets, from the stat-score states (tp + fn)."""
        return self.tp + self.fn  # type: ignore[attr-defined]

    def compute(self) -> Tensor:
        return present_class_mean(super().compute(), self._support())  # type: ignore[misc]


class MacroF1(_PresentClassMacro, MulticlassF1Score):
    """Macro-F1 over the classes present in the targets."""


class MacroPrecision(_PresentClassMacro, MulticlassPrecision):
    """Macro precision over the classes present in the targets."""


class MacroRecall(_PresentClassMacro, MulticlassRecall):
    """Macro recall over the classes present in the targets."""


class MacroAUROC(_PresentClassMacro, MulticlassAUROC):
    """Macro one-vs-rest AUROC over the classes present in the targets (torchmetrics gives an
    absent class an AUROC of 0)."""

    def _support(self) -> Tensor:
        if self.thresholds is None:  # the samples are kept (the default)
            return torch.bincount(dim_zero_cat(self.target), minlength=self.num_classes)
        return self.confmat[0, :, 1, :].sum(dim=-1)  # binned: [thresholds, class, true, pred]


def classification_metrics(
    class_names: Sequence[str], stage: str, per_class: bool = True, auroc: bool = True
) -> MetricCollection:
    """Metrics named `{stage}/{metric}` and `{stage}/{metric}_{class}` (listed in
    docs/evaluation.md); the macro averages are over the classes present in the targets
    (`present_class_mean`).

    Updated with class probabilities [batch, classes] and integer targets [batch].
    """
    num_classes = len(class_names)
    metrics: dict = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1_macro": MacroF1(num_classes),
        "precision_macro": MacroPrecision(num_classes),
        "recall_macro": MacroRecall(num_classes),
    }
    if auroc:
        metrics["auroc_macro"] = MacroAUROC(num_classes)
    if per_class:
        for name, metric_class in PER_CLASS_METRICS.items():
            metrics[name] = ClasswiseWrapper(
                metric_class(num_classes, average=None),
                labels=list(class_names),
                prefix=f"{name}_",
            )
    return MetricCollection(metrics, prefix=f"{stage}/")


def metric_names(class_names: Sequence[str], stage: str) -> list[str]:
    """Every metric name a stage logs (`classification_metrics` plus the loss)."""
    names = [f"{stage}/{m}" for m in ("loss", "acc", "f1_macro", "precision_macro",
                                      "recall_macro", "auroc_macro")]
    return names + [f"{stage}/{m}_{c}" for m in PER_CLASS_METRICS for c in class_names]


def per_class_table(
    metrics: Mapping[str, float], class_names: Sequence[str], stage: str = "test",
    support: Sequence[int] | None = None,
) -> pd.DataFrame:
    """One row per class with precision, recall (sensitivity), specificity, F1 and support."""
    rows = []
    for index, name in enumerate(class_names):
        row = {"class": name}
        for metric in PER_CLASS_METRICS:
            row[metric] = float(metrics.get(f"{stage}/{metric}_{name}", float("nan")))
        if support is not None:
            row["support"] = int(support[index])
        rows.append(row)
    return pd.DataFrame(rows)
