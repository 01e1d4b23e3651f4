"""The 1D CNN of Kachuee et al."""

from __future__ import annotations

import pytest
import torch

from ecg_experiments.models.cnn1d import KachueeCNN1d


def test_shapes_and_architecture() -> None:
    net = KachueeCNN1d(num_classes=5)
    x = torch.randn(8, 1, 187, requires_grad=True)
    logits = net(x)
    assert logits.shape == (8, 5)
    logits.sum().backward()
    assert x.grad is not None and net.stem.weight.grad is not None
    assert net.stem.out_channels == 32 and net.stem.kernel_size == (5,)
    assert len(net.blocks) == 5
    # 187 samples after five max-pools (5, stride 2) leave 2 positions x 32 channels
    assert net.head[1].in_features == 64
    dense = [m for m in net.head if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in dense] == [32, 32, 5]


def test_other_lengths_and_class_counts() -> None:
    net = KachueeCNN1d(num_classes=2, input_length=260)
    assert net(torch.randn(3, 1, 260)).shape == (3, 2)


@pytest.mark.parametrize("name", ["resnet1d", "inception1d"])
def test_stronger_1d_backbones_train_on_beats(name: str) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ecg_experiments.config import CONFIG_DIR

    cfg = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    assert cfg.input_kind == "signal"
    torch.manual_seed(0)
    net = instantiate(cfg.net, num_classes=5)
    x = torch.randn(16, 1, 187)
    y = torch.arange(16) % 5
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):  # a batch it can memorise: the loss must fall
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    for length, classes in ((187, 2), (260, 6)):  # any length: the head pools over time
        assert net.__class__(num_classes=classes)(torch.randn(2, 1, length)).shape == (2, classes)
