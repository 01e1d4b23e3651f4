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
    ci_over: str = ""  # what the intervals resampled: "22 records", "5,000 samples (...)"


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
    """The mean of a per-class score [..., classes] over the classes present in the targets
    (`support` > 0, the same shape): `metrics.present_class_mean`, the live metrics' macro
    average, so the bootstrap and the logged macro-F1 are one definition. `predicted` (the
    per-class prediction counts) no longer matters: a class absent from the targets is left
    out whether or not it is predicted; the parameter stays for callers."""
    import torch

    from ecg_experiments.evaluation.metrics import present_class_mean

    return present_class_mean(torch.as_tensor(scores), torch.as_tensor(support)).numpy()


def bootstrap_confusions(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int,
                         rounds: int = 1000, seed: int = 0, chunk: int = 100,
                         groups: np.ndarray | None = None) -> np.ndarray:
    """Confusion matrices [rounds, true, predicted] of `rounds` seeded resamples with
    replacement of the test samples, or, with `groups` (the record of each sample), of the
    records: a cluster bootstrap that draws records and keeps all their samples, since the
    uncertainty of a score over patients is in the patients, not the beats.

    Written by hand because scipy.stats.bootstrap neither clusters nor is fast here (it
    recomputes the statistic per round in Python: minutes on 22k beats); each round here is
    one vectorised bincount, or a product with the per-record confusion matrices.
    """
    k = num_classes
    rng = np.random.default_rng(seed)
    cells = np.asarray(y_true) * k + np.asarray(y_pred)
    if groups is None:  # every sample a unit: its own one-cell "confusion matrix"
        units, per_unit = len(cells), None
    else:
        _, unit_of = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        units = int(unit_of.max()) + 1 if len(unit_of) else 0
        per_unit = np.bincount(unit_of * k * k + cells,
                               minlength=units * k * k).reshape(units, k * k)
    matrices = []
    for start in range(0, rounds, chunk):
        size = min(chunk, rounds - start)
        picks = rng.integers(0, units, size=(size, units))
        if per_unit is None:
            values, width = cells[picks], k * k
        else:  # how often each record is drawn in each round, then its matrix that often
            values, width = picks, units
        offsets = (np.arange(size) * width)[:, None]
        counts = np.bincount((values + offsets).ravel(), minlength=size * width).reshape(
            size, width)
        matrices.append((counts if per_unit is None else counts @ per_unit).reshape(size, k, k))
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
    cm = matrices if matrices is not None else bootstrap_confusions(
        y_true, y_pred, len(class_names), rounds, seed, chunk)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    # a record resample holds another number of samples each round
    stats = {"acc": tp.sum(axis=1) / np.maximum(cm.sum(axis=(1, 2)), 1),
             "f1_macro": macro_average(f1, support, predicted)}
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
    # the project's macro average (metrics.present_class_mean): over the classes present;
    # a class that is every sample has no negatives, so no specificity (not 0)
    defined = (support > 0) & (support < support.sum())
    specificity = (float(np.mean(np.asarray(table["specificity"], dtype=float)[defined]))
                   if defined.any() else float("nan"))
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
    groups: np.ndarray | None = None,
) -> Report:
    """Write per_class.csv and the figures to `out_dir`; return the table and CI metrics.
    With `groups` (the record of each sample) the intervals resample records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    y_pred = probs.argmax(axis=1)
    if groups is not None and len(np.unique(np.asarray(groups).astype(str))) < 2:
        bootstrap_rounds = 0  # one record: every resample is the same, no interval to give
    matrices = bootstrap_confusions(y_true, y_pred, len(class_names), bootstrap_rounds,
                                    seed, groups=groups) if bootstrap_rounds > 0 else None
    ci_over = ci_unit(groups, len(y_true)) if matrices is not None else ""
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
          "ci_high": high, "resampled": ci_over} for name, (low, high) in ci.items()]
    )
    if len(summary):
        files["confidence_intervals"] = out_dir / "confidence_intervals.csv"
        summary.to_csv(files["confidence_intervals"], index=False)
    if ec57 is not None:
        files["aami"] = out_dir / "aami.csv"
        ec57.to_csv(files["aami"], index=False)
        ci_metrics.update(aami.ec57_metrics(ec57, stage))
    return Report(table=table, ci_metrics=ci_metrics, files=files, aami=ec57, ci_over=ci_over)


def ci_unit(groups: np.ndarray | None, samples: int) -> str:
    """What a bootstrap resampled, as the report and MLflow say it."""
    if groups is None:
        return (f"{samples:,} samples (no record ids: each sample resampled alone, which "
                "understates the uncertainty over patients)")
    records = len(np.unique(np.asarray(groups).astype(str)))
    return f"{records} record{'s' if records != 1 else ''}"


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
                 stage: str = "test", aami_table: pd.DataFrame | None = None,
                 caption: str = "") -> None:
    """Print the per-class table, the EC57 table for AAMI beat classes and the headline
    numbers with their intervals; `caption` says what the intervals resampled."""
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
    if caption:
        view.caption = caption
    console.print(view)
    console.print("  ".join(parts))
    if aami_table is not None:
        console.print(_ec57_view(aami_table))


def report_test_results(
    module: Any, metrics: Mapping[str, float], history: Sequence[Mapping[str, float]],
    out_dir: Path, settings: Mapping[str, Any], seed: int, logger: Any, title: str,
    samples: pd.DataFrame | None = None, note: str = "",
) -> dict[str, float]:
    """After `trainer.test`: write, print and log the report of a ClassifierModule.

    `settings` is the `report` config group; `samples` the sample frame of the scored
    samples in test order (their records make the intervals resample records, and they go
    into predictions.csv); `note` is printed under the title (e.g. "includes training
    data"). Returns the confidence-interval metrics.
    """
    from ecg_experiments.evaluation.predictions import prediction_frame, write_predictions
    from ecg_experiments.tracking import log_files

    if not settings["enabled"] or module.test_probs is None:
        return {}
    y_true, probs = module.test_targets.numpy(), module.test_probs.numpy()
    if samples is not None and len(samples) != len(y_true):  # e.g. DDP pads its shards
        samples = None
    groups = samples["record"].to_numpy() if samples is not None and "record" in samples \
        else None
    report = write_report(
        out_dir, metrics, y_true, probs, module.class_names, history,
        settings["bootstrap_rounds"], seed, settings["confidence"], groups=groups,
    )
    report.files.update(write_predictions(
        out_dir, prediction_frame(samples, y_true, probs, module.class_names),
        module.class_names))
    caption = f"{settings['confidence']:.0%} CI over {report.ci_over}" if report.ci_over else ""
    print_report(report.table, {**metrics, **report.ci_metrics}, title, aami_table=report.aami,
                 caption="; ".join(c for c in (caption, note) if c))
    if logger is not None:
        logger.log_metrics(report.ci_metrics)
        if report.ci_over:
            logger.experiment.set_tag(logger.run_id, "report.ci_over", report.ci_over)
        log_files(logger, report.files, "report")
    return report.ci_metrics
