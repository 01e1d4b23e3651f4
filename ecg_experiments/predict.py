"""Classify new beats with a saved model: `python -m ecg_experiments.predict ... input=<path>`.

Inputs: a Kaggle-format beats CSV (label column optional) or a raw WFDB record; the beats
of a record are made with the preprocessing stored with the model (lead, recipe).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from ecg_experiments.cli import exit_on_user_error
from ecg_experiments.data.beats import read_beats_csv
from ecg_experiments.data.physionet import read_record
from ecg_experiments.data.segment import KachueeRecipe
from ecg_experiments.errors import DataError
from ecg_experiments.io import atomic_path
from ecg_experiments.models.checkpoint import TrainedModel, resolve_trained_model

log = logging.getLogger(__name__)


def _record_base(path: Path) -> Path | None:
    """The WFDB record path (without extension) that `path` names, if it names one."""
    base = path.with_suffix("") if path.suffix in (".hea", ".dat", ".atr") else path
    return base if base.with_name(base.name + ".hea").is_file() else None


def _record_beats(base: Path, model: TrainedModel) -> tuple[np.ndarray, pd.DataFrame]:
    data = model.config.data
    if "recipe" in data:
        recipe = instantiate(data.recipe)
    elif int(data.get("signal_length", 0)) == KachueeRecipe.length:
        recipe = KachueeRecipe()  # Kaggle-format CSVs were made with this recipe
    else:
        raise DataError(
            f"{base}: the model was trained on {data.get('signal_length')}-sample beats from "
            "CSV files; no recipe is stored that would cut such beats from a raw record"
        )
    if isinstance(recipe, KachueeRecipe):
        recipe = dataclasses.replace(recipe, drop_last_beat=False)  # a row for every beat
    record = read_record(base.parent, base.name, lead=data.get("lead", "MLII"),
                         missing_lead=data.get("missing_lead", "first"),
                         require_annotations=False)
    if record is None:
        raise DataError(f"{base}: the record has no {data.get('lead', 'MLII')} lead")
    beats = recipe.extract(record)
    info = pd.DataFrame({"record": record.name, "sample": beats.samples,
                         "symbol": beats.symbols})
    labels = beats.labels
    info["true"] = [model.class_names[k] if k >= 0 else "" for k in labels]
    return beats.signals, info


def load_inputs(path: str | Path, model: TrainedModel) -> tuple[np.ndarray, pd.DataFrame]:
    """Beat signals [n, length] and a table describing each (row, record, true class...)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        length = int(model.config.data.get("signal_length", 187))
        signals, labels = read_beats_csv(path, length, model.class_names, labelled=None)
        info = pd.DataFrame({"row": np.arange(len(signals))})
        if labels is not None:
            info["true"] = [model.class_names[k] for k in labels]
        return signals, info
    base = _record_base(path)
    if base is not None:
        return _record_beats(base, model)
    raise DataError(
        f"input={path}: expected a Kaggle-format .csv file or a WFDB record (its .hea file or "
        "its path without extension); the file does not exist or is neither"
    )


def predict_probabilities(net: torch.nn.Module, signals: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities [n, classes] in batches, without gradients."""
    net.eval()
    x = torch.from_numpy(np.ascontiguousarray(signals, dtype=np.float32)).unsqueeze(1)
    with torch.no_grad():
        parts = [net(batch).softmax(dim=-1) for batch in torch.split(x, batch_size)]
    return torch.cat(parts).numpy()


def predict(cfg: DictConfig) -> pd.DataFrame:
    """Predict every beat of `cfg.input`; write the CSV to `cfg.output` and return it."""
    model, _ = resolve_trained_model(cfg.get("ckpt"), cfg.get("run_id"), cfg.paths.tracking_uri)
    signals, frame = load_inputs(cfg.input, model)
    if len(signals) == 0:
        raise DataError(f"input={cfg.input}: no beats found")
    probs = predict_probabilities(model.net, signals, int(cfg.batch_size))
    frame["predicted"] = [model.class_names[k] for k in probs.argmax(axis=1)]
    for k, name in enumerate(model.class_names):
        frame[f"prob_{name}"] = probs[:, k]
    output = Path(cfg.output)
    with atomic_path(output) as tmp:
        frame.to_csv(tmp, index=False)
    print_summary(frame, model.class_names, output)
    return frame


def print_summary(frame: pd.DataFrame, class_names: list[str], output: Path) -> None:
    view = Table(title=f"{len(frame):,} beats predicted")
    view.add_column("class")
    view.add_column("predicted", justify="right")
    has_truth = "true" in frame and (frame["true"] != "").any()
    if has_truth:
        view.add_column("true", justify="right")
    for name in class_names:
        row = [name, f"{(frame['predicted'] == name).sum():,}"]
        if has_truth:
            row.append(f"{(frame['true'] == name).sum():,}")
        view.add_row(*row)
    console = Console()
    console.print(view)
    if has_truth:
        known = frame["true"] != ""
        accuracy = (frame.loc[known, "true"] == frame.loc[known, "predicted"]).mean()
        console.print(f"agreement with the reference labels: {accuracy:.4f}")
    console.print(f"predictions written to {output}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        predict(cfg)


if __name__ == "__main__":
    main()
