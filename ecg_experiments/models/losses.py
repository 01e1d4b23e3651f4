"""Classification losses beyond torch's own."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - torch's convention
from torch import nn


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017): cross-entropy scaled per beat by (1 - p_t)^gamma,
    p_t the predicted probability of the true class, so confidently right beats (the many
    easy N beats) weigh little. Class weights and label smoothing as in
    `nn.CrossEntropyLoss`, and gamma=0 is exactly that loss (the mean is over the class
    weights of the batch's targets). Written here because torchvision's
    `sigmoid_focal_loss` is the one-vs-rest sigmoid form, not the softmax one for one label
    per beat.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal loss gamma={gamma}: expected >= 0")
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_beat = F.cross_entropy(logits, target, weight=self.weight, reduction="none",
                                   label_smoothing=self.label_smoothing)
        p_true = logits.float().softmax(dim=1).gather(1, target[:, None])[:, 0]
        scaled = (1.0 - p_true).clamp(min=0.0).pow(self.gamma) * per_beat
        norm = (self.weight[target].sum() if self.weight is not None
                else torch.tensor(float(len(target)), device=logits.device))
        return scaled.sum() / norm
