"""Ensembles as models: trained networks whose averaged class probabilities are one model.

An ensemble is stored as an ordinary ecg-experiments checkpoint: its `model.net` config
builds an `EnsembleNet` of the members' own network configs and its state dict holds every
member's weights, so `evaluate`, `predict`, `explain`, `export`, `also_test` and the MLflow
model load it as they load any model. Members meet by name: their classes (in any order)
and their input descriptions must agree, or `check_members` says which differs.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.seen import SeenSamples
from ecg_experiments.inputs import InputSpec
from ecg_experiments.io import atomic_path
from ecg_experiments.models.checkpoint import ENSEMBLE_KEY, TrainedModel
from ecg_experiments.models.classifier import ClassifierModule


class EnsembleNet(nn.Module):
    """The mean of the members' class probabilities (softmax), returned as its logarithm:
    softmax of the output gives the mean back exactly, so every reader of logits (loss,
    metrics, predict, ONNX) sees one classifier. `class_index[i][j]` is the output of member
    i that holds class j of the ensemble (classes matched by name when it was built)."""

    def __init__(self, members: Sequence[nn.Module],
                 class_index: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        index = [list(map(int, i)) for i in class_index] if class_index else None
        if index is not None and len(index) != len(self.members):
            raise ConfigError(f"class_index holds {len(index)} rows for {len(self.members)} "
                              "members; expected one per member")
        self.permuted = index is not None and any(i != list(range(len(i))) for i in index)
        for k, rows in enumerate(index or []):
            self.register_buffer(f"class_index{k}", torch.tensor(rows), persistent=False)

    def member_outputs(self, k: int, logits: torch.Tensor) -> torch.Tensor:
        """Member k's outputs in the ensemble's class order."""
        if not self.permuted:
            return logits
        return logits.index_select(-1, getattr(self, f"class_index{k}"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([
            self.member_outputs(k, member(x).float()).softmax(dim=-1)
            for k, member in enumerate(self.members)]).mean(dim=0)
        return probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()


# the data options that make a model's input beyond its stored description: how beats are
# cut and cleaned (a template-relative beat has the length of a plain one), from which lead,
# and how beats are drawn as images. A member without one (ready-cut beats of a CSV, a plain
# image folder) differs from a member with it: nothing says its inputs were made alike.
INPUT_MAKING = ("recipe", "leads", "lead", "channels", "missing_lead", "source.renderer",
                "source.beats.recipe", "source.beats.leads", "source.beats.missing_lead")


def _spec_without_classes(spec: InputSpec) -> dict:
    return {k: v for k, v in spec.to_dict().items() if k != "class_names"}


def _recipe_params(recipe: object) -> object:
    """A stored recipe as its class sees it (`params()`: the defaults of options added since
    filled in, so an older run's recipe equals a newer one that cuts the same beats)."""
    if not isinstance(recipe, dict) or "_target_" not in recipe:
        return recipe
    try:
        return instantiate(recipe).params()
    except Exception:  # a recipe this code cannot rebuild: compared as stored
        return recipe


def _input_making(model: TrainedModel) -> dict | None:
    """The INPUT_MAKING options of a member's data (None: a member built without a config,
    whose stored input description is all there is)."""
    data = model.config.get("data") if model.config is not None else None
    if data is None:
        return None
    found = {key: OmegaConf.select(data, key, default=None) for key in INPUT_MAKING}
    made = {key: OmegaConf.to_container(value, resolve=True)
            if OmegaConf.is_config(value) else value for key, value in found.items()}
    return {key: _recipe_params(value) if key.endswith("recipe") else value
            for key, value in made.items()}


def weights_digest(net: nn.Module) -> str:
    """SHA-256 of a network's tensors in name order: one model saved in two files (a run's
    download, its folder's checkpoint, a copy) has one digest."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        values = tensor.detach().cpu()
        values = values.float() if values.is_floating_point() else values  # numpy lacks bf16
        digest.update(values.contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_members(models: Sequence[TrainedModel]) -> list[list[int]]:
    """Stop unless every member takes the same input (by its stored description and the data
    options that make it, `INPUT_MAKING`) and knows the same classes (by name, any order), and
    none is an ensemble; return each member's output index per class of the first member's
    order."""
    if len(models) < 2:
        raise ConfigError(f"an ensemble needs at least two members; got {len(models)}")
    first = models[0]
    names, wanted = list(first.class_names), _spec_without_classes(first.input)
    digests = [weights_digest(m.net) for m in models]
    twice = sorted({str(m.checkpoint) for m, d in zip(models, digests, strict=True)
                    if digests.count(d) > 1})
    if twice:
        raise ConfigError(f"ensemble members: the same model more than once ({', '.join(twice)});"
                          " each model counts once in an ensemble")
    first_made = _input_making(first)
    index = []
    for model in models:
        if sorted(model.class_names) != sorted(names):
            raise ConfigError(
                f"ensemble member {model.checkpoint}: classes [{', '.join(model.class_names)}]"
                f"; {first.checkpoint} has [{', '.join(names)}]; members must know the same "
                "classes (by name)")
        theirs = _spec_without_classes(model.input)
        if theirs != wanted:
            differ = sorted(k for k in set(theirs) | set(wanted)
                            if theirs.get(k) != wanted.get(k))
            raise ConfigError(
                f"ensemble member {model.checkpoint} takes {model.input.describe()}; "
                f"{first.checkpoint} takes {first.input.describe()} (they differ in "
                f"{', '.join(differ)}); members must take the same input")
        if isinstance(model.net, EnsembleNet):
            raise ConfigError(f"ensemble member {model.checkpoint} is itself an ensemble (of "
                              f"{len(model.net.members)}); name its members instead, so each "
                              "model counts once")
        made = _input_making(model)
        differ = [] if made is None or first_made is None else sorted(
            k for k in INPUT_MAKING if made[k] != first_made[k])
        if differ:
            raise ConfigError(
                f"ensemble member {model.checkpoint} was trained on inputs made otherwise "
                f"than {first.checkpoint} (data.{', data.'.join(differ)} differ); one input "
                "feeds every member, so they must be cut and drawn alike")
        index.append([model.class_names.index(name) for name in names])
    return index


def member_net_config(model: TrainedModel) -> dict:
    """A member's network config, built without pretrained weights (the ensemble's
    checkpoint holds every weight)."""
    net = OmegaConf.to_container(model.config.model.net, resolve=True)
    if "pretrained" in net:
        net["pretrained"] = None
    return net


def ensemble_config(models: Sequence[TrainedModel], class_index: list[list[int]],
                    sources: Sequence[str]) -> DictConfig:
    """The ensemble's stored config: the first member's (its data, split and preprocessing),
    with `model.net` building an `EnsembleNet` of the members and `ensemble.members` naming
    where each came from."""
    config = copy.deepcopy(OmegaConf.to_container(models[0].config, resolve=True))
    config["model"]["net"] = {
        "_target_": f"{EnsembleNet.__module__}.{EnsembleNet.__qualname__}",
        "members": [member_net_config(m) for m in models],
        "class_index": class_index,
    }
    config["model"]["channels_last"] = False
    config["model"]["init_from"] = None
    config["ensemble"] = {"members": list(sources),
                          "checkpoints": [str(m.checkpoint) for m in models]}
    return OmegaConf.create(config)


def all_seen(models: Sequence[TrainedModel]) -> SeenSamples:
    """Every sample any member was fit or validated on: the ensemble has seen them all. A
    member that records none (a checkpoint from before seen samples were stored) would let
    its training data be scored as unseen: refused."""
    missing = [str(m.checkpoint) for m in models if m.seen is None]
    if missing:
        raise ConfigError(f"ensemble members {', '.join(missing)} record no seen samples "
                          "(checkpoints from before ecg_seen); the ensemble could not keep "
                          "their training data out of its scores; retrain them")
    seen = models[0].seen
    for model in models[1:]:
        seen = seen.merged(model.seen)
    return seen


def build_ensemble(models: Sequence[TrainedModel], sources: Sequence[str],
                   checkpoint: Path) -> TrainedModel:
    """One model of `models` (checked by `check_members`), to be saved at `checkpoint`."""
    class_index = check_members(models)
    net = EnsembleNet([m.net for m in models], class_index).eval()
    names = list(models[0].class_names)
    return TrainedModel(net=net, config=ensemble_config(models, class_index, sources),
                        class_names=names, checkpoint=Path(checkpoint), history=[],
                        input=InputSpec.from_dict({**models[0].input.to_dict(),
                                                   "class_names": names}),
                        seen=all_seen(models))


def save_ensemble(model: TrainedModel) -> Path:
    """Write the ensemble as an ecg-experiments checkpoint (whole or not at all), with the
    entries a trained model's checkpoint carries (`ClassifierModule.on_save_checkpoint`)."""
    module = ClassifierModule(model.net, model.class_names,
                              config=OmegaConf.to_container(model.config, resolve=True),
                              input_spec=model.input, seen=model.seen)
    payload = {"state_dict": {k: v for k, v in module.state_dict().items()
                              if k.startswith("net.")},
               ENSEMBLE_KEY: list(model.config.ensemble.members)}
    module.on_save_checkpoint(payload)
    model.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(model.checkpoint) as tmp:
        torch.save(payload, tmp)
    return model.checkpoint
