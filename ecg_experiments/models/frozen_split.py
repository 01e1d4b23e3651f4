"""A network cut at its classifier head into a frozen prefix and the rest.

`frozen_split(net)` returns a FrozenSplit with `suffix(prefix(x)) == net(x)` when every
parameter outside the classifier head(s) is frozen and nothing before the head draws random
numbers in training (dropout, stochastic depth) or moves statistics (batch norm without
parameters): the prefix then computes the same thing in every epoch, so models/feature_cache.py
computes it once. Otherwise it returns why not. The cut is timm's `forward_features` /
`forward_head` (the framework's own networks offer them too), AlexNet's features+pool |
classifier, and Inception v3's pooled features plus its auxiliary head's pooled input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecg_experiments.errors import ConfigError
from ecg_experiments.models.heads import head_names

HeadInput = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass
class FrozenSplit:
    """`suffix(prefix(x))` is the network's output; the prefix's parameters are frozen."""

    boundary: str
    prefix: Callable[[torch.Tensor], HeadInput]
    suffix: Callable[[HeadInput], Any]
    frozen_state: dict[str, torch.Tensor]  # the prefix's tensors by state-dict name

    def weights_digest(self, state: dict[str, torch.Tensor]) -> str:
        """SHA-256 of the frozen tensors (names, shapes and values) in `state` (the network's
        state dict as training starts): part of the cache key."""
        digest = hashlib.sha256()
        for name in sorted(self.frozen_state):
            tensor = state[name].detach().cpu().contiguous()
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def _inception_v3(net: nn.Module) -> tuple[Callable, Callable]:
    """torchvision's Inception3 forward cut before its heads. The auxiliary head reads
    Mixed_6e's output: its first step (a parameter-free 5x5/3 average pool) goes into the
    prefix, which keeps the cached tensor small (768x5x5 instead of 768x17x17). Written here
    because torchvision has no such cut; tests compare it with the whole network."""

    def prefix(x: torch.Tensor) -> HeadInput:
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c",
                     "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(net, name)(x)
        aux_input = F.avg_pool2d(x, kernel_size=5, stride=3)
        for name in ("Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
            x = getattr(net, name)(x)
        pooled = torch.flatten(x, 1)
        return (pooled, aux_input) if net.AuxLogits is not None else pooled

    def suffix(h: HeadInput) -> Any:
        pooled, aux_input = h if isinstance(h, tuple) else (h, None)
        logits = net.fc(net.dropout(pooled))
        if not (net.training and net.aux_logits and aux_input is not None):
            return logits
        from torchvision.models.inception import InceptionOutputs

        aux = net.AuxLogits
        hidden = F.adaptive_avg_pool2d(aux.conv1(aux.conv0(aux_input)), (1, 1))
        return InceptionOutputs(logits, aux.fc(torch.flatten(hidden, 1)))

    return prefix, suffix


def _cut(net: nn.Module) -> tuple[str, Callable, Callable] | str:
    import torchvision.models as tvm

    if isinstance(net, tvm.Inception3):
        prefix, suffix = _inception_v3(net)
        return "Inception3: Mixed_7c pooled + AuxLogits pooled input | fc, AuxLogits", \
            prefix, suffix
    if isinstance(net, tvm.AlexNet):
        return ("AlexNet: features + avgpool | classifier",
                lambda x: torch.flatten(net.avgpool(net.features(x)), 1), net.classifier)
    if callable(getattr(net, "forward_features", None)) and callable(
            getattr(net, "forward_head", None)):
        return f"{type(net).__name__}: forward_features | forward_head", \
            net.forward_features, net.forward_head
    return (f"{type(net).__name__} has no known cut before its head (timm's "
            "forward_features / forward_head)")


def frozen_split(net: nn.Module, example: torch.Tensor) -> FrozenSplit | str:
    """The network cut before its classifier head, or why it cannot be (module docstring).

    Checked on `example` (a small batch of the input's shape): the modules the prefix runs
    (found with forward hooks) hold no trainable parameter, the prefix gives the same output
    in training as in inference (no dropout, stochastic depth or batch statistics in it; frozen
    batch norm runs in inference during training, models/classifier.py), and the cut gives
    the whole network's output."""
    try:
        head_names(net)
    except ConfigError as err:
        return str(err)
    cut = _cut(net)
    if isinstance(cut, str):
        return cut
    boundary, prefix, suffix = cut
    modes = {m: m.training for m in net.modules()}
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
    called: dict[nn.Module, str] = {}
    names = {m: n for n, m in net.named_modules()}

    def seen(module: nn.Module, *_: Any) -> None:
        called.setdefault(module, names[module])

    hooks = [m.register_forward_hook(seen) for m in net.modules()]
    try:  # the run's random state and the network's statistics are left as they were
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            net.eval()
            try:
                features = prefix(example)
            finally:
                for hook in hooks:
                    hook.remove()
            trainable = [f"{called[m]}.{n}".lstrip(".") for m in called
                         for n, p in m.named_parameters(recurse=False) if p.requires_grad]
            if trainable:
                return (f"layers before the classifier head train ({trainable[0]}"
                        f"{', ...' if len(trainable) > 1 else ''})")
            whole, through_cut = net(example), suffix(features)
            _training_mode(net)
            in_training = prefix(example)
    except Exception as err:  # a cut that does not fit the network: no cache, said why
        return f"{boundary}: {type(err).__name__}: {err}"
    finally:
        for module, mode in modes.items():
            module.training = mode
        with torch.no_grad():
            for name, b in net.named_buffers():
                b.copy_(buffers[name])
    if not _close(features, in_training):
        return (f"{boundary}: the layers before the head compute something else in training "
                "(dropout, stochastic depth or batch statistics)")
    if not _close(whole, through_cut):
        return f"{boundary}: the cut's output differs from the network's"
    frozen = {f"{called[m]}.{n}".lstrip("."): t for m in called
              for n, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]}
    return FrozenSplit(boundary, prefix, suffix, frozen)


def _training_mode(net: nn.Module) -> None:
    """Training as the framework's module runs it: batch norm with frozen parameters in
    inference (ClassifierModule._set_norm_modes)."""
    net.train()
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            module.train(not params or any(p.requires_grad for p in params))


def _close(a: HeadInput, b: HeadInput) -> bool:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5)
        for x, y in zip(a, b, strict=True))
