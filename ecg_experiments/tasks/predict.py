"""Classify new beats or images with a saved model: `python -m ecg_experiments.predict ...
input=<path>`.

Inputs for a signal model: a Kaggle-format beats CSV (label column optional) or a raw WFDB
record; the beats of a record are made with the preprocessing stored with the model (lead,
recipe). For an image model: an image file or a folder of them (class subfolders give the
true class), resized and normalised as the model was evaluated.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ecg_experiments.data.beats import read_beats_csv
from ecg_experiments.data.identity import (
    ALSO,
    ID,
    beat_ids,
    distinct_row_ids,
    rendered_beat_id,
    row_ids,
)
from ecg_experiments.data.image_files import (
    IMAGE_EXTENSIONS,
    ImageFiles,
    image_files,
    image_transform,
)
from ecg_experiments.data.physionet import (
    AAMI_CLASSES,
    DATABASES,
    Record,
    databases_of,
    read_record,
)
from ecg_experiments.data.render import is_rendered_folder
from ecg_experiments.data.segment import KachueeRecipe, cut_beats, with_features
from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.evaluation.plots import plot_rhythm_strip
from ecg_experiments.evaluation.seen import check_unseen
from ecg_experiments.io import atomic_path, sha256_file
from ecg_experiments.models.checkpoint import TrainedModel, resolve_trained_model
from ecg_experiments.models.precision import autocast, resolve_precision

log = logging.getLogger(__name__)


def _record_base(path: Path) -> Path | None:
    """The WFDB record path (without extension) that `path` names, if it names one."""
    base = path.with_suffix("") if path.suffix in (".hea", ".dat", ".atr") else path
    return base if base.with_name(base.name + ".hea").is_file() else None


def record_id_of(base: Path) -> str:
    """`<database>/<record>` of a record path: its folder's name where that names a
    database, else the database whose record names it looks like (as training names it)."""
    if base.parent.name in DATABASES:
        return f"{base.parent.name}/{base.name}"
    owners = databases_of(base.name)
    return f"{owners[0].name if owners else base.parent.name}/{base.name}"


def record_leads(name: str, data: DictConfig) -> list[str]:
    """The lead preference for a record: the model's data option (`leads`, or `lead` of
    older runs), else the preset of the database whose record names it looks like."""
    if data.get("leads"):
        return [str(x) for x in data.leads]
    if data.get("lead"):
        return [str(data.lead)]
    owners = databases_of(name)
    return list(owners[0].leads) if owners else ["MLII"]


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
    leads = record_leads(base.name, data)
    channels = model.config.data.get("channels")  # as cut in training: one lead per channel
    channels = OmegaConf.to_container(channels, resolve=True) if channels else None
    record = read_record(base.parent, base.name, lead=leads,
                         missing_lead=data.get("missing_lead", "first"),
                         require_annotations=False, channels=channels)
    if record is None:
        raise DataError(f"{base}: the record has no {'/'.join(leads)} lead"
                        + (f" for data.channels={channels}" if channels else ""))
    log.info("record %s: lead %s at %g Hz, beats cut at %g Hz (%s recipe)", base.name,
             record.lead, record.fs, recipe.rate, recipe.name)
    if recipe.length != model.input.signal_length:
        raise DataError(f"{base}: the stored {recipe.name} recipe makes {recipe.length}-sample "
                        f"beats but the model takes {model.input.describe()}")
    beats = cut_beats(recipe, record)
    info = pd.DataFrame({"record": record.name, "sample": beats.samples,
                         "symbol": beats.symbols})
    info[ID] = beat_ids([record_id_of(base)] * len(beats.samples), beats.samples)
    if isinstance(recipe, KachueeRecipe) and not channels:  # the beat as an exported CSV row
        info[ALSO] = distinct_row_ids(beats.signals)
    # the reference label by its AAMI class name (never by its index in the model's classes)
    info["true"] = [AAMI_CLASSES[k] if k >= 0 else "" for k in beats.labels]
    info.attrs["record"] = record  # for the rhythm strip of `predict`
    if model.input.features:  # as in training: the features after the samples
        names = tuple(getattr(recipe, "feature_names", ()))
        if names != model.input.features or beats.features.shape[1] != len(names):
            raise DataError(f"{base}: the recipe gives the per-beat features "
                            f"[{', '.join(names)}] but the model takes "
                            f"{model.input.describe()}")
        return with_features(beats.signals, beats.features), info
    return beats.signals, info


def _content_id(path: Path) -> str:
    """An image file's identity (its content); an unreadable file is named by its path and
    fails with a clear error where it is read."""
    try:
        return "sha256:" + sha256_file(path)
    except OSError:
        return f"path:{path}"


def _in_rendered_folder(path: Path) -> bool:
    """Whether `path` (a folder, a class folder or an image) lies in a folder of rendered
    beats (data/render.py)."""
    return any(is_rendered_folder(folder) for folder in (path, *list(path.parents)[:2]))


def _image_inputs(path: Path, model: TrainedModel) -> tuple[Dataset, pd.DataFrame]:
    """Images of a file or folder, preprocessed as in the model's evaluation.

    In a folder whose subfolders are named after the model's classes, the folder name is
    taken as the true class.
    """
    if path.is_dir():
        files = image_files(path)
    elif path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
        files = [path]
    else:
        raise DataError(f"input={path}: expected an image file ({', '.join(IMAGE_EXTENSIONS)}) "
                        "or a folder of images for this image model")
    spec = model.input
    transform = image_transform(int(spec.image_size), list(spec.mean), list(spec.std))
    info = pd.DataFrame({"file": [str(f) for f in files],
                         ID: [_content_id(f) for f in files]})
    if _in_rendered_folder(path):  # each image is also the beat its name gives
        info[ALSO] = [rendered_beat_id(f.name) for f in files]
    if path.is_dir():
        folders = [f.relative_to(path).parts[0] if len(f.relative_to(path).parts) > 1 else ""
                   for f in files]
        if any(name in model.class_names for name in folders):
            info["true"] = [name if name in model.class_names else "" for name in folders]
    dataset = ImageFiles(files, np.full(len(files), -1), transform, int(spec.channels or 3))
    return dataset, info


def load_inputs(path: str | Path, model: TrainedModel) -> tuple[Dataset, pd.DataFrame]:
    """The model's inputs as a Dataset (beats [1, length] or images [C, H, W]) and a table
    describing each (row or file, record, true class...)."""
    path = Path(path)
    if model.input.kind == "image":
        return _image_inputs(path, model)
    signals, info = _signal_inputs(path, model)
    x = torch.from_numpy(np.ascontiguousarray(signals, dtype=np.float32))
    x = x.unsqueeze(1) if x.ndim == 2 else x  # one lead: [n, 1, length]
    return TensorDataset(x), info


def _signal_inputs(path: Path, model: TrainedModel) -> tuple[np.ndarray, pd.DataFrame]:
    if path.suffix.lower() == ".csv":
        if model.input.leads:
            raise DataError(
                f"input={path}: the model takes {model.input.describe()}; a beats CSV row "
                "holds one lead: give a WFDB record")
        if model.input.features:
            raise DataError(
                f"input={path}: the model takes {model.input.describe()}, which a beats CSV "
                "does not carry; give a WFDB record (the features are computed from it)")
        if reason := model.record_only_reason():
            raise DataError(f"input={path}: a beats CSV cannot feed this model: {reason}; "
                            "give a WFDB record")
        length = int(model.input.signal_length)
        signals, labels = read_beats_csv(path, length, model.class_names, labelled=None)
        info = pd.DataFrame({"row": np.arange(len(signals)), ID: row_ids(signals)})
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


def predict_probabilities(net: torch.nn.Module, inputs: Dataset, batch_size: int,
                          precision: str = "32-true") -> np.ndarray:
    """Class probabilities [n, classes] in batches, without gradients, the network run in
    `precision` (mixed: autocast; the probabilities are float32 either way)."""
    net.eval()
    with torch.no_grad(), autocast(precision, "cpu"):
        parts = [net(batch[0]).float().softmax(dim=-1)
                 for batch in DataLoader(inputs, batch_size=batch_size)]
    return torch.cat(parts).numpy()


def predict(cfg: DictConfig) -> pd.DataFrame:
    """Predict every beat of `cfg.input`; write the CSV to `cfg.output` and return it."""
    model, _ = resolve_trained_model(cfg.get("ckpt"), cfg.get("run_id"), cfg.paths.tracking_uri)
    inputs, frame = load_inputs(cfg.input, model)
    strip = cfg.get("strip") or {}
    if "record" in frame.attrs and float(strip.get("duration") or 0) > 0:
        _strip_range(frame.attrs["record"], strip)  # a bad range fails before any work
    if len(inputs) == 0:
        raise DataError(f"input={cfg.input}: no beats or images found; expected "
                        + ("an image file or a folder holding images" if
                           model.input.kind == "image" else "a CSV with rows or a record "
                           "with beats"))
    included = 0
    if "true" in frame:  # scored against reference labels: never on samples it trained on
        included = check_unseen(frame, model.seen, bool(cfg.get("allow_seen")),
                                f"input={cfg.input}")
    frame = frame.drop(columns=[c for c in (ID, ALSO) if c in frame])
    precision = resolve_precision(cfg.get("precision", "32-true"), "cpu")
    probs = predict_probabilities(model.net, inputs, int(cfg.batch_size), precision)
    frame["predicted"] = [model.class_names[k] for k in probs.argmax(axis=1)]
    for k, name in enumerate(model.class_names):
        frame[f"prob_{name}"] = probs[:, k]
    output = Path(cfg.output)
    with atomic_path(output) as tmp:
        frame.to_csv(tmp, index=False)
    print_summary(frame, model.class_names, output)
    if included:
        Console().print(f"includes training data: {included:,} of the beats were fit or "
                        "validated on (allow_seen=true)")
    if "record" in frame.attrs and float(strip.get("duration") or 0) > 0:
        path, beats, wrong = rhythm_strip(frame, cfg.strip)
        Console().print(f"rhythm strip ({beats} beats"
                        + (f", {wrong} disagreements marked" if wrong is not None else "")
                        + f") written to {path}")
    return frame


def _strip_range(record: Record, strip: DictConfig) -> tuple[float, float]:
    """`strip.start` and `strip.duration` (s), refused unless the start lies in the record."""
    start, duration = float(strip.start), float(strip.duration)
    length_s = len(record.signal) / record.fs
    if not 0 <= start < length_s:
        raise ConfigError(f"strip.start={start:g}: record {record.name} lasts {length_s:.1f} s; "
                          "expected a start time (s) inside it")
    return start, duration


def rhythm_strip(frame: pd.DataFrame, strip: DictConfig) -> tuple[Path, int, int | None]:
    """The rhythm-strip figure of a predicted record at `strip.output`, with the number of
    beats drawn and of disagreements marked (None without reference labels)."""
    record: Record = frame.attrs["record"]
    start, duration = _strip_range(record, strip)
    has_truth = bool((frame["true"] != "").any())
    output = Path(strip.output)
    # a record read with several leads: the strip shows the first (the model's first channel)
    signal = record.signal if record.signal.ndim == 1 else record.signal[:, 0]
    with atomic_path(output) as tmp:
        beats, wrong = plot_rhythm_strip(
            signal, record.fs, frame["sample"].to_numpy(), frame["predicted"].tolist(),
            frame["true"].tolist() if has_truth else None, start, duration,
            f"record {record.name}, lead {record.lead.split('+')[0]}", tmp)
    return output, beats, wrong if has_truth else None


def print_summary(frame: pd.DataFrame, class_names: list[str], output: Path) -> None:
    what = "images" if "file" in frame else "beats"
    view = Table(title=f"{len(frame):,} {what} predicted")
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
