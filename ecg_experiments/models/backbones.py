"""Image backbones by name, with their head replaced for the task's classes.

`build_backbone("alexnet" | "inception_v3" | "cnn2d" | "timm:<name>", num_classes, pretrained)`
where `pretrained` is None (random init), "imagenet" (the library's download/cache: torchvision
weights or timm's hub; no network here, so a missing cache is a clear error), or the path of
a local weights file (.pth/.pt state dict or .safetensors) for the backbone without its head.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ecg_experiments.errors import ConfigError, DataError, first_sentence
from ecg_experiments.io import readable_file
from ecg_experiments.models.cnn2d import SmallCNN2d
from ecg_experiments.models.heads import output_prefixes, reset_classifier

log = logging.getLogger(__name__)

DEFAULT_SIZES = {"alexnet": 227, "inception_v3": 299, "cnn2d": 64}


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ConfigError(f"model.pretrained={path}: no such weights file")
    readable_file(path, "model.pretrained: a weights file (.pth, .pt or .safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: not a loadable weights file ({first_sentence(err)}); "
                        "expected a .pth/.pt state dict or a .safetensors file") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict of tensors")
    from ecg_experiments.models.checkpoint import check_finite

    check_finite(state, path)
    return state


def load_local_weights(net: nn.Module, path: str | os.PathLike, skip: tuple[str, ...]) -> None:
    """Copy weights from a local file; layers under `skip` (the new head) keep their init.

    Every other tensor must be present with the same shape, else a DataError lists them.
    """
    state = _load_state_dict(Path(path))
    own = net.state_dict()
    wanted = {k: v for k, v in own.items() if not k.startswith(skip)}
    missing = sorted(k for k in wanted if k not in state)
    wrong = sorted(f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                   for k, v in wanted.items() if k in state and state[k].shape != v.shape)
    if missing or wrong:
        raise DataError(
            f"{path}: weights do not fit {type(net).__name__}: "
            + "; ".join(filter(None, [
                f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                if missing else "",
                f"wrong shape {', '.join(wrong[:5])}" if wrong else "",
            ]))
        )
    net.load_state_dict({**own, **{k: state[k] for k in wanted}})
    log.info("loaded %d tensors from %s", len(wanted), path)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host (or the proxy for it) opens in time.

    The weights libraries retry for a minute when offline; this answers in seconds.
    """
    target = urlparse(urllib.request.getproxies().get(urlparse(url).scheme) or url)
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _torchvision(name: str, pretrained: str | None) -> nn.Module:
    import torchvision.models as tvm

    weights = None
    if pretrained == "imagenet":
        weights = tvm.get_model_weights(name).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        if not cached.is_file() and not _reachable(weights.url):
            raise ConfigError(
                f"model.pretrained=imagenet: the {name} ImageNet weights are not in "
                f"{cached.parent} and {urlparse(weights.url).hostname} cannot be reached; "
                f"download {weights.url} once where there is internet and put it at {cached} "
                "(TORCH_HOME moves that folder), or give a local file as model.pretrained=<path>"
            )
    # torchvision's truncated-normal init of Inception takes seconds; PyTorch's default init
    # is used instead (pretrained weights replace it anyway)
    # and its own input re-normalisation is off: the model config's mean/std give the [-1, 1]
    # inputs its weights expect, so images are normalised once
    kwargs = ({"aux_logits": True, "init_weights": False, "transform_input": False}
              if name == "inception_v3" else {})
    try:
        return tvm.get_model(name, weights=weights, **kwargs)
    except OSError as err:  # URLError is an OSError: offline with nothing cached
        raise ConfigError(
            f"model.pretrained=imagenet: the {name} ImageNet weights are not cached in "
            f"{torch.hub.get_dir()}/checkpoints and cannot be downloaded ({err}); download "
            "them once where there is internet (or copy the file there), or give a local "
            "file as model.pretrained=<path>"
        ) from err


def _timm_weights(model_name: str) -> dict | None:
    """The cached Hugging Face weights file of a timm model as a pretrained_cfg overlay (no
    network then); None to let timm download; a ConfigError at once when offline."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    pretrained = timm.get_pretrained_cfg(model_name)
    if pretrained is None or not (pretrained.hf_hub_id or pretrained.url):
        raise ConfigError(f"model.pretrained=imagenet: timm has no pretrained weights for "
                          f"{model_name}; use model.pretrained=null or a local file")
    if pretrained.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(pretrained.hf_hub_id, filename)
            if isinstance(found, str):
                return {"file": found}
    source = constants.ENDPOINT if pretrained.hf_hub_id else pretrained.url
    if not _reachable(source):
        raise ConfigError(
            f"model.pretrained=imagenet: the {model_name} weights "
            f"({pretrained.hf_hub_id or pretrained.url}) are not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {urlparse(source).hostname} cannot be reached; "
            "fetch them once where there is internet (timm.create_model(name, "
            "pretrained=True) fills the cache; HF_HOME moves it), or give a local file as "
            "model.pretrained=<path>"
        )
    return None


def build_backbone(name: str, num_classes: int, pretrained: str | None = None,
                   dropout: float = 0.5, in_channels: int = 3, input_size: int = 224) -> nn.Module:
    """A classification network for `num_classes` (see the module docstring).

    The network is tried once on a blank `input_size` image, so a size too small for its
    pooling stages is a ConfigError here rather than a crash in the first batch.
    """
    if isinstance(pretrained, str) and pretrained.lower() in ("none", "null", ""):
        pretrained = None
    local = pretrained not in (None, "imagenet")
    if name == "cnn2d":
        net = SmallCNN2d(num_classes, in_channels, input_size, dropout=dropout)
    elif name == "alexnet":
        net = reset_classifier(_torchvision("alexnet", None if local else pretrained),
                               num_classes)
        for index in (0, 3):
            net.classifier[index].p = dropout
    elif name == "inception_v3":
        net = reset_classifier(_torchvision("inception_v3", None if local else pretrained),
                               num_classes)
        net.dropout.p = dropout
    elif name.startswith("timm:"):
        import timm

        model_name = name.removeprefix("timm:")
        overlay = _timm_weights(model_name) if pretrained == "imagenet" else None
        try:
            net = timm.create_model(model_name, pretrained=pretrained == "imagenet",
                                    num_classes=num_classes, drop_rate=dropout,
                                    in_chans=in_channels, pretrained_cfg_overlay=overlay)
        except RuntimeError as err:
            raise ConfigError(f"model.name={model_name}: {err}") from err
        except OSError as err:
            raise ConfigError(
                f"model.pretrained=imagenet: timm could not fetch {model_name} weights "
                f"({err}); put them in the Hugging Face cache (HF_HOME) where there is "
                "internet, or give a local file as model.pretrained=<path>"
            ) from err
    else:
        raise ConfigError(
            f"model net {name!r}: expected alexnet, inception_v3, cnn2d or timm:<name>"
        )
    if local:
        load_local_weights(net, pretrained, skip=output_prefixes(net))
    _check_input_size(net, name, in_channels, input_size)
    return net


def _check_input_size(net: nn.Module, name: str, in_channels: int, input_size: int) -> None:
    was_training = net.training
    net.eval()
    part = ""
    try:
        with torch.no_grad():
            net(torch.zeros(1, in_channels, input_size, input_size))
            if getattr(net, "aux_logits", False):  # its auxiliary head runs in training only
                # a copy: a training-mode pass would move the batch-norm statistics
                part = "its auxiliary head (training), "
                copy.deepcopy(net).train()(torch.zeros(2, in_channels, input_size, input_size))
    except RuntimeError as err:
        raise ConfigError(
            f"model.input_size={input_size}: images of {input_size}x{input_size} are too "
            f"small for {name} ({part}{str(err).splitlines()[0]}); use a "
            "larger model.input_size "
            f"(the usual size for {name} is {DEFAULT_SIZES.get(name, 224)})"
        ) from err
    finally:
        net.train(was_training)
