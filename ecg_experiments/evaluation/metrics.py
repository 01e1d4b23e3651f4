"""torchmetrics collections with the project's metric names, and the per-class table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from torchmetrics import ClasswiseWrapper, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassSpecificity,
)

PER_CLASS_METRICS = {
    "precision": MulticlassPrecision,
    "recall": MulticlassRecall,
    "specificity": MulticlassSpecificity,
    "f1": MulticlassF1Score,
}


def classification_metrics(
    class_names: Sequence[str], stage: str, per_class: bool = True, auroc: bool = True
) -> MetricCollection:
    """Metrics named `{stage}/{metric}` and `{stage}/{metric}_{class}` (see DESIGN.md).

    Updated with class probabilities [batch, classes] and integer targets [batch].
    """
    num_classes = len(class_names)
    metrics: dict = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        "precision_macro": MulticlassPrecision(num_classes, average="macro"),
        "recall_macro": MulticlassRecall(num_classes, average="macro"),
    }
    if auroc:
        metrics["auroc_macro"] = MulticlassAUROC(num_classes, average="macro")
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
