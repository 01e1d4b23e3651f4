"""Loading trained models back: from a Lightning checkpoint or an MLflow run."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ecg_experiments.errors import ConfigError, DataError, first_sentence
from ecg_experiments.evaluation.seen import SeenSamples
from ecg_experiments.inputs import InputSpec
from ecg_experiments.io import readable_file
from ecg_experiments.models.heads import beat_feature_prefixes, output_prefixes

log = logging.getLogger(__name__)

ENSEMBLE_KEY = "ecg_ensemble"  # the entry of an ensemble's checkpoint naming its members


@dataclass
class TrainedModel:
    """A backbone with its weights, the config it was trained with, its class names and the
    description of its input."""

    net: nn.Module
    config: DictConfig
    class_names: list[str]
    checkpoint: Path
    history: list[dict]
    input: InputSpec
    seen: SeenSamples | None = None  # the samples it was fit and validated on

    def record_only_reason(self) -> str | None:
        """Why the model's beats can only be cut from whole records (not read as rows of a
        beats CSV), or None. The stored recipe says which of its options make a beat depend
        on its record beyond the beat itself (`record_only_options` of its class)."""
        from ecg_experiments.data.segment import describe_record_only

        recipe = (self.config.get("data") or {}).get("recipe")
        if not recipe or "_target_" not in recipe:
            return None  # trained on ready-cut beats: a CSV holds what it was fit on
        try:
            built = instantiate(recipe)
        except Exception as err:  # hydra wraps the recipe's own ValueError / ConfigError
            raise DataError(f"{self.checkpoint}: its data.recipe ({recipe.get('_target_')}) "
                            f"cannot be rebuilt ({first_sentence(err)}); expected a recipe "
                            "of ecg_experiments.data.segment") from err
        options = describe_record_only(built)
        return None if options is None else (
            f"its beats depend on their whole record, which a ready-cut beat cannot carry: "
            f"{options}")


def check_finite(state: dict, path: Path) -> None:
    """A DataError naming the first tensor of `state` that holds NaN or infinity: such
    weights make every prediction NaN, silently."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and \
                not bool(torch.isfinite(value).all()):
            raise DataError(f"{path}: tensor {key} holds NaN or infinite values; expected "
                            "finite weights (was the training diverging?)")


def spec_from_config(config: DictConfig, class_names: list[str]) -> InputSpec:
    """The input description of a checkpoint written before checkpoints carried one."""
    from ecg_experiments.data.beat_features import rr_feature_names

    data, model = config.data, config.model
    if model.get("input_kind") == "image":
        return InputSpec("image", tuple(class_names), image_size=int(model.input_size),
                         channels=int(data.get("channels", 3)), mean=tuple(data.mean),
                         std=tuple(data.std))
    recipe = data.get("recipe") or {}
    rate = recipe.get("rate") or data.get("rate") or 125.0
    return InputSpec("signal", tuple(class_names), signal_length=int(data.signal_length),
                     rate=float(rate),
                     features=rr_feature_names(recipe.get("rr_context") or 0,
                                               bool(recipe.get("template_features")),
                                               recipe.get("rhythm_beats") or 0)
                     if data.get("rr_features") else ())


def load_trained_model(path: str | os.PathLike) -> TrainedModel:
    """Rebuild the network of an ecg-experiments checkpoint and load its weights.

    Loads with `torch.load(weights_only=True)`: a checkpoint cannot run code on load.
    """
    path = readable_file(path, "a checkpoint written by `python -m ecg_experiments.train` "
                         "(.ckpt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise DataError(
            f"{path}: not a loadable PyTorch checkpoint ({first_sentence(err)}); expected a "
            "checkpoint written by `python -m ecg_experiments.train`"
        ) from err
    if not isinstance(checkpoint, dict) or "ecg_config" not in checkpoint:
        raise DataError(
            f"{path}: not an ecg-experiments checkpoint (no 'ecg_config' entry); expected a "
            "checkpoint written by `python -m ecg_experiments.train`"
        )
    try:
        config = OmegaConf.create(checkpoint["ecg_config"])
        # the checkpoint holds every weight: no ImageNet download or local weights file needed
        net = instantiate(config.model.net, **({"pretrained": None}
                                                if "pretrained" in config.model.net else {}))
        state = {
            key.removeprefix("net."): value
            for key, value in checkpoint["state_dict"].items()
            if key.startswith("net.")
        }
    except Exception as err:  # a damaged or foreign config: any library's error type
        raise DataError(
            f"{path}: its stored model config cannot be rebuilt ({first_sentence(err)}); "
            "expected a checkpoint written by `python -m ecg_experiments.train`"
        ) from err
    check_finite(state, path)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise DataError(f"{path}: weights do not fit the model in its config ({err})") from err
    net.eval()
    class_names = list(checkpoint.get("ecg_class_names") or config.data.class_names)
    stored = checkpoint.get("ecg_input")
    return TrainedModel(
        net=net,
        config=config,
        class_names=class_names,
        checkpoint=path,
        history=list(checkpoint.get("ecg_history", [])),
        input=(InputSpec.from_dict(stored) if stored
               else spec_from_config(config, class_names)),
        seen=SeenSamples.from_checkpoint(checkpoint.get("ecg_seen")),
    )


def checkpoint_from_run(run_id: str, tracking_uri: str, download_dir: str | None = None) -> Path:
    """Download the best checkpoint logged with an MLflow run (tag `model.checkpoint`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ConfigError(f"run_id={run_id}: no such MLflow run in {tracking_uri}") from err
    artifact = run.data.tags.get("model.checkpoint")
    if not artifact:
        raise ConfigError(
            f"run_id={run_id}: the run logged no checkpoint (tag model.checkpoint is missing); "
            "was it trained with logger=mlflow and report.log_model=true?"
        )
    target = download_dir or tempfile.mkdtemp(prefix="ecg-ckpt-")
    return Path(client.download_artifacts(run_id, artifact, target))


def resolve_trained_model(
    ckpt: str | None, run_id: str | None, tracking_uri: str
) -> tuple[TrainedModel, str | None]:
    """The model named by exactly one of `ckpt` (a path) or `run_id` (an MLflow run)."""
    if bool(ckpt) == bool(run_id):
        raise ConfigError("give exactly one of ckpt=<checkpoint path> or run_id=<MLflow run id>")
    path = Path(ckpt) if ckpt else checkpoint_from_run(str(run_id), tracking_uri)
    return load_trained_model(path), run_id


@dataclass
class InitReport:
    """What `init_from` copied and what kept its fresh initialisation."""

    source: Path
    loaded: list[str]
    reinitialised: list[str]  # tensors kept fresh (output layers: see matched_classes)
    matched_classes: list[str]  # classes whose output rows came from the source, by name


def _head_rows_by_name(
    net: nn.Module, state: dict[str, torch.Tensor], source_classes: list[str] | None,
    class_names: list[str], class_map: dict[str, str] | None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The output layers' tensors of `net` with each class's row taken from the source row of
    the same class name (via `class_map`: {new name: source name}); new classes keep their
    fresh rows. Returns the tensors and the classes that were copied."""
    class_map = dict(class_map or {})
    source_index = {name: k for k, name in enumerate(source_classes or [])}
    pairs = [(j, source_index.get(class_map.get(name, name))) for j, name in
             enumerate(class_names)]
    pairs = [(j, i) for j, i in pairs if i is not None]
    if not pairs:  # no class in common: the output layers keep their fresh initialisation
        return {}, []
    own, tensors = net.state_dict(), {}
    for prefix in output_prefixes(net):
        for key in (f"{prefix}weight", f"{prefix}bias"):
            if key not in own or key not in state:
                continue
            fresh, old = own[key].clone(), state[key]
            if fresh.shape[1:] != old.shape[1:] or old.shape[0] != len(source_index):
                continue
            for j, i in pairs:
                fresh[j] = old[i]
            tensors[key] = fresh
    return tensors, [class_names[j] for j, _ in pairs] if tensors else []


def _without_other_features(fits: dict, net: nn.Module, checkpoint: object,
                            feature_names: tuple[str, ...] | None, source: str) -> dict:
    """`fits` less the feature-reading layers when the source's per-beat features (its
    stored input description) are not this run's, by name and order."""
    prefixes = beat_feature_prefixes(net)
    stored = checkpoint.get("ecg_input") if isinstance(checkpoint, dict) else None
    if not prefixes or feature_names is None or not isinstance(stored, dict):
        return fits  # nothing reads features, or a checkpoint from before input descriptions
    theirs = tuple(stored.get("features") or ())
    dropped = [k for k in fits if k.startswith(prefixes)]
    if theirs == tuple(feature_names) or not dropped:
        return fits
    log.warning("model.init_from=%s: the source took the per-beat features %s, this run %s: "
                "the layers reading them (%s) keep their fresh weights", source,
                ", ".join(theirs) or "(none recorded)", ", ".join(feature_names) or "none",
                ", ".join(p.rstrip(".") for p in prefixes))
    return {k: v for k, v in fits.items() if k not in dropped}


def _check_leads(checkpoint: object, leads: tuple[str, ...] | None, source: str) -> None:
    """Channels meet by lead name: a source of as many channels as this run reading other
    leads, or the same in another order, is refused (its input weights would load by
    position); another count re-initialises the input layer by shape."""
    stored = checkpoint.get("ecg_input") if isinstance(checkpoint, dict) else None
    if leads is None or not isinstance(stored, dict):
        return
    theirs = tuple(stored.get("leads") or ())
    if theirs != tuple(leads) and max(1, len(theirs)) == max(1, len(leads)) > 1:
        raise ConfigError(f"model.init_from={source}: the source reads leads "
                          f"[{', '.join(theirs)}], this run [{', '.join(leads)}]; channels "
                          "meet by lead name: set data.channels in the source's order")


def init_from(net: nn.Module, source: str, tracking_uri: str,
              class_names: list[str] | None = None,
              class_map: dict[str, str] | None = None,
              feature_names: tuple[str, ...] | None = None,
              leads: tuple[str, ...] | None = None) -> InitReport:
    """Fine-tuning start: copy into `net` every tensor of a previous model whose name and shape
    match, except the output layer(s) (models/heads.py), whose rows are classes: there each
    class gets the row of the source class with the same name (`class_map` for deliberate
    renames, {new name: source name}); a class the source lacks keeps its fresh row.

    `source` is an ecg-experiments checkpoint path or an MLflow run id (its best checkpoint).
    The layers that read per-beat features are copied only when the source took the same
    features in the same order (`feature_names`, this run's; by name, as classes): features
    of the same count but another meaning would otherwise load silently.
    """
    path = Path(source)
    if path.exists():
        readable_file(path, "model.init_from: a checkpoint file (.ckpt) or an MLflow run id")
    elif path.suffix in (".ckpt", ".pt", ".pth") or "/" in source:
        raise ConfigError(f"model.init_from={source}: no such checkpoint file")
    else:
        path = checkpoint_from_run(source, tracking_uri)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: not a loadable PyTorch checkpoint ({first_sentence(err)}); "
                        "expected a checkpoint of ecg-experiments or a state dict") from err
    if isinstance(checkpoint, dict) and ENSEMBLE_KEY in checkpoint:
        raise ConfigError(f"model.init_from={source}: {path} is an ensemble of "
                          f"{len(checkpoint[ENSEMBLE_KEY])} models, not one network to "
                          "fine-tune; start from one of its members (ensemble.members in its "
                          "config names them)")
    _check_leads(checkpoint, leads, source)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a checkpoint with a state_dict")
    state = {key.removeprefix("net."): value for key, value in state.items()}
    check_finite(state, path)
    own = net.state_dict()
    outputs = output_prefixes(net)
    fits = {k: state[k] for k, v in own.items()
            if k in state and state[k].shape == v.shape and not k.startswith(outputs)}
    fits = _without_other_features(fits, net, checkpoint, feature_names, source)
    if not fits:
        raise DataError(f"model.init_from={source}: no tensor of {path} fits "
                        f"{type(net).__name__} (another architecture?)")
    source_classes = checkpoint.get("ecg_class_names") if isinstance(checkpoint, dict) else None
    head, matched = _head_rows_by_name(net, state, source_classes,
                                       list(class_names or []), class_map)
    net.load_state_dict({**own, **fits, **head})
    report = InitReport(path, sorted(fits),
                        sorted(k for k in own if k not in fits and k not in head), matched)
    log.info("model.init_from: %d of %d tensors loaded from %s; output rows copied by class "
             "name: %s", len(fits), len(own), path, ", ".join(matched) or "none")
    if report.reinitialised:
        log.warning("model.init_from: re-initialised (no tensor of that name and shape in the "
                    "source): %s", ", ".join(report.reinitialised))
    return report
