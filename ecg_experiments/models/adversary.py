"""Patient-invariant training: a record classifier on the network's features, trained through
a gradient-reversal layer (Ganin & Lempitsky 2015; per subject as Zhang et al. 2021).

The record classifier learns which training record a beat came from; the reversed gradient
teaches the feature layers to make that impossible, so what the network keeps of a beat is
what its class needs, not who its patient is. Training only: the classifier is not part of
the network that is saved, exported or scored (its weights sit in the training checkpoint
under `adversary.` so a resumed fit continues it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ecg_experiments.errors import ConfigError

SCHEDULES = ("ganin", "constant")


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times -`coefficient` backward. Written here: torch has
    no such layer, and the libraries that do (pytorch-adapt) bring a training framework."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * grad, None


def pooled(features: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A network's `forward_features` output as one vector per sample: a feature map
    averaged over its positions (the per-beat features a 1D model carries beside its map are
    left out: the R-R intervals say nothing of the patient's morphology)."""
    x = features[0] if isinstance(features, tuple) else features
    return x.float().flatten(2).mean(dim=-1) if x.ndim > 2 else x.float()


class RecordAdversary(nn.Module):
    """Which of `records` training records a beat's features come from; its gradient reaches
    the features reversed and scaled by `coefficient(progress)`: `weight` throughout
    (`schedule=constant`) or rising from 0 to `weight` as 2 / (1 + exp(-gamma p)) - 1 over the
    training progress p in [0, 1] (`schedule=ganin`, Ganin & Lempitsky's; the record classifier
    is poor at first, and its early gradient would only add noise)."""

    def __init__(self, width: int, records: int, weight: float = 0.1,
                 schedule: str = "ganin", gamma: float = 10.0, hidden: int = 64) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ConfigError(f"adversary.schedule={schedule!r}: expected one of "
                              f"{', '.join(SCHEDULES)}")
        if not float(weight) > 0:
            raise ConfigError(f"adversary.weight={weight}: expected a positive number (the "
                              "reversed gradient's scale; adversary=null turns it off)")
        if int(records) < 2:
            raise ConfigError(f"adversary: the training split holds {records} record(s); "
                              "telling records apart needs at least 2")
        self.weight, self.schedule, self.gamma = float(weight), schedule, float(gamma)
        self.records = int(records)
        self.classifier = nn.Sequential(nn.Linear(int(width), int(hidden)), nn.ReLU(),
                                        nn.Linear(int(hidden), self.records))

    def coefficient(self, progress: float) -> float:
        if self.schedule == "constant":
            return self.weight
        p = min(max(float(progress), 0.0), 1.0)
        return self.weight * (2.0 / (1.0 + math.exp(-self.gamma * p)) - 1.0)

    def forward(self, features: torch.Tensor | tuple[torch.Tensor, ...],
                records: torch.Tensor, progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(the record classifier's cross-entropy, its accuracy) on a batch."""
        x = GradientReversal.apply(pooled(features), self.coefficient(progress))
        logits = self.classifier(x)
        loss = F.cross_entropy(logits, records)
        return loss, (logits.detach().argmax(dim=-1) == records).float().mean()


def feature_width(net: nn.Module, shape: tuple[int, ...]) -> int:
    """The width of `pooled(net.forward_features(x))` for inputs of `shape` (evaluated in
    eval mode on zeros: no batch-norm statistic moves)."""
    mode = net.training
    net.eval()
    try:
        with torch.no_grad():
            return int(pooled(net.forward_features(torch.zeros(1, *shape))).shape[-1])
    finally:
        net.train(mode)
