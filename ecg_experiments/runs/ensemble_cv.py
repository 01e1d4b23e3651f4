"""An ensemble's cross-validation estimate: the seeds of a repeated cross-validation averaged
fold by fold, each fold's ensemble scored on that fold's validation records.

Fold k's members (one per seed) were fit on the same training records and validated on the
same held-out records (`repeat.seeds` pins the data seeds): checked by their data configs and
by the validation samples of each fold's `split.csv` against the split rebuilt here, so the
ensemble of fold k scores records none of its members trained on. Each member is its fold's
kept checkpoint (runs/members.py): the last epoch where the run monitored nothing (as
`experiment=accuracy_interpatient`, whose epoch count is the CV-chosen one), else the epoch
its own validation records chose, which makes both figures optimistic alike. The members'
own scores on the same samples from the same checkpoints are computed in the same pass: the
gain is measured on equal terms, but the figures are not a `cv/at_epochs` mean of another
run's table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf, open_dict
from torch.utils.data import DataLoader

from ecg_experiments.config import build
from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.metrics import classification_metrics
from ecg_experiments.inputs import RemapLabels, match_classes
from ecg_experiments.models.checkpoint import TrainedModel, load_trained_model
from ecg_experiments.models.ensemble import check_members
from ecg_experiments.runs.fits import FitFolder
from ecg_experiments.runs.members import Member

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
# the columns of the table and of the summary: what inter-patient studies compare
SUMMARY = ("val/acc", "val/f1_macro", "val/recall_S", "val/precision_S", "val/recall_V",
           "val/precision_V")


# data options that do not decide which records a fold holds (the augmentation's seed follows
# the run's seed by design)
NOT_THE_SPLIT = ("augment", "batch_size", "eval_batch_size", "num_workers")


def _same_data(models: Sequence[TrainedModel], fold: int) -> dict:
    data = [{k: v for k, v in OmegaConf.to_container(m.config.data, resolve=True).items()
             if k not in NOT_THE_SPLIT} for m in models]
    for model, other in zip(models[1:], data[1:], strict=True):
        if other != data[0]:
            differ = sorted(k for k in set(other) | set(data[0]) if other.get(k) != data[0].get(k))
            raise ConfigError(
                f"fold {fold}: {model.checkpoint} was trained on other data than "
                f"{models[0].checkpoint} (data.{', data.'.join(differ)} differ); the seeds of "
                "a fold must share its records (repeat.seeds pins the data seeds)")
    return OmegaConf.to_container(models[0].config.data, resolve=True)


def _check_validation_samples(datamodule: object, members: Sequence[Member], fold: int) -> None:
    """The validation samples rebuilt now are those each member was validated on (its fold
    folder's split.csv), or the estimate would score records a member trained on."""
    frame = datamodule.sample_frame("val")
    if frame is None:
        raise ConfigError(f"fold {fold}: the data gives no sample ids, so the validation "
                          "samples cannot be checked against those the members were "
                          "validated on; no CV estimate is made for it")
    now = set(frame["sample_id"].astype(str))
    for member in members:
        folder = member.checkpoint.parent.parent
        fitted = FitFolder(folder).finished()
        split = fitted.split if fitted is not None else None
        if split is None or not {"split", "sample_id"} <= set(split.columns):
            raise ConfigError(f"fold {fold}: {folder / 'split.csv'} (the split {member.source} "
                              "was fit on, with sample ids) is missing; expected the fold "
                              "folder of python -m ecg_experiments.train")
        then = set(split.loc[split["split"] == "val", "sample_id"].astype(str))
        if then != now:
            raise ConfigError(
                f"fold {fold}: the validation samples rebuilt now ({len(now):,}) are not those "
                f"{member.source} was validated on ({len(then):,}, {folder}/split.csv): has "
                "the data changed since (records added, files replaced)? Its CV estimate "
                "would score samples a member trained on")


def _probabilities(net: torch.nn.Module, loader: DataLoader) -> tuple[torch.Tensor,
                                                                       torch.Tensor]:
    net.eval()
    probs, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            probs.append(net(x).float().softmax(dim=-1))
            targets.append(y)
    return torch.cat(probs), torch.cat(targets)


def _scores(probs: torch.Tensor, targets: torch.Tensor, class_names: list[str]
            ) -> dict[str, float]:
    metrics = classification_metrics(class_names, "val", auroc=False)
    metrics.update(probs, targets)
    return {k: float(v) for k, v in metrics.compute().items()}


def score_fold(fold: int, members: Sequence[Member]) -> list[dict]:
    """Rows of fold `fold`: each member and their ensemble on the fold's validation split."""
    models = [load_trained_model(m.checkpoint) for m in members]
    class_index = check_members(models)
    data = OmegaConf.create(_same_data(models, fold))
    with open_dict(data):
        if "balance" in data:  # scoring reads every sample once
            data.balance = "none"
    if data.get("fold") is None:
        raise ConfigError(f"fold {fold}: {models[0].checkpoint} was not fit on a fold "
                          "(its data.fold is empty)")
    datamodule = build(data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    _check_validation_samples(datamodule, members, fold)
    names = list(models[0].class_names)
    lookup = match_classes(names, datamodule.class_names, None, f"fold {fold}")
    loader = DataLoader(datamodule.evaluation_dataset("val"),
                        batch_size=datamodule.eval_batch_size, shuffle=False,
                        collate_fn=RemapLabels(lookup, datamodule.collate_fn))
    rows, mean = [], None
    for member, model, index in zip(members, models, class_index, strict=True):
        probs, targets = _probabilities(model.net, loader)
        probs = probs[:, index]  # the member's outputs in the ensemble's class order
        mean = probs if mean is None else mean + probs
        rows.append({"fold": fold, "model": member.source, **_scores(probs, targets, names)})
    rows.append({"fold": fold, "model": ENSEMBLE,
                 **_scores(mean / len(models), targets, names),
                 "members": len(models), "samples": len(targets)})
    log.info("fold %d: %d members, %d validation samples: ensemble val/f1_macro %.4f, "
             "members %s", fold, len(models), len(targets), rows[-1]["val/f1_macro"],
             " ".join(f"{r['val/f1_macro']:.4f}" for r in rows[:-1]))
    return rows


def seed_of(source: str) -> str:
    """`seed42/fold3` -> `seed42`."""
    return source.split("/", 1)[0]


def summarise(table: pd.DataFrame) -> dict[str, float]:
    """`cv_ensemble/<metric>_mean|_std` (fold mean and sd of the ensemble),
    `cv_members/<metric>_mean|_std` (mean and sd over seeds of each seed's fold mean, the
    mean single model) and `cv_ensemble/gain/<metric>` (their difference)."""
    metrics = [c for c in table if c.startswith("val/")]
    ensemble = table[table["model"] == ENSEMBLE][metrics]
    members = table[table["model"] != ENSEMBLE]
    per_seed = members.assign(seed=members["model"].map(seed_of)).groupby("seed")[metrics].mean()
    out: dict[str, float] = {}
    for metric in metrics:
        name = metric.removeprefix("val/")
        out[f"cv_ensemble/val/{name}_mean"] = float(ensemble[metric].mean())
        out[f"cv_ensemble/val/{name}_std"] = float(ensemble[metric].std(ddof=1))
        out[f"cv_members/val/{name}_mean"] = float(per_seed[metric].mean())
        out[f"cv_members/val/{name}_std"] = float(per_seed[metric].std(ddof=1)) \
            if len(per_seed) > 1 else float("nan")
        out[f"cv_ensemble/gain/val/{name}"] = (out[f"cv_ensemble/val/{name}_mean"]
                                               - out[f"cv_members/val/{name}_mean"])
    return {k: v for k, v in out.items() if not np.isnan(v)}


def cross_validate_ensemble(folds: dict[int, list[Member]]) -> tuple[pd.DataFrame,
                                                                       dict[str, float]]:
    """Every fold's members and ensemble scored (`score_fold`); the table and its summary."""
    rows = [row for fold, members in sorted(folds.items())
            for row in score_fold(fold, members)]
    table = pd.DataFrame(rows)
    return table, summarise(table)
