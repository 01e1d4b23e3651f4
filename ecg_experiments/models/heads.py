"""A network's classifier head: one definition for building, freezing and loading weights.

Like timm's `get_classifier()` / `reset_classifier()`, for every network the framework builds:
the head is the part that maps features to class scores (trained by freeze=backbone, the
first part to unfreeze); its *output layer* is the last linear layer, whose rows are the
classes (replaced for a new class list, skipped when loading backbone weights, aligned by
class name by init_from). Some networks have auxiliary heads (Inception v3's AuxLogits),
whose loss counts in training: they are heads too, after the main one.
"""

from __future__ import annotations

from torch import nn

from ecg_experiments.errors import ConfigError

HEAD_NAMES = ("head", "fc", "classifier", "last_linear")


def _torchvision_heads(net: nn.Module) -> tuple[str, ...] | None:
    import torchvision.models as tvm

    if isinstance(net, tvm.Inception3):
        return ("fc", "AuxLogits.fc") if net.AuxLogits is not None else ("fc",)
    if isinstance(net, tvm.GoogLeNet):
        return ("fc",) + (("aux1.fc2", "aux2.fc2") if net.aux_logits else ())
    return None


def head_names(net: nn.Module) -> tuple[str, ...]:
    """Qualified names of the classifier head(s), the main head first."""
    declared = getattr(net, "classifier_names", None)  # the project's own networks
    if declared:
        return tuple(declared)
    get_classifier = getattr(net, "get_classifier", None)  # timm
    if callable(get_classifier) and isinstance(get_classifier(), nn.Module):
        classifier = get_classifier()
        for name, module in net.named_modules():
            if module is classifier and name:
                return (name,)
    found = _torchvision_heads(net)
    if found:
        return found
    for name in HEAD_NAMES:
        if isinstance(getattr(net, name, None), nn.Module):
            return (name,)
    raise ConfigError(
        f"{type(net).__name__} has no classifier head the framework knows (an attribute "
        f"{', '.join(HEAD_NAMES)}, timm's get_classifier() or `classifier_names`); use "
        "freeze=none, or add `classifier_names` to the network"
    )


def heads(net: nn.Module) -> dict[str, nn.Module]:
    """The classifier head modules by qualified name, the main head first."""
    return {name: net.get_submodule(name) for name in head_names(net)}


def output_layers(net: nn.Module) -> dict[str, nn.Linear]:
    """The last linear layer of each head (its rows are the classes), by qualified name."""
    layers = {}
    for name, head in heads(net).items():
        linears = [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"{type(net).__name__}: head {name!r} has no linear output layer")
        inner, layer = linears[-1]
        layers[f"{name}.{inner}" if inner else name] = layer
    return layers


def reset_classifier(net: nn.Module, num_classes: int) -> nn.Module:
    """Replace every head's output layer by a fresh one for `num_classes` classes."""
    for name, layer in output_layers(net).items():
        parent_name, _, attribute = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attribute, nn.Linear(layer.in_features, num_classes,
                                             bias=layer.bias is not None))
    return net


def output_prefixes(net: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of the output layers (e.g. 'classifier.6.')."""
    return tuple(f"{name}." for name in output_layers(net))


def beat_feature_prefixes(net: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of the layers that read the per-beat features (R-R, rhythm,
    template): modules marking themselves `takes_beat_features`, their `features` branch."""
    return tuple(f"{name}.features." if name else "features."
                 for name, module in net.named_modules()
                 if getattr(module, "takes_beat_features", False)
                 and getattr(module, "features", None) is not None)
