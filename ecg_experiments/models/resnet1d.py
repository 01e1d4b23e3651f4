"""Stronger 1D backbones for beats, as benchmarked on PTB-XL (Strodthoff et al. 2021):
an xresnet1d (He et al.'s "bag of tricks" ResNet in 1D) and inception1d (InceptionTime)."""

from __future__ import annotations

import torch
from torch import nn

from ecg_experiments.inputs import split_features


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True,
             zero_bn: bool = False) -> nn.Sequential:
    bn = nn.BatchNorm1d(c_out)
    if zero_bn:  # the residual branch starts as identity (xresnet trick)
        nn.init.zeros_(bn.weight)
    layers: list[nn.Module] = [nn.Conv1d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                               bn]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class XResBlock1d(nn.Module):
    """Two convolutions with a shortcut; downsampling by average pooling on the shortcut."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c_in, c_out, kernel, stride),
                                  _conv_bn(c_out, c_out, kernel, relu=False, zero_bn=True))
        shortcut: list[nn.Module] = []
        if stride > 1:
            shortcut.append(nn.AvgPool1d(stride, stride, ceil_mode=True))
        if c_in != c_out:
            shortcut.append(_conv_bn(c_in, c_out, 1, relu=False))
        self.shortcut = nn.Sequential(*shortcut)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ConcatPoolHead(nn.Module):
    """Adaptive average + max pooling, then BN-dropout-linear (fastai's head). `num_features`
    extra per-beat features (e.g. R-R intervals) pass through BN-linear-ReLU to
    `feature_width` values (so the head can combine them, e.g. "early and followed by a
    pause") and join the pooled vector."""

    takes_beat_features = True  # init_from matches its `features` branch by feature name

    def __init__(self, channels: int, num_classes: int, dropout: float,
                 num_features: int = 0, feature_width: int = 32) -> None:
        super().__init__()
        self.avg = nn.AdaptiveAvgPool1d(1)
        self.max = nn.AdaptiveMaxPool1d(1)
        self.features = None
        if num_features:
            self.features = nn.Sequential(nn.BatchNorm1d(num_features),
                                          nn.Linear(num_features, feature_width), nn.ReLU())
        width = 2 * channels + (feature_width if num_features else 0)
        self.classifier = nn.Sequential(nn.BatchNorm1d(width), nn.Dropout(dropout),
                                        nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.avg(x).flatten(1), self.max(x).flatten(1)]
        if self.features is not None:
            parts.append(self.features(features))
        return self.classifier(torch.cat(parts, dim=1))


class XResNet1d(nn.Module):
    """xresnet1d: a 3-convolution stem, stages of residual blocks (stride 2 from the second
    stage), concat-pool head. Defaults suit 187-sample beats (about 1.6 M parameters)."""

    classifier_names = ("head",)  # models/heads.py

    def __init__(self, num_classes: int, in_channels: int = 1,
                 stem: tuple[int, ...] = (32, 32, 64), widths: tuple[int, ...] = (64, 128, 256),
                 blocks: tuple[int, ...] = (2, 2, 2), kernel_size: int = 5,
                 dropout: float = 0.2, num_features: int = 0,
                 feature_width: int = 32) -> None:
        super().__init__()
        self.num_features = int(num_features)
        stem_layers = []
        previous = in_channels
        for i, width in enumerate(stem):
            stem_layers.append(_conv_bn(previous, width, kernel_size, stride=2 if i == 0 else 1))
            previous = width
        self.stem = nn.Sequential(*stem_layers, nn.MaxPool1d(3, 2, 1))
        stages = []
        for s, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            for b in range(count):
                stride = 2 if (s > 0 and b == 0) else 1
                stages.append(XResBlock1d(previous, width, kernel_size, stride))
                previous = width
        self.stages = nn.Sequential(*stages)
        self.head = ConcatPoolHead(previous, num_classes, dropout, self.num_features,
                                   feature_width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Everything before the head (timm's protocol; models/feature_cache.py): the last
        stage's activations, with the beat's extra features when it has them."""
        signal, features = split_features(x, self.num_features)
        out = self.stages(self.stem(signal))
        return out if features is None else (out, features)

    def forward_head(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.head(*x) if isinstance(x, tuple) else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class InceptionBlock1d(nn.Module):
    """Bottleneck, three parallel convolutions (kernel sizes), a max-pool branch; concat."""

    def __init__(self, c_in: int, filters: int, kernels: tuple[int, ...],
                 bottleneck: int) -> None:
        super().__init__()
        self.bottleneck = (nn.Conv1d(c_in, bottleneck, 1, bias=False) if c_in > 1
                           else nn.Identity())
        width = bottleneck if c_in > 1 else c_in
        self.convs = nn.ModuleList(nn.Conv1d(width, filters, k, padding=k // 2, bias=False)
                                   for k in kernels)
        self.pool = nn.Sequential(nn.MaxPool1d(3, 1, 1), nn.Conv1d(c_in, filters, 1, bias=False))
        self.out = nn.Sequential(nn.BatchNorm1d(filters * (len(kernels) + 1)), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bottleneck(x)
        return self.out(torch.cat([conv(z) for conv in self.convs] + [self.pool(x)], dim=1))


class Inception1d(nn.Module):
    """inception1d (InceptionTime): `depth` inception blocks with a residual shortcut every
    third block, concat-pool head. PTB-XL used kernels 39/19/9 on 1,000-sample records; the
    default here is scaled to 187-sample beats."""

    classifier_names = ("head",)  # models/heads.py

    def __init__(self, num_classes: int, in_channels: int = 1, filters: int = 32,
                 kernels: tuple[int, ...] = (19, 9, 5), bottleneck: int = 32, depth: int = 6,
                 dropout: float = 0.2, num_features: int = 0,
                 feature_width: int = 32) -> None:
        super().__init__()
        self.num_features = int(num_features)
        width = filters * (len(kernels) + 1)
        self.blocks = nn.ModuleList()
        self.shortcuts = nn.ModuleList()
        previous, residual_in = in_channels, in_channels
        for d in range(depth):
            self.blocks.append(InceptionBlock1d(previous, filters, tuple(kernels), bottleneck))
            previous = width
            if d % 3 == 2:
                self.shortcuts.append(_conv_bn(residual_in, width, 1, relu=False))
                residual_in = width
        self.relu = nn.ReLU()
        self.head = ConcatPoolHead(width, num_classes, dropout, self.num_features,
                                   feature_width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Everything before the head (timm's protocol; models/feature_cache.py)."""
        x, features = split_features(x, self.num_features)
        residual = x
        for d, block in enumerate(self.blocks):
            x = block(x)
            if d % 3 == 2:
                x = self.relu(x + self.shortcuts[d // 3](residual))
                residual = x
        return x if features is None else (x, features)

    def forward_head(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.head(*x) if isinstance(x, tuple) else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
