"""Figures of a run and of a dataset, written straight to PNG files (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write `fig` to `path` (its folder made), tightly laid out, and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Counts and row-normalised (recall per true class) confusion matrices side by side."""
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, values, title, fmt in (
        (axes[0], cm, "Counts", "{:,.0f}"),
        (axes[1], normalised, "Row-normalised (recall)", "{:.2f}"),
    ):
        image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8,
                    color="white" if normalised[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(class_names)), class_names)
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
    fig.colorbar(image, ax=axes[1], fraction=0.046)
    return save_figure(fig, path)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
             auroc: Sequence[float], path: Path) -> Path:
    """One-vs-rest ROC curve of every class with its AUC."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for k, name in enumerate(class_names):
        positives = y_true == k
        if positives.all() or not positives.any():
            continue  # ROC undefined without both positives and negatives
        fpr, tpr, _ = roc_curve(positives, probs[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auroc[k]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one vs rest")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def plot_learning_curves(history: Sequence[Mapping[str, float]], path: Path) -> Path:
    """Train/validation loss and accuracy per epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for stage in ("train", "val"):
            key = f"{stage}/{metric}"
            points = [(e, row[key]) for e, row in zip(epochs, history, strict=True) if key in row]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    axes[0].set_title("Loss")
    axes[1].set_title("Accuracy")
    return save_figure(fig, path)


def plot_class_distribution(counts: Mapping[str, np.ndarray], class_names: Sequence[str],
                            path: Path) -> Path:
    """Per-class counts per split (bars) and the overall share of each class (pie)."""
    fig, (bars, pie) = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / max(len(counts), 1)
    x = np.arange(len(class_names))
    for i, (split, values) in enumerate(counts.items()):
        bars.bar(x + i * width, values, width, label=split)
    bars.set_xticks(x + width * (len(counts) - 1) / 2, class_names)
    bars.set_yscale("log")
    bars.set_ylabel("samples (log scale)")
    bars.set_title("Samples per class and split")
    bars.legend()
    total = np.sum(list(counts.values()), axis=0)
    pie.pie(total, labels=[f"{n} ({c:,})" for n, c in zip(class_names, total, strict=True)],
            autopct="%1.1f%%", startangle=90)
    pie.set_title("Class share, all splits")
    return save_figure(fig, path)


def plot_example_beats(signals: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                       path: Path, per_class: int = 5, seed: int = 0) -> Path:
    """A few random beats of every class, one panel per class."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, len(class_names), figsize=(3 * len(class_names), 3), sharey=True,
                             squeeze=False)
    for k, (ax, name) in enumerate(zip(axes[0], class_names, strict=True)):
        index = np.flatnonzero(labels == k)
        for i in rng.choice(index, size=min(per_class, len(index)), replace=False):
            ax.plot(signals[i].reshape(-1), linewidth=0.8)
        ax.set_title(f"{name} (n={len(index):,})")
        ax.set_xlabel("sample")
    return save_figure(fig, path)


def plot_example_images(image_at: Callable[[int], Any], labels: np.ndarray,
                        class_names: Sequence[str], path: Path, per_class: int = 5,
                        seed: int = 0) -> Path:
    """A few random images of every class (`image_at(i)`: the PIL image of example i, whose
    class is labels[i]): one row per class."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(class_names), per_class, squeeze=False,
                             figsize=(1.6 * per_class, 1.6 * len(class_names)))
    for k, name in enumerate(class_names):
        index = np.flatnonzero(labels == k)
        chosen = rng.choice(index, size=min(per_class, len(index)), replace=False)
        for j, ax in enumerate(axes[k]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(chosen):
                ax.imshow(image_at(int(chosen[j])).convert("RGB"))
        axes[k][0].set_ylabel(f"{name}\n(n={len(index):,})")
    return save_figure(fig, path)


def plot_metrics_vs_snr(frame: pd.DataFrame, path: Path, noise: str) -> Path:
    """Each metric of a robustness table against the SNR (clean drawn at the right)."""
    noisy = frame[frame["snr_db"] != "clean"]
    clean = frame[frame["snr_db"] == "clean"]
    snrs = noisy["snr_db"].astype(float).to_numpy()
    fig, ax = plt.subplots(figsize=(6, 4))
    metrics = [c for c in frame.columns if c != "snr_db"]
    for name in metrics:
        line, = ax.plot(snrs, noisy[name].to_numpy(), marker="o",
                        linewidth=2.0 if name in ("acc", "f1_macro") else 0.8, label=name)
        if len(clean):
            ax.axhline(float(clean[name].iloc[0]), color=line.get_color(), linestyle=":",
                       linewidth=0.6)
    ax.set_xlabel(f"SNR of added {noise} noise (dB); dotted: clean")
    ax.set_ylabel("value")
    ax.set_ylim(0, 1.02)
    ax.invert_xaxis()
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Metrics under noise")
    return save_figure(fig, path)


CLASS_COLOURS = {"N": "dimgrey", "S": "tab:blue", "V": "tab:red", "F": "tab:purple",
                 "Q": "tab:green"}


def plot_rhythm_strip(signal: np.ndarray, fs: float, samples: np.ndarray,
                      predicted: Sequence[str], true: Sequence[str] | None, start_s: float,
                      duration_s: float, title: str, path: Path) -> tuple[int, int]:
    """An ECG strip (`start_s` .. `start_s + duration_s`) with each beat's predicted class
    above its R-peak, the reference label beneath (when known) and disagreements marked
    (a red band, the labels in bold), saved to `path`; returns the number of beats drawn
    and of disagreements marked."""
    first, last = int(round(start_s * fs)), int(round((start_s + duration_s) * fs))
    last = min(last, len(signal))
    t = np.arange(first, last) / fs
    trace = signal[first:last]
    fig, ax = plt.subplots(figsize=(max(10.0, 0.55 * duration_s), 3.6))
    ax.plot(t, trace, color="black", linewidth=0.7)
    low, high = float(np.nanmin(trace)), float(np.nanmax(trace))
    span = high - low or 1.0
    top, bottom = high + 0.12 * span, low - 0.14 * span
    shown = (samples >= first) & (samples < last)
    wrong = 0
    for sample, pred, ref in zip(samples[shown], np.asarray(predicted)[shown],
                                 (np.asarray(true)[shown] if true is not None
                                  else [""] * int(shown.sum())), strict=True):
        x = sample / fs
        disagree = bool(ref) and ref != pred
        wrong += disagree
        if disagree:
            ax.axvspan(x - 0.15, x + 0.15, color="tab:red", alpha=0.15, linewidth=0)
        ax.text(x, top, pred, ha="center", va="bottom", fontsize=8,
                color=CLASS_COLOURS.get(pred, "black"),
                fontweight="bold" if disagree else "normal")
        if ref:
            ax.text(x, bottom, ref, ha="center", va="top", fontsize=8,
                    color=CLASS_COLOURS.get(ref, "black"),
                    fontweight="bold" if disagree else "normal")
    ax.set_ylim(bottom - 0.16 * span, top + 0.16 * span)
    ax.set_xlim(t[0] if len(t) else start_s, t[-1] if len(t) else start_s + duration_s)
    ax.set_xticks(np.arange(np.ceil(start_s), start_s + duration_s + 1e-9, 1.0), minor=False)
    ax.grid(axis="x", color="mistyrose", linewidth=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mV")
    reference = " (reference beneath)" if true is not None else ""
    ax.set_title(f"{title}: {int(shown.sum())} beats, predicted above{reference}"
                 + (f", {wrong} disagreements marked" if true is not None else ""), fontsize=9)
    save_figure(fig, path)
    return int(shown.sum()), int(wrong)
