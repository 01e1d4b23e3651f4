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

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from ecg_experiments.errors import ConfigError
from ecg_experiments.models.checkpoint import checkpoint_from_run
from ecg_experiments.runs.fits import FitFolder
from ecg_experiments.tracking import check_server, is_remote, local_store_exists, run_id_in

log = logging.getLogger(__name__)
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


def _expected(folder: Path, config_file: str, key: str, prefix: str) -> list[str] | None:
    """The fit folders a driver's saved config promises (`seed<s>` of `repeat.seeds`,
    `fold<k>` of `cv.folds`), or None where no such config was saved."""
    saved = folder / config_file
    if not saved.is_file():
        return None
    cfg = OmegaConf.load(saved)
    if key == "repeat.seeds":
        from ecg_experiments.runs.repeats import check_repeats

        return [f"{prefix}{s}" for s in check_repeats(cfg)]
    folds = OmegaConf.select(cfg, key)
    return [f"{prefix}{k}" for k in range(int(folds))] if folds else None


def _complete(folder: Path, found: list[Path], config_file: str, key: str,
              prefix: str) -> list[Path]:
    """`found` when it holds every fit the driver's config promises, else a ConfigError
    naming the missing ones (a run still going, or stopped: a smaller ensemble otherwise)."""
    expected = _expected(folder, config_file, key, prefix)
    missing = sorted(set(expected or []) - {p.name for p in found})
    if missing:
        raise ConfigError(f"members: {folder} is missing {', '.join(missing)} of its {key}="
                          f"{len(expected)}; finish the run (train ... resume=true) first")
    return found


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
    if not seeds or not any((seed / "cv_config.yaml").is_file() or _numbered(seed, FOLD_DIR)
                            for seed in seeds):
        return None
    seeds = _complete(folder, seeds, "repeat_config.yaml", "repeat.seeds", "seed")
    folds: dict[int, list[Member]] = {}
    for seed in seeds:
        fits = _complete(seed, _numbered(seed, FOLD_DIR), "cv_config.yaml", "cv.folds", "fold")
        for fold in fits:
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
    if is_remote(tracking_uri):
        check_server(tracking_uri)  # fail fast, not after MLflow's minutes of retries
    try:
        status = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.status
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise ConfigError(f"members: {folder}: its run {run_id} could not be read from "
                              f"{tracking_uri} ({err.error_code})") from err
        return folder  # another store's run: its folder is all there is
    if status != "FINISHED":
        raise ConfigError(f"members: {folder}: its run {run_id} is {status}, not FINISHED; "
                          "finish it (train ... resume=true) or leave it out")
    return folder


def folder_members(folder: Path, tracking_uri: str) -> list[Member]:
    """The models of a fit's folder or of a driver's (seeds or folds)."""
    if (folder / "checkpoints").is_dir():
        return [Member(str(folder), kept_checkpoint(_finished_run(folder, tracking_uri)))]
    seeds = _numbered(folder, SEED_DIR)
    fits = (_complete(folder, seeds, "repeat_config.yaml", "repeat.seeds", "seed") if seeds
            else _complete(folder, _numbered(folder, FOLD_DIR), "cv_config.yaml", "cv.folds",
                           "fold"))
    if not fits:
        raise ConfigError(f"members: {folder} holds no checkpoints/, seed<s>/ or fold<k>/ "
                          "folder; expected a run folder of python -m ecg_experiments.train")
    members = []
    for fit in fits:
        if _numbered(fit, FOLD_DIR):
            raise ConfigError(f"members: {folder} is a repeated cross-validation: name it alone "
                              "(members=<its folder>) for its CV estimate, fold by fold")
        members.append(Member(f"{folder.name}/{fit.name}", kept_checkpoint(_finished(fit))))
    return members


def run_members(run_id: str, tracking_uri: str, download_dir: Path) -> list[Member]:
    """The model a run logged, or its child runs' models (a parent run): every seed of a
    `repeat.seeds` parent or none; the finished trials with a model of another parent (a
    sweep), the others named in the log."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ConfigError(f"members: {run_id} is no checkpoint file, run folder or MLflow "
                          f"run in {tracking_uri}") from err
    def download(rid: str) -> Path:
        return checkpoint_from_run(rid, tracking_uri, str(download_dir / rid))

    if run.data.tags.get("model.checkpoint"):
        return [Member(run_id, download(run_id))]
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
    if seeds and (short or len(seeds.split(",")) != len(children)):
        raise ConfigError(
            f"members: run {run_id} has {len(children)} child runs for repeat.seeds={seeds}"
            + (f"; not finished with a model: {', '.join(short)}" if short else "")
            + "; finish them (train ... resume=true) or name the finished ones by run id")
    if short:  # a sweep: its pruned or failed trials are not models
        log.warning("members: run %s: %d of %d child runs left out (not finished with a "
                    "model): %s", run_id, len(short), len(children), ", ".join(short))
    return [Member(c.info.run_id, download(c.info.run_id)) for c in children
            if c.info.status == "FINISHED" and c.data.tags.get("model.checkpoint")]


def resolve_members(entries: Sequence[str], tracking_uri: str,
                    download_dir: Path) -> list[Member]:
    """Every member named by `entries` (files, folders, run ids), in the order given; a run's
    checkpoint is downloaded under `download_dir/<run id>`. The same model named twice is
    refused once the models are loaded (models/ensemble.py: by their weights)."""
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
            members.extend(run_members(str(entry), tracking_uri, download_dir))
    return members
