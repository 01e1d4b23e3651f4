"""Explain a saved model's decisions on new inputs: one figure per input and a table.

Inputs are read exactly as `predict` reads them (the preprocessing stored with the model);
attributions come from `ecg_experiments.evaluation.attribution` (Captum).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.attribution import (
    attribute,
    describe,
    lead_shares,
    plot_beat,
    plot_image,
)
from ecg_experiments.io import atomic_path
from ecg_experiments.models.checkpoint import resolve_trained_model
from ecg_experiments.tasks.predict import load_inputs, predict_probabilities

log = logging.getLogger(__name__)


def _class_option(option: str, names: list[str], class_names: list[str]) -> list[int]:
    unknown = [n for n in names if n not in class_names]
    if unknown:
        raise ConfigError(f"{option}={', '.join(unknown)}: not a class of this model; "
                          f"expected one of {', '.join(class_names)}")
    return [class_names.index(n) for n in names]


def _label(info: pd.Series) -> str:
    """`208_s012345` for a record's beat, `row00017` for a CSV row, the stem for a file."""
    if "record" in info:
        return f"{info['record']}_s{int(info['sample']):07d}"
    if "file" in info:
        return Path(str(info["file"])).stem
    return f"row{int(info['row']):05d}"


def explain(cfg: DictConfig) -> pd.DataFrame:
    """Figures for the chosen inputs of `cfg.input` in `cfg.output_dir` (written whole or
    not at all) and `explanations.csv` there; returns that table."""
    model, _ = resolve_trained_model(cfg.get("ckpt"), cfg.get("run_id"), cfg.paths.tracking_uri)
    names = list(model.class_names)
    fixed_target = None
    if str(cfg.target) != "predicted":
        (fixed_target,) = _class_option("target", [str(cfg.target)], names)
    only = _class_option("only", [str(n) for n in cfg.only], names) if cfg.get("only") else None
    inputs, frame = load_inputs(cfg.input, model)
    probs = predict_probabilities(model.net, inputs, 256)
    predicted = probs.argmax(axis=1)
    candidates = np.arange(len(frame))
    if only is not None:
        candidates = candidates[np.isin(predicted, only)]
    if cfg.get("items") is not None:
        wanted = [int(i) for i in cfg["items"]]
        outside = [i for i in wanted if not 0 <= i < len(frame)]
        if outside:
            raise ConfigError(f"items={outside}: {cfg.input} holds {len(frame)} inputs "
                              f"(positions 0-{len(frame) - 1})")
        candidates = np.array([i for i in wanted if i in set(candidates.tolist())], dtype=int)
    else:
        candidates = candidates[:max(int(cfg.limit), 0)]
    if len(candidates) == 0:
        raise ConfigError(f"input={cfg.input}: no input to explain with only={cfg.get('only')}, "
                          f"items={cfg.get('items')}, limit={cfg.limit}")
    x = torch.stack([inputs[int(i)][0] for i in candidates])
    targets = torch.as_tensor(predicted[candidates] if fixed_target is None
                              else np.full(len(candidates), fixed_target))
    weights = attribute(model.net, x, targets, model.input, int(cfg.steps))
    rows = []
    output = Path(cfg.output_dir)
    with atomic_path(output) as tmp:
        tmp.mkdir(parents=True)
        for n, (i, target) in enumerate(zip(candidates, targets.tolist(), strict=True)):
            info = frame.iloc[int(i)]
            true = str(info["true"]) if "true" in info and info["true"] != "" else None
            title = f"{_label(info)}: {describe(names, probs[i], int(predicted[i]), true)}"
            if fixed_target is not None:
                title += f"; attribution toward {names[target]}"
            figure = tmp / f"{n:03d}_{_label(info)}.png"
            if model.input.kind == "image":
                plot_image(x[n], weights[n], model.input, title, figure)
            else:
                plot_beat(x[n].numpy(), weights[n], model.input, title, figure)
            rows.append({**info.to_dict(), "position": int(i), "predicted": names[predicted[i]],
                         "probability": float(probs[i, predicted[i]]),
                         "attribution_target": names[target],
                         **(lead_shares(weights[n], model.input)
                            if model.input.kind == "signal" else {}),
                         "figure": str(output / figure.name)})
        table = pd.DataFrame(rows)
        table.to_csv(tmp / "explanations.csv", index=False)
    _print(table, output)
    return table


def _print(table: pd.DataFrame, output: Path) -> None:
    view = Table(title=f"{len(table)} inputs explained")
    for column in ("position", "predicted", "probability", "true", "figure"):
        if column in table:
            view.add_column(column)
    for row in table.to_dict("records"):
        view.add_row(*[f"{row[c]:.3f}" if c == "probability" else
                       (Path(str(row[c])).name if c == "figure" else str(row[c]))
                       for c in ("position", "predicted", "probability", "true", "figure")
                       if c in table])
    console = Console()
    console.print(view)
    console.print(f"figures and explanations.csv in {output}")
