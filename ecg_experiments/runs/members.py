"""Which trained models an ensemble is made of: checkpoints found from what a user names.

`members=[...]` entries are checkpoint files, run folders or MLflow run ids:
- a checkpoint file (`.ckpt`) is one member;
- a fit's folder (holding `checkpoints/`) gives its kept checkpoint (`kept_checkpoint`);
- a driver's folder gives every fit in it: `seed<s>/` of `repeat.seeds`, `fold<k>/` of
  `cv.folds`; a folder of seeds that are cross-validations is a repeated cross-validation
  (`repeated_cv`), whose folds are ensembled fold by fold (runs/ensemble_cv.py);
- a run id gives the checkpoint the run logged (tag `model.checkpoint`), or, for a parent
  run (`repeat.seeds`, a sweep), its children's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ecg_experiments.errors import ConfigError
from ecg_experiments.io import sha256_file
from ecg_experiments.models.checkpoint import checkpoint_from_run
from ecg_experiments.runs.fits import FitFolder
from ecg_experiments.tracking import local_store_exists, run_id_in

SEED_DIR = re.compile(r"seed(-?\d+)$")
FOLD_DIR = re.compile(r"fold(\d+)$")


@dataclass(frozen=True)
class Member:
    """One member: what the user named it by (`source`) and its checkpoint file."""

    source: str
    checkpoint: Path


def kept_checkpoint(folder: Path) -> Path:
    """The checkpoint a fit kept: ModelCheckpoint's one `epoch_*.ckpt` (the best by the
    monitored metric, the last epoch when the run monitored none; what the fit tested and
    logged). `last.ckpt` is not taken: it may hold the middle of an epoch."""
    checkpoints = Path(folder) / "checkpoints"
    kept = sorted(checkpoints.glob("epoch_*.ckpt"))
    if len(kept) == 1:
        return kept[0]
    if kept:
        raise ConfigError(f"{folder}: {len(kept)} kept checkpoints "
                          f"({', '.join(p.name for p in kept)}); name the one to use "
                          "(members=[<its path>, ...])")
    raise ConfigError(f"{folder}: no checkpoint in {checkpoints}; expected the folder of a "
                      "finished fit (python -m ecg_experiments.train)")


def _numbered(folder: Path, pattern: re.Pattern) -> list[Path]:
    found = [(int(m.group(1)), p) for p in Path(folder).iterdir()
             if p.is_dir() and (m := pattern.match(p.name))]
    return [p for _, p in sorted(found, key=lambda pair: pair[0])]


def _finished(fit: Path) -> Path:
    if FitFolder(fit).finished() is None:
        raise ConfigError(f"{fit}: this fit has not finished (no fitted.json); finish it "
                          "(train ... resume=true) or leave it out")
    return fit


def repeated_cv(folder: Path) -> dict[int, list[Member]] | None:
    """For the folder of a repeated cross-validation (`repeat.seeds` with `cv.folds`): each
    fold's models, one per seed; None for any other folder. Every seed must hold the same
    folds."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    seeds = _numbered(folder, SEED_DIR)
    if not seeds or not all(_numbered(seed, FOLD_DIR) for seed in seeds):
        return None
    folds: dict[int, list[Member]] = {}
    for seed in seeds:
        for fold in _numbered(seed, FOLD_DIR):
            k = int(FOLD_DIR.match(fold.name).group(1))
            folds.setdefault(k, []).append(
                Member(f"{seed.name}/{fold.name}", kept_checkpoint(_finished(fold))))
    counts = {k: len(v) for k, v in folds.items()}
    if len(set(counts.values())) != 1:
        raise ConfigError(f"{folder}: its seeds hold different folds "
                          f"({', '.join(f'fold{k}: {n} seeds' for k, n in counts.items())}); "
                          "expected every seed to finish every fold")
    return folds


def _finished_run(folder: Path, tracking_uri: str) -> Path:
    """A single fit's folder whose MLflow run (where it has one in a store at hand) finished:
    a running or failed fit's best-so-far checkpoint is not a member."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id = run_id_in(folder)
    if run_id is None or local_store_exists(tracking_uri) is False:
        return folder
    try:
        status = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.status
    except MlflowException:  # another store's run: its folder is all there is
        return folder
    if status != "FINISHED":
        raise ConfigError(f"members: {folder}: its run {run_id} is {status}, not FINISHED; "
                          "finish it (train ... resume=true) or leave it out")
    return folder


def folder_members(folder: Path, tracking_uri: str) -> list[Member]:
    """The models of a fit's folder or of a driver's (seeds or folds)."""
    if (folder / "checkpoints").is_dir():
        return [Member(str(folder), kept_checkpoint(_finished_run(folder, tracking_uri)))]
    fits = _numbered(folder, SEED_DIR) or _numbered(folder, FOLD_DIR)
    if not fits:
        raise ConfigError(f"members: {folder} holds no checkpoints/, seed<s>/ or fold<k>/ "
                          "folder; expected a run folder of python -m ecg_experiments.train")
    members = []
    for fit in fits:
        if _numbered(fit, FOLD_DIR):
            raise ConfigError(f"members: {folder} is a repeated cross-validation; its folds "
                              "are ensembled fold by fold when it is the only member given")
        members.append(Member(f"{folder.name}/{fit.name}", kept_checkpoint(_finished(fit))))
    return members


def run_members(run_id: str, tracking_uri: str) -> list[Member]:
    """The model a run logged, or its child runs' models (a parent run)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ConfigError(f"members: {run_id} is no checkpoint file, run folder or MLflow "
                          f"run in {tracking_uri}") from err
    if run.data.tags.get("model.checkpoint"):
        return [Member(run_id, checkpoint_from_run(run_id, tracking_uri))]
    children = client.search_runs([run.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{run_id}'",
                                  order_by=["attributes.start_time ASC"])
    logged = [c for c in children if c.data.tags.get("model.checkpoint")]
    if not logged:
        raise ConfigError(
            f"members: run {run_id} and its {len(children)} child runs logged no model (tag "
            "model.checkpoint); the folds of a cross-validation log none: give its run "
            "folder instead (members=[<outputs/.../run folder>])")
    # every child, or none: a failed, running or unlogged seed would shrink the ensemble
    short = [f"{c.info.run_id} ({c.info.status}"
             + (")" if c.data.tags.get("model.checkpoint") else ", no model logged)")
             for c in children
             if c.info.status != "FINISHED" or not c.data.tags.get("model.checkpoint")]
    seeds = run.data.tags.get("repeat.seeds")
    if short or (seeds and len(seeds.split(",")) != len(children)):
        raise ConfigError(
            f"members: run {run_id} has {len(children)} child runs"
            + (f" for repeat.seeds={seeds}" if seeds else "")
            + (f"; not finished with a model: {', '.join(short)}" if short else "")
            + "; finish them (train ... resume=true) or name the finished ones by run id")
    return [Member(c.info.run_id, checkpoint_from_run(c.info.run_id, tracking_uri))
            for c in children]


def resolve_members(entries: Sequence[str], tracking_uri: str) -> list[Member]:
    """Every member named by `entries` (files, folders, run ids), in the order given."""
    members: list[Member] = []
    for entry in entries:
        path = Path(str(entry))
        if path.is_file():
            members.append(Member(str(path), path))
        elif path.is_dir():
            members.extend(folder_members(path, tracking_uri))
        elif path.suffix in (".ckpt", ".pt", ".pth") or "/" in str(entry):
            raise ConfigError(f"members: {entry}: no such checkpoint file or folder")
        else:
            members.extend(run_members(str(entry), tracking_uri))
    # by content: a run id's download, its folder and its file are the same model
    digests = [sha256_file(m.checkpoint) for m in members]
    twice = sorted({m.source for m, d in zip(members, digests, strict=True)
                    if digests.count(d) > 1})
    if twice:
        raise ConfigError(f"members: the same model named more than once ({', '.join(twice)}); "
                          "each model counts once in an ensemble")
    return members
