"""Evaluate a saved model on a holdout set and track it as a new MLflow run.

`python -m ecg_experiments.evaluate ckpt=<path> | run_id=<id> [data=...] [holdout=test|all]
[class_map={data class: model class}]`
Noise robustness of a signal model: `report.noise_snr_db=[24,12,6,0]` (`report.noise=...`).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf, open_dict

from ecg_experiments.config import build, group_choice
from ecg_experiments.errors import ConfigError
from ecg_experiments.models.checkpoint import TrainedModel, resolve_trained_model
from ecg_experiments.runs.score import evaluate_model, every_sample_in_test
from ecg_experiments.tracking import choice_tags, local_store_exists, run_id_in

log = logging.getLogger(__name__)


def data_source(data: Any) -> tuple:
    """What a data config reads, apart from how it splits it: its DataModule and its
    databases, folder or files (by name, so a copy of the data elsewhere is the same)."""
    def name(key: str) -> str | None:
        value = data.get(key)
        return Path(str(value)).name if value else None

    databases = data.get("databases") or [data.get("database")]
    source = data.get("source") or {}  # beats drawn as images: which beats, which renderer
    beats = source.get("beats") or {}
    drawn = (source.get("_target_"), (source.get("renderer") or {}).get("_target_"),
             tuple(map(str, beats.get("databases") or [beats.get("database")])))
    return (data.get("_target_"), tuple(map(str, databases)), name("root"), name("train_file"),
            name("test_file"), drawn)


def explicit_data_overrides() -> list[str]:
    """The `data.<key>` options given on the command line (Hydra's task overrides)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    return [k.removeprefix("data.") for k in keys if k.startswith("data.")]


def data_for_model(cfg: DictConfig, model: TrainedModel,
                   explicit: list[str] | None = None) -> DictConfig:
    """The data config to evaluate `model` on: its own run's data, or the `data=...` given,
    composed with the trained model's `model` node (so `${model.input_size}` and the like
    resolve to the model's) and set to give the model's input (`model.input`).

    `data=<the model's own data option>` (the same DataModule reading the same databases,
    folder or files) is the model's own data config, with its own split (kind, seed,
    records), plus only the `data.<key>` options given on the command line (`explicit`,
    default: Hydra's overrides): no new split is drawn."""
    trained = model.config.get("data")
    if not cfg.get("data"):
        data = OmegaConf.create(OmegaConf.to_container(trained, resolve=True))
    else:
        data = OmegaConf.merge({"model": model.config.model}, cfg).data
    if cfg.get("data") and trained is not None and data_source(trained) == data_source(data):
        own = OmegaConf.create(OmegaConf.to_container(trained, resolve=True))
        given = explicit_data_overrides() if explicit is None else explicit
        with open_dict(own):
            for key in given:
                OmegaConf.update(own, key, OmegaConf.select(data, key), force_add=True)
        log.info("data=%s is the model's own data: its own split (%s)%s",
                 group_choice("data"), ", ".join(f"{k}={own.get(k)}" for k in
                                                 ("split", "seed") if k in own),
                 f", with {', '.join(given)} as given" if given else "")
        data = own
    spec = model.input
    with open_dict(data):
        if "balance" in data:  # scoring reads every sample once: no rebalanced rows
            data.balance = "none"
        if cfg.holdout == "all" and data.get("folds") is not None:  # every sample, no fold
            data.folds = data.fold = None
    if cfg.holdout == "all":
        every_sample_in_test(data)
    with open_dict(data):
        if spec.kind == "image":
            given_spec = spec.to_dict()
            for key in ("image_size", "channels", "mean", "std"):
                if key in data:
                    data[key] = given_spec[key]
            draw_as_trained(data, model)
        else:
            _cut_beats_as_trained(data, model)
    return data


def draw_as_trained(data: DictConfig, model: TrainedModel) -> None:
    """Beats drawn as images for a model trained on drawn beats are drawn as it was trained
    (its renderer and beat recipe): the image size alone does not say how they were drawn."""
    trained = (model.config.get("data") or {}).get("source")
    given = data.get("source")
    if not trained or not given:
        return
    for key in ("renderer", "beats.recipe"):
        theirs, ours = OmegaConf.select(trained, key), OmegaConf.select(given, key)
        if theirs is None or ours is None:
            continue
        theirs = OmegaConf.to_container(theirs, resolve=True)
        if OmegaConf.to_container(ours, resolve=True) != theirs:
            log.info("data.source.%s: the model's (%s) replaces the given one", key,
                     theirs.get("_target_", "").rsplit(".", 1)[-1])
            OmegaConf.update(given, key, theirs, force_add=True)


def _cut_beats_as_trained(data: DictConfig, model: TrainedModel) -> None:
    """Beats of other records (another database) are cut with the recipe the model was
    trained with, and carry its R-R features or not."""
    trained = model.config.get("data") or {}
    reason = model.record_only_reason() if "recipe" not in data else None
    if reason:
        raise ConfigError(f"{group_choice('data')}: gives ready-cut beats, but {reason}; "
                          "evaluate it on records (data=mitbih or data=physionet)")
    if "recipe" in data and "recipe" in trained:
        recipe = OmegaConf.to_container(trained.recipe, resolve=True)
        if OmegaConf.to_container(data.recipe, resolve=True) != recipe:
            log.info("data.recipe: the model's (%s at %s Hz) replaces %s",
                     trained.recipe.get("_target_", "").rsplit(".", 1)[-1],
                     trained.recipe.get("rate"),
                     data.recipe.get("_target_", "").rsplit(".", 1)[-1])
            data.recipe = recipe
    if "recipe" in data:  # the leads of each channel, as trained (none: one lead)
        channels = trained.get("channels")
        if OmegaConf.to_container(data, resolve=True).get("channels") != (
                OmegaConf.to_container(channels, resolve=True) if channels else None):
            log.info("data.channels: the model's (%s) replaces the given ones",
                     list(channels) if channels else "one lead")
            OmegaConf.update(data, "channels", channels, force_add=True)
    spec = model.input
    if "rr_features" in data and bool(data.rr_features) != bool(spec.features):
        log.info("data.rr_features=%s: the model takes %s", bool(spec.features),
                 spec.describe())
        data.rr_features = bool(spec.features)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint (or an MLflow run's model) and report; return the metrics.

    The data is checked against the model's stored input description, and its classes are
    matched to the model's by name (`class_map` for deliberate renames). Samples the model
    was fit or validated on stop it before scoring, unless `allow_seen=true`.
    """
    lookup_uri = cfg.logger.tracking_uri if cfg.get("logger") else cfg.paths.tracking_uri
    model, source_run = resolve_trained_model(cfg.get("ckpt"), cfg.get("run_id"), lookup_uri)
    data_cfg = data_for_model(cfg, model)
    data_option = group_choice("data") if cfg.get("data") else "the model's own data"
    tags = {**choice_tags(), **({"source.run_id": source_run} if source_run else {})}
    make_logger = None
    if cfg.get("logger"):
        name, data_choice = evaluation_run_name(
            model, source_run, lookup_uri,
            choice_tags().get("choice.data") if cfg.get("data") else None)
        if data_choice != "its-data":
            tags.setdefault("choice.data", data_choice)  # the model's own data option
        make_logger = functools.partial(build, cfg.logger,
                                        run_name=cfg.logger.get("run_name") or name)
    return evaluate_model(cfg, model, data_cfg, data_option, Path(cfg.paths.run_dir),
                          make_logger, tags)


def evaluation_run_name(model: TrainedModel, source_run: str | None, lookup_uri: str,
                        data_choice: str | None) -> tuple[str, str]:
    """(`eval-<model run name>-on-<data>`, the data option): the name of the model's run
    where the store knows it (by run id, or the run folder of its checkpoint in a local
    store), else the checkpoint's run folder and file; the data option given, else the
    model's own."""
    run_id = source_run or run_id_in(model.checkpoint.parent.parent)
    # a checkpoint's run is looked up in a local store only: no server is asked for it
    known = source_run is not None or local_store_exists(lookup_uri) is True
    run_name, run_tags = None, {}
    if run_id and known:
        try:
            run = mlflow.MlflowClient(lookup_uri).get_run(run_id)
            run_name, run_tags = run.info.run_name, run.data.tags
        except mlflow.exceptions.MlflowException:  # another store's run: named by its files
            pass
    model_name = run_name or f"{model.checkpoint.parent.parent.name}-{model.checkpoint.stem}"
    data = data_choice or run_tags.get("choice.data") or "its-data"
    return f"eval-{model_name}-on-{data}", data
