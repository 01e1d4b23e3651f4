"""The small image CNN of the beat-image seed study: Conv32-Pool-Conv32-Pool-Dense128."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN2d(nn.Module):
    """Two 3x3 conv + max-pool stages, then a 128-unit dense layer and the classifier.

    Expects [batch, in_channels, input_size, input_size] (64x64 in the seed study).
    """

    classifier_names = ("head",)  # the dense layers (models/heads.py)

    def __init__(self, num_classes: int, in_channels: int = 3, input_size: int = 64,
                 channels: int = 32, hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = input_size // 4
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the head (timm's protocol; models/feature_cache.py)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
