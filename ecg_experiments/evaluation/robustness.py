"""Noise robustness: a model's metrics on the test beats with noise added at several SNRs.

The SNR is set against the beat the recipe cut: for template-relative beats
(data.recipe.subtract_template=true: the beat minus its record's median beat) against the
beat before the subtraction, not the near-zero residual a normal beat becomes
(`reference_power`); the noise is added to the residual, which is the same as adding it
before the subtraction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ecg_experiments.data.augment import add_noise_at_snr, reference_power
from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.metrics import classification_metrics
from ecg_experiments.evaluation.plots import plot_metrics_vs_snr
from ecg_experiments.inputs import InputSpec, on_signal

log = logging.getLogger(__name__)

SUMMARY = ("acc", "f1_macro", "recall_macro")


def class_probabilities(net: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Softmax class probabilities [n, classes] of `net` for `x`, in batches, without
    gradients."""
    device = next(net.parameters(), torch.empty(0)).device
    net.eval()
    with torch.no_grad():
        return torch.cat([net(batch.to(device)).softmax(dim=-1).cpu()
                          for batch in torch.split(x, batch_size)])


def noise_robustness(
    net: nn.Module,
    signals: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    snrs_db: Sequence[float] = (24, 12, 6, 0),
    kind: str = "gaussian",
    noise_records: Sequence[str] = (),
    rate: float = 125.0,
    seed: int = 0,
    batch_size: int = 512,
    num_features: int = 0,
    signal_power: torch.Tensor | float | None = None,
) -> pd.DataFrame:
    """One row per condition (clean, then each SNR): accuracy, macro-F1, macro recall and
    per-class recall of `net` on `signals` [n, 1, length + num_features] with `kind` noise
    added to the samples at that SNR (see `ecg_experiments.data.augment`; seeded, the same
    noise for every model). The SNR is set against each beat's variance, or `signal_power`
    (one value or one per beat; `reference_power`). Appended features (R-R intervals) stay
    as they are."""
    rows = []
    for snr in [None, *snrs_db]:
        x = signals if snr is None else on_signal(
            signals, num_features,
            lambda s, snr=snr: add_noise_at_snr(s, float(snr), kind, noise_records, rate, seed,
                                                signal_power))
        metrics = classification_metrics(class_names, "test", auroc=False)
        values = metrics(class_probabilities(net, x, batch_size), labels)
        row: dict[str, Any] = {"snr_db": "clean" if snr is None else float(snr)}
        row.update({name: float(values[f"test/{name}"]) for name in SUMMARY})
        row.update({f"recall_{c}": float(values[f"test/recall_{c}"]) for c in class_names})
        rows.append(row)
        log.info("%s: acc %.4f, macro-F1 %.4f", "clean" if snr is None else f"{kind} noise at "
                 f"{snr:g} dB", row["acc"], row["f1_macro"])
    return pd.DataFrame(rows)


def robustness_report(net: nn.Module, signals: torch.Tensor, labels: torch.Tensor,
                      spec: InputSpec, settings: Mapping[str, Any], out_dir: Path,
                      seed: int, logger: Any, recipe: Any = None) -> dict[str, float]:
    """Run `noise_robustness` on test beats (labels in the model's classes, described by the
    model's input `spec`: rate and appended features) if `settings.noise_snr_db` is set;
    write the table and plot to `out_dir`, log them and the metrics
    (`noise/<metric>_snr<db>`). `recipe` (object or config) is the one that cut `signals`:
    template-relative beats get their SNR against the beat before the subtraction
    (`reference_power`); where that is unknown the report is left out with a warning."""
    snrs = settings.get("noise_snr_db")
    if not snrs or spec.kind != "signal":
        return {}
    from ecg_experiments.tracking import log_files

    try:
        power = reference_power(recipe)
    except ConfigError as err:
        log.warning("noise robustness left out: %s", err)
        return {}
    if power is not None:
        log.info("noise robustness: template-relative beats, SNR set against the beat before "
                 "the subtraction (power %g), not the residual", power)
    frame = noise_robustness(
        net, signals, torch.as_tensor(labels), spec.class_names, list(snrs),
        settings.get("noise", "gaussian"), list(settings.get("noise_records") or []),
        float(spec.rate or 125.0), seed, num_features=spec.num_features, signal_power=power,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"noise_robustness": out_dir / "noise_robustness.csv"}
    frame.to_csv(files["noise_robustness"], index=False)
    files["noise_robustness_plot"] = plot_metrics_vs_snr(frame, out_dir / "noise_robustness.png",
                                                         settings.get("noise", "gaussian"))
    metrics = {}
    for row in frame.to_dict("records"):
        suffix = "clean" if row["snr_db"] == "clean" else f"snr{row['snr_db']:g}db"
        metrics.update({f"noise/{name}_{suffix}": row[name] for name in SUMMARY})
    if logger is not None:
        logger.log_metrics(metrics)
        log_files(logger, files, "report")
    shown = frame.assign(snr_db=[s if s == "clean" else f"{s:g} dB" for s in frame["snr_db"]])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return metrics
