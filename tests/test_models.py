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


def test_rr_features_reach_the_head(compose_train, mitdb_dir) -> None:
    """data.rr_features (centered recipe) appends 7 R-R values per beat; resnet1d splits them
    off into its head, and a model without feature input is refused."""
    from hydra.utils import instantiate

    from ecg_experiments.config import build, validate_train_config
    from ecg_experiments.data.segment import RR_FEATURES
    from ecg_experiments.errors import ConfigError

    overrides = [f"paths.mitdb_dir={mitdb_dir}", "data.download=false", "data.records=[100,208]",
                 "data/recipe=centered", "data.rr_features=true"]
    cfg = compose_train([*overrides, "model=resnet1d"])
    validate_train_config(cfg)
    assert cfg.model.net.num_features == len(RR_FEATURES) == 7
    dm = build(cfg.data)
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[-1] == cfg.data.signal_length + 7
    net = instantiate(cfg.model.net)
    base = net(x).detach()
    changed = x.clone()
    changed[:, 0, -7:] += 1.0  # other R-R values, same waveform: other logits
    assert not torch.allclose(net.eval()(changed), net(x))
    assert base.shape == (len(x), 5)
    with pytest.raises(ConfigError, match="data.rr_features=true but model=cnn1d takes no R-R"):
        validate_train_config(compose_train(overrides))
