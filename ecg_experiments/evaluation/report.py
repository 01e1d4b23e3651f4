"""The report of a tested model: per-class table, bootstrap confidence intervals, figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from sklearn.metrics import roc_auc_score

from ecg_experiments.evaluation import aami
from ecg_experiments.evaluation.metrics import per_class_table
from ecg_experiments.evaluation.plots import (
    plot_confusion_matrix,
    plot_learning_curves,
    plot_roc,
)


@dataclass
class Report:
    """What a report wrote and the numbers to log."""

    table: pd.DataFrame
    ci_metrics: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)
    aami: pd.DataFrame | None = None  # the EC57 table, for AAMI beat classes


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true, predicted] over all classes, also those absent from the data."""
    return sklearn_confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def per_class_auroc(y_true: np.ndarray, probs: np.ndarray) -> list[float]:
    """One-vs-rest AUROC per class (NaN where a class has no positives or no negatives)."""
    values = []
    for k in range(probs.shape[1]):
        positives = y_true == k
        if positives.all() or not positives.any():
            values.append(float("nan"))
        else:
            values.append(float(roc_auc_score(positives, probs[:, k])))
    return values


def macro_average(scores: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The mean over classes of a per-class score [..., classes], leaving out a class that is
    neither in the targets nor predicted (tp + fp + fn = 0), as torchmetrics' macro average
    does: one definition of macro-F1 for the live metrics and the bootstrap."""
    counted = (support + predicted) > 0
    return (scores * counted).sum(axis=-1) / np.maximum(counted.sum(axis=-1), 1)


def bootstrap_confusions(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int,
                         rounds: int = 1000, seed: int = 0, chunk: int = 100) -> np.ndarray:
    """Confusion matrices [rounds, true, predicted] of `rounds` resamples (with replacement,
    seeded) of the test samples, each from one vectorised bincount.

    Written by hand because scipy.stats.bootstrap recomputes the statistic per round in
    Python (minutes on MIT-BIH's 22k test beats with 1,000 rounds); this takes a second.
    """
    k, n = num_classes, len(y_true)
    rng = np.random.default_rng(seed)
    cells = y_true * k + y_pred
    matrices = []
    for start in range(0, rounds, chunk):
        size = min(chunk, rounds - start)
        picks = cells[rng.integers(0, n, size=(size, n))]
        offsets = (np.arange(size) * k * k)[:, None]
        matrices.append(np.bincount((picks + offsets).ravel(), minlength=size * k * k)
                        .reshape(size, k, k))
    return np.concatenate(matrices).astype(np.float64)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap values (NaN rounds left out)."""
    tail = (1 - level) / 2 * 100
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], rounds: int = 1000,
    seed: int = 0, level: float = 0.95, chunk: int = 100, matrices: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of accuracy, macro-F1 and per-class recall (from
    `matrices`, else from `bootstrap_confusions`)."""
    n = len(y_true)
    cm = matrices if matrices is not None else bootstrap_confusions(
        y_true, y_pred, len(class_names), rounds, seed, chunk)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    stats = {"acc": tp.sum(axis=1) / n, "f1_macro": macro_average(f1, support, predicted)}
    for i, name in enumerate(class_names):
        stats[f"recall_{name}"] = recall[:, i]
    return {name: percentile_interval(v, level) for name, v in stats.items()}


def aami_ci(matrices: np.ndarray, class_names: Sequence[str],
            level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Bootstrap intervals of EC57's accuracy, kappa and the Se / +P of S and V."""
    stats = aami.ec57_statistics(matrices, class_names)
    keys = ["acc", "kappa", *(f"{m}_{c}" for c in aami.WITH_CI for m in ("se", "ppv"))]
    return {key: percentile_interval(stats[key], level) for key in keys}


def report_table(
    metrics: Mapping[str, float], y_true: np.ndarray, probs: np.ndarray,
    class_names: Sequence[str], ci: Mapping[str, tuple[float, float]] | None = None,
    stage: str = "test",
) -> pd.DataFrame:
    """Per-class precision, recall, specificity, F1, support, AUROC; macro and micro rows."""
    support = np.bincount(y_true, minlength=len(class_names))
    table = per_class_table(metrics, class_names, stage, support)
    table["auroc"] = per_class_auroc(y_true, probs)
    accuracy = metrics.get(f"{stage}/acc", float("nan"))
    specificity = table["specificity"].mean()
    macro = {"class": "macro avg", "precision": metrics.get(f"{stage}/precision_macro"),
             "recall": metrics.get(f"{stage}/recall_macro"), "specificity": specificity,
             "f1": metrics.get(f"{stage}/f1_macro"), "support": int(support.sum()),
             "auroc": metrics.get(f"{stage}/auroc_macro", float(np.nanmean(table["auroc"])))}
    # single-label multiclass: micro precision = recall = F1 = accuracy
    cm = confusion_matrix(y_true, probs.argmax(axis=1), len(class_names))
    fp = cm.sum(axis=0) - np.diagonal(cm)
    tn = cm.sum() - cm.sum(axis=0) - cm.sum(axis=1) + np.diagonal(cm)
    micro = {"class": "micro avg", "precision": accuracy, "recall": accuracy,
             "specificity": float(tn.sum() / max(tn.sum() + fp.sum(), 1)), "f1": accuracy,
             "support": int(support.sum()), "auroc": float("nan")}
    table = pd.concat([table, pd.DataFrame([macro, micro])], ignore_index=True)
    if ci:
        bounds = [ci.get(f"recall_{name}", (np.nan, np.nan)) for name in table["class"]]
        table["recall_ci_low"] = [low for low, _ in bounds]
        table["recall_ci_high"] = [high for _, high in bounds]
    return table


def write_report(
    out_dir: Path, metrics: Mapping[str, float], y_true: np.ndarray, probs: np.ndarray,
    class_names: Sequence[str], history: Sequence[Mapping[str, float]] = (),
    bootstrap_rounds: int = 1000, seed: int = 0, level: float = 0.95, stage: str = "test",
) -> Report:
    """Write per_class.csv and the figures to `out_dir`; return the table and CI metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    y_pred = probs.argmax(axis=1)
    matrices = bootstrap_confusions(y_true, y_pred, len(class_names), bootstrap_rounds,
                                    seed) if bootstrap_rounds > 0 else None
    ci = bootstrap_ci(y_true, y_pred, class_names, level=level, matrices=matrices) if (
        matrices is not None) else {}
    table = report_table(metrics, y_true, probs, class_names, ci, stage)
    ec57 = None
    if aami.applies(class_names):
        ec57 = aami.ec57_table(confusion_matrix(y_true, y_pred, len(class_names)), class_names,
                               aami_ci(matrices, class_names, level) if matrices is not None
                               else None)
        # the EC57 columns beside each class (Se, +P, FPR over N/S/V/F-reference beats)
        by_class = ec57.assign(**{"class": ec57["class"].str.split(" ").str[0]}).set_index(
            "class")
        for column in ("se", "ppv", "fpr"):
            table[f"aami_{column}"] = table["class"].map(by_class[column])
    files = {"per_class": out_dir / "per_class.csv"}
    table.to_csv(files["per_class"], index=False)
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    files["confusion_matrix"] = plot_confusion_matrix(cm, class_names,
                                                      out_dir / "confusion_matrix.png")
    files["roc"] = plot_roc(y_true, probs, class_names, table["auroc"].tolist(),
                            out_dir / "roc.png")
    if history:
        files["learning_curves"] = plot_learning_curves(history, out_dir / "learning_curves.png")
    ci_metrics = {}
    for name, (low, high) in ci.items():
        ci_metrics[f"{stage}/{name}_ci_low"] = low
        ci_metrics[f"{stage}/{name}_ci_high"] = high
    summary = pd.DataFrame(
        [{"metric": name, "value": metrics.get(f"{stage}/{name}"), "ci_low": low,
          "ci_high": high} for name, (low, high) in ci.items()]
    )
    if len(summary):
        files["confidence_intervals"] = out_dir / "confidence_intervals.csv"
        summary.to_csv(files["confidence_intervals"], index=False)
    if ec57 is not None:
        files["aami"] = out_dir / "aami.csv"
        ec57.to_csv(files["aami"], index=False)
        ci_metrics.update(aami.ec57_metrics(ec57, stage))
    return Report(table=table, ci_metrics=ci_metrics, files=files, aami=ec57)


def _ec57_view(table: pd.DataFrame) -> Any:
    """The EC57 table as a Rich table: Se, +P (with intervals where bootstrapped), FPR."""
    from rich.table import Table

    def cell(row: Mapping[str, Any], name: str) -> str:
        value = row.get(name)
        if value is None or pd.isna(value):
            return ""
        low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
        if low is not None and not pd.isna(low):
            return f"{value:.3f} [{low:.3f}, {high:.3f}]"
        return f"{value:.3f}"

    view = Table(title="AAMI EC57 (Se, +P, FPR over N/S/V/F-reference beats; Q apart)")
    for column in ("class", "Se", "+P", "FPR", "support"):
        view.add_column(column, justify="left" if column == "class" else "right", no_wrap=True)
    for row in table.to_dict("records"):
        if row["class"] == "overall":
            continue
        view.add_row(str(row["class"]), cell(row, "se"), cell(row, "ppv"), cell(row, "fpr"),
                     f"{int(row['support']):,}")
    overall = table[table["class"] == "overall"].to_dict("records")[0]
    view.caption = (f"accuracy {cell(overall, 'acc')}  kappa {cell(overall, 'kappa')}  "
                    f"j {cell(overall, 'j')}  jkappa {cell(overall, 'jkappa')}")
    return view


def print_report(table: pd.DataFrame, metrics: Mapping[str, float], title: str,
                 stage: str = "test", aami_table: pd.DataFrame | None = None) -> None:
    """Print the per-class table, the EC57 table for AAMI beat classes and the headline
    numbers with their intervals."""
    from rich.console import Console
    from rich.table import Table

    shown = table.drop(columns=["recall_ci_low", "recall_ci_high", "aami_se", "aami_ppv",
                                "aami_fpr"], errors="ignore")
    if "recall_ci_low" in table:
        shown.insert(3, "recall CI", [
            "" if np.isnan(low) else f"[{low:.3f}, {high:.3f}]"
            for low, high in zip(table["recall_ci_low"], table["recall_ci_high"], strict=True)
        ])
    view = Table(title=title)
    for column in shown.columns:
        view.add_column(column, justify="left" if column == "class" else "right", no_wrap=True)
    for row in shown.itertuples(index=False):
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append("" if np.isnan(value) else f"{value:.4f}")
            else:
                cells.append(f"{value:,}" if isinstance(value, (int, np.integer)) else str(value))
        view.add_row(*cells)
    parts = []
    for name in ("acc", "f1_macro", "auroc_macro", "loss"):
        key = f"{stage}/{name}"
        if key in metrics:
            text = f"{name} {metrics[key]:.4f}"
            if f"{key}_ci_low" in metrics:
                text += f" [{metrics[f'{key}_ci_low']:.4f}, {metrics[f'{key}_ci_high']:.4f}]"
            parts.append(text)
    console = Console(width=max(Console().width, 110))
    console.print(view)
    console.print("  ".join(parts))
    if aami_table is not None:
        console.print(_ec57_view(aami_table))


def report_test_results(
    module: Any, metrics: Mapping[str, float], history: Sequence[Mapping[str, float]],
    out_dir: Path, settings: Mapping[str, Any], seed: int, logger: Any, title: str,
) -> dict[str, float]:
    """After `trainer.test`: write, print and log the report of a ClassifierModule.

    `settings` is the `report` config group. Returns the confidence-interval metrics.
    """
    from ecg_experiments.tracking import log_files

    if not settings["enabled"] or module.test_probs is None:
        return {}
    report = write_report(
        out_dir, metrics, module.test_targets.numpy(), module.test_probs.numpy(),
        module.class_names, history, settings["bootstrap_rounds"], seed, settings["confidence"],
    )
    print_report(report.table, {**metrics, **report.ci_metrics}, title, aami_table=report.aami)
    if logger is not None:
        logger.log_metrics(report.ci_metrics)
        log_files(logger, report.files, "report")
    return report.ci_metrics
