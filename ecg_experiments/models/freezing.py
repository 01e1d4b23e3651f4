"""Freezing policies for transfer learning (`freeze=none|backbone|last_n|gradual`).

A "layer" is a module that owns parameters itself (a conv, a linear, a norm), in the order
the network registers them; the "head" is the network's classifier head(s) as models/heads.py
defines them (auxiliary heads such as Inception v3's included: their loss counts in
training, so they always train with the main head).
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn

from ecg_experiments.errors import ConfigError
from ecg_experiments.models.heads import heads

log = logging.getLogger(__name__)


def head_modules(net: nn.Module) -> list[nn.Module]:
    """Every module inside the classifier head(s) (models/heads.py)."""
    return [m for head in heads(net).values() for m in head.modules()]


def backbone_layers(net: nn.Module) -> list[nn.Module]:
    """Parameter layers outside the classifier head(s), in registration order."""
    inside = {id(m) for m in head_modules(net)}
    return [m for m in parameter_layers(net) if id(m) not in inside]


def _train_heads(net: nn.Module) -> None:
    """Every head trainable: the main head and auxiliary ones (whose loss counts too)."""
    for head in heads(net).values():
        head.requires_grad_(True)


def parameter_layers(net: nn.Module) -> list[nn.Module]:
    """Modules owning parameters directly, in registration order."""
    return [m for m in net.modules() if any(True for _ in m.parameters(recurse=False))]


def count_trainable(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


class FreezePolicy:
    """Base: `apply(net)` sets requires_grad; `callbacks()` adds any training-time part.
    `frozen_until` is the epoch the frozen layers start training (None: never, 0: nothing
    is frozen), which bounds the feature cache (models/feature_cache.py)."""

    frozen_until: int | None = 0

    def apply(self, net: nn.Module) -> None:
        for parameter in net.parameters():
            parameter.requires_grad_(True)

    def callbacks(self) -> list[pl.Callback]:
        return []


class NoFreezing(FreezePolicy):
    """Train every parameter."""


class FreezeBackbone(FreezePolicy):
    """Train only the head; everything before it keeps its (pretrained) weights."""

    frozen_until = None

    def apply(self, net: nn.Module) -> None:
        net.requires_grad_(False)
        _train_heads(net)
        log.info("freeze=backbone: %d trainable parameters (head only)", count_trainable(net))


class FreezeAllButLastN(FreezePolicy):
    """Train the last `n` parameter layers (the main head's layers are the last ones;
    auxiliary heads always train); freeze the rest."""

    frozen_until = None

    def __init__(self, n: int) -> None:
        if int(n) < 1:
            raise ConfigError(f"freeze.n={n}: at least the last layer must stay trainable")
        self.n = int(n)

    def apply(self, net: nn.Module) -> None:
        main, *auxiliary = heads(net).values()
        layers = backbone_layers(net) + parameter_layers(main)
        if self.n > len(layers):
            raise ConfigError(
                f"freeze.n={self.n} but {type(net).__name__} has only {len(layers)} layers "
                "with parameters"
            )
        net.requires_grad_(False)
        for layer in layers[-self.n:]:
            layer.requires_grad_(True)
        for head in auxiliary:
            head.requires_grad_(True)
        log.info("freeze=last_n: last %d of %d layers trainable, %d parameters", self.n,
                 len(layers), count_trainable(net))


class GradualUnfreezing(FreezePolicy):
    """Train the head first; at `unfreeze_at_epoch` the backbone joins with its learning rate
    scaled by `backbone_lr_factor` (Lightning's BaseFinetuning)."""

    def __init__(self, unfreeze_at_epoch: int = 2, backbone_lr_factor: float = 0.1) -> None:
        self.unfreeze_at_epoch = int(unfreeze_at_epoch)
        self.backbone_lr_factor = float(backbone_lr_factor)
        self.frozen_until = self.unfreeze_at_epoch

    def apply(self, net: nn.Module) -> None:
        FreezeBackbone().apply(net)

    def callbacks(self) -> list[pl.Callback]:
        return [_UnfreezeBackbone(self.unfreeze_at_epoch, self.backbone_lr_factor)]


class _UnfreezeBackbone(BaseFinetuning):
    def __init__(self, unfreeze_at_epoch: int, lr_factor: float) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.lr_factor = lr_factor

    @staticmethod
    def _backbone(pl_module: pl.LightningModule) -> list[nn.Module]:
        return backbone_layers(pl_module.net)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(self._backbone(pl_module), train_bn=False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer) -> None:
        if epoch == self.unfreeze_at_epoch:
            lr = optimizer.param_groups[0]["lr"] * self.lr_factor
            self.unfreeze_and_add_param_group(self._backbone(pl_module), optimizer, lr=lr,
                                              train_bn=True)
            pl_module.train()  # the now trainable batch-norm layers leave eval mode
            log.info("epoch %d: backbone unfrozen with lr %.2e", epoch, lr)
