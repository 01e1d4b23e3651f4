"""The 1D residual CNN of Kachuee, Fazeli and Sarrafzadeh (ICHI 2018, arXiv:1805.00794)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock1d(nn.Module):
    """conv-ReLU-conv, add the input, ReLU, then max-pool (kernel 5, stride 2)."""

    def __init__(self, channels: int, kernel_size: int = 5) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=padding)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=padding)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool1d(kernel_size=5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.pool(self.relu(out + x))


class KachueeCNN1d(nn.Module):
    """Input conv 32x5, five residual blocks, then dense 32-32-classes.

    Expects [batch, in_channels, input_length]; `input_length` (187 for the 125 Hz
    Kaggle beats) fixes the size of the first dense layer.
    """

    classifier_names = ("head",)  # the dense layers (models/heads.py)

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        input_length: int = 187,
        channels: int = 32,
        kernel_size: int = 5,
        num_blocks: int = 5,
        hidden: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv1d(in_channels, channels, kernel_size, padding=kernel_size // 2)
        self.blocks = nn.Sequential(
            *[ResidualBlock1d(channels, kernel_size) for _ in range(num_blocks)]
        )
        with torch.no_grad():
            features = self.blocks(self.stem(torch.zeros(1, in_channels, input_length)))
        if features.shape[-1] < 1:
            raise ValueError(f"input_length={input_length} is too short for {num_blocks} blocks")
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features.numel(), hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the head (timm's protocol; models/feature_cache.py)."""
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
