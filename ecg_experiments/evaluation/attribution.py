"""Why a model called an input what it did (Captum).

Beats: integrated gradients from an all-zero beat, toward the class the model chose; the
attribution of each sample (and of each appended feature, e.g. the R-R intervals). Images:
Grad-CAM on the last feature map with a spatial extent, upsampled to the image. The figures
are written with matplotlib; `mean_attribution_report` adds the per-class summary figure to a
test report.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ecg_experiments.evaluation.plots import plt, save_figure  # plots sets the Agg backend
from ecg_experiments.evaluation.robustness import class_probabilities
from ecg_experiments.inputs import InputSpec

log = logging.getLogger(__name__)


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters(), torch.empty(0)).device


def integrated_gradients(net: nn.Module, x: torch.Tensor, targets: torch.Tensor,
                         steps: int = 32, batch_size: int = 32) -> np.ndarray:
    """Integrated gradients of `net`'s logit for `targets` w.r.t. each value of `x`
    (baseline: zeros), shape of `x`."""
    from captum.attr import IntegratedGradients

    net.eval()
    method = IntegratedGradients(net)
    parts = []
    for xs, ts in zip(torch.split(x, batch_size), torch.split(targets, batch_size),
                      strict=True):
        xs = xs.to(_device(net)).float()
        parts.append(method.attribute(xs, baselines=torch.zeros_like(xs), target=ts.tolist(),
                                      n_steps=steps).detach().cpu())
    return torch.cat(parts).numpy()


def feature_map_layer(net: nn.Module, example: torch.Tensor) -> nn.Module:
    """The module whose output is the last feature map with a spatial extent (H, W > 1) in
    one forward pass: where Grad-CAM looks (alexnet: the pooled conv features; inception_v3:
    Mixed_7c; cnn2d: its conv stack)."""
    order: list[nn.Module] = []

    def remember(module: nn.Module, args: Any, output: Any) -> None:
        if torch.is_tensor(output) and output.dim() == 4 and min(output.shape[-2:]) > 1:
            order.append(module)

    hooks = [m.register_forward_hook(remember) for m in net.modules() if m is not net]
    try:
        net.eval()
        with torch.no_grad():
            net(example[:1].to(_device(net)))
    finally:
        for hook in hooks:
            hook.remove()
    if not order:
        from ecg_experiments.errors import ConfigError

        raise ConfigError(f"{type(net).__name__}: no layer gives a 2-D feature map; Grad-CAM "
                          "needs a convolutional image model")
    return order[-1]


def grad_cam(net: nn.Module, x: torch.Tensor, targets: torch.Tensor,
             batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps [n, H, W] for `targets`, upsampled to the input size and scaled to
    [0, 1] per image. For an ensemble (a net with `members`, models/ensemble.py) the maps of
    the ensemble's output at each member's last feature map are summed: every member's
    evidence for the ensemble's class, not one member's."""
    from captum.attr import LayerAttribution, LayerGradCam

    parts = getattr(net, "members", None)
    layers = ([feature_map_layer(member, x) for member in parts] if isinstance(parts, nn.ModuleList)
              else [feature_map_layer(net, x)])
    total = None
    for layer in layers:
        method = LayerGradCam(net, layer)
        maps = []
        for xs, ts in zip(torch.split(x, batch_size), torch.split(targets, batch_size),
                          strict=True):
            # gradients must reach the feature map also when the backbone is frozen
            xs = xs.to(_device(net)).float().requires_grad_(True)
            cam = method.attribute(xs, target=ts.tolist(), relu_attributions=True)
            cam = LayerAttribution.interpolate(cam, tuple(xs.shape[-2:]), "bilinear")
            maps.append(cam.detach().cpu()[:, 0])
        result = torch.cat(maps).numpy()
        total = result if total is None else total + result
    peak = total.reshape(len(total), -1).max(axis=1).clip(min=1e-12)
    return total / peak[:, None, None]


def attribute(net: nn.Module, x: torch.Tensor, targets: torch.Tensor, spec: InputSpec,
              steps: int = 32) -> np.ndarray:
    """Integrated gradients for beats ([n, 1, length + features]), Grad-CAM for images
    ([n, H, W])."""
    if spec.kind == "image":
        return grad_cam(net, x, targets)
    return integrated_gradients(net, x, targets, steps)


def plot_beat(beat: np.ndarray, attribution: np.ndarray, spec: InputSpec, title: str,
              path: Path) -> Path:
    """The beat with its attribution shaded along it (red: for the class, blue: against),
    one panel per lead for a beat of several ([channels, length + features]), and a bar per
    appended feature (the first channel's: every channel carries the same) when the model
    takes any."""
    beat, attribution = np.atleast_2d(beat), np.atleast_2d(attribution)
    length = int(spec.signal_length or beat.shape[-1])
    rate = float(spec.rate or 125.0)
    leads = list(spec.leads) or [""]
    features = list(spec.features)
    rows = len(leads)
    fig, axes = plt.subplots(rows, 2 if features else 1,
                             figsize=(10 if features else 8, 3.2 * rows),
                             gridspec_kw={"width_ratios": [4, 1]} if features else None,
                             squeeze=False)
    t = np.arange(length) / rate
    bound = float(np.abs(attribution[:, :length]).max()) or 1.0  # one scale for every lead
    for k, lead in enumerate(leads):
        ax, signal, weights = axes[k, 0], beat[k, :length], attribution[k, :length]
        low, high = float(signal.min()), float(signal.max())
        pad = 0.05 * (high - low or 1.0)
        ax.imshow(weights[None, :], aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound,
                  extent=(t[0], t[-1], low - pad, high + pad), alpha=0.75,
                  interpolation="nearest")
        ax.plot(t, signal, color="black", linewidth=1.2)
        ax.set_ylabel(f"{lead} amplitude" if lead else "amplitude")
        if k < rows - 1 and features:
            axes[k, 1].axis("off")
    axes[-1, 0].set_xlabel("time from window start (s)")
    axes[0, 0].set_title(title, fontsize=9)
    if features:
        values = attribution[0, length:length + len(features)]
        axes[-1, 1].barh(features, values, color=["tab:red" if v > 0 else "tab:blue"
                                                  for v in values])
        axes[-1, 1].axvline(0, color="black", linewidth=0.8)
        axes[-1, 1].set_title("features", fontsize=9)
    return save_figure(fig, path)


def lead_shares(attribution: np.ndarray, spec: InputSpec) -> dict[str, float]:
    """{`attribution_share_<lead>`: that lead's share of the beat's absolute attribution}
    for a beat of several leads (the samples only); {} for one lead."""
    if len(spec.leads) < 2:
        return {}
    length = int(spec.signal_length or attribution.shape[-1])
    per_lead = np.abs(attribution[:, :length]).sum(axis=1)
    total = float(per_lead.sum()) or 1.0
    return {f"attribution_share_{lead}": float(v) / total
            for lead, v in zip(spec.leads, per_lead, strict=True)}


def _display_image(x: torch.Tensor, spec: InputSpec) -> np.ndarray:
    """The normalised image tensor [C, H, W] back to [H, W, C] in [0, 1] for display."""
    mean = torch.tensor(spec.mean or [0.0] * x.shape[0]).view(-1, 1, 1)
    std = torch.tensor(spec.std or [1.0] * x.shape[0]).view(-1, 1, 1)
    image = (x.detach().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return image[..., 0] if image.shape[-1] == 1 else image


def plot_image(x: torch.Tensor, cam: np.ndarray, spec: InputSpec, title: str,
               path: Path) -> Path:
    """The image and its Grad-CAM overlay side by side."""
    image = _display_image(x, spec)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    for ax in axes:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.axis("off")
    axes[1].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[0].set_title("input", fontsize=9)
    # ReLU of a negative weighted sum everywhere: no region raises the class's score
    axes[1].set_title("Grad-CAM" if cam.max() > 0 else
                      "Grad-CAM: all zero (no region raises this class)", fontsize=9)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def plot_mean_attribution(signals: np.ndarray, attributions: np.ndarray, y_true: np.ndarray,
                          y_pred: np.ndarray, spec: InputSpec, path: Path) -> Path:
    """One panel per true class: the mean attribution along the beat over correctly (green)
    and wrongly (red) classified beats, over the class's mean beat (grey)."""
    length = int(spec.signal_length or signals.shape[-1])
    rate = float(spec.rate or 125.0)
    t = np.arange(length) / rate
    names = list(spec.class_names)
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 1.9 * len(names)), sharex=True,
                             squeeze=False)
    for k, name in enumerate(names):
        ax = axes[k, 0]
        of_class = y_true == k
        if not of_class.any():
            ax.set_title(f"true {name}: no test beats", fontsize=9)
            ax.axis("off")
            continue
        beat_axis = ax.twinx()
        beat_axis.plot(t, signals[of_class, :length].mean(axis=0), color="grey", alpha=0.6)
        beat_axis.set_yticks([])
        counts = []
        for label, chosen, colour in (("correct", y_pred == k, "tab:green"),
                                      ("wrong", y_pred != k, "tab:red")):
            group = of_class & chosen
            counts.append(f"{int(group.sum())} {label}")
            if group.any():
                ax.plot(t, attributions[group, :length].mean(axis=0), color=colour,
                        label=f"{label} ({int(group.sum())})")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_ylabel("attribution", fontsize=8)
        ax.set_title(f"true {name}, beats drawn: {', '.join(counts)} (attribution toward the "
                     "predicted class; mean beat in grey)", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time from window start (s)")
    return save_figure(fig, path)


def sample_by_outcome(labels: np.ndarray, predicted: np.ndarray, num_classes: int,
                      per_group: int, seed: int) -> np.ndarray:
    """Sorted positions of at most `per_group` inputs of each true class and outcome
    (correctly / wrongly classified), drawn without replacement (seeded)."""
    rng = np.random.default_rng(seed)
    chosen = [np.empty(0, dtype=np.int64)]
    for k in range(num_classes):
        for right in (True, False):
            group = np.flatnonzero((labels == k) & ((predicted == labels) == right))
            if len(group):
                chosen.append(rng.choice(group, min(per_group, len(group)), replace=False))
    return np.sort(np.concatenate(chosen))


def mean_attribution_report(net: nn.Module, signals: torch.Tensor, labels: torch.Tensor,
                            spec: InputSpec, settings: Mapping[str, Any], out_dir: Path,
                            seed: int, logger: Any) -> dict[str, Path]:
    """The per-class mean attribution figure of a signal model's test beats
    (`report.attribution_per_group` beats drawn per true class and correct / wrong group,
    seeded; 0 = off), written to `out_dir` and logged under `report/`."""
    per_group = int(settings.get("attribution_per_group") or 0)
    if per_group <= 0 or spec.kind != "signal" or len(signals) == 0:
        return {}
    labels = torch.as_tensor(labels)
    predicted = class_probabilities(net, signals).argmax(dim=-1)
    index = torch.as_tensor(sample_by_outcome(labels.numpy(), predicted.numpy(),
                                              len(spec.class_names), per_group, seed))
    if len(index) == 0:
        return {}
    weights = integrated_gradients(net, signals[index], predicted[index],
                                   int(settings.get("attribution_steps") or 32))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for k, lead in enumerate(spec.leads or [""]):  # a figure per lead: the first unsuffixed
        name = f"mean_attribution_{lead}" if k else "mean_attribution"
        files[name] = plot_mean_attribution(
            signals[index][:, k].numpy(), weights[:, k], labels[index].numpy(),
            predicted[index].numpy(), spec, out_dir / f"{name}.png")
    log.info("mean attribution per class over %d test beats: %s", len(index),
             files["mean_attribution"])
    if logger is not None:
        from ecg_experiments.tracking import log_files

        log_files(logger, files, "report")
    return files


def describe(class_names: Sequence[str], probs: np.ndarray, predicted: int,
             true: str | None) -> str:
    """`predicted V (p=0.97), true V` for a figure title."""
    text = f"predicted {class_names[predicted]} (p={probs[predicted]:.2f})"
    return text + (f", true {true}" if true else "")
