"""The 1D CNN of Kachuee et al."""

from __future__ import annotations

import math

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
    from ecg_experiments.data.beat_features import RR_FEATURES
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
    # beat context: rr_context=3 makes 7 + 2 x 3 named features, end to end
    cfg = compose_train([*overrides, "model=resnet1d", "data.recipe.rr_context=3"])
    assert cfg.model.net.num_features == 13
    dm = build(cfg.data)
    dm.setup("fit")
    assert dm.feature_names[-1] == "rr_after3_avg_ratio" and len(dm.feature_names) == 13
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[-1] == cfg.data.signal_length + 13
    assert instantiate(cfg.model.net)(x).shape == (len(x), 5)
    cfg = compose_train([*overrides, "model=inception1d", "data.recipe.rr_context=1",
                         "data.recipe.template_features=true"])
    assert cfg.model.net.num_features == 7 + 2 + 2
    cfg = compose_train([*overrides, "model=inception1d", "data.recipe.rr_context=1",
                         "data.recipe.template_features=true", "data.recipe.rhythm_beats=16"])
    assert cfg.model.net.num_features == 7 + 2 + 3 + 2
    with pytest.raises(ConfigError, match="data.rr_features=true but model=cnn1d takes no R-R"):
        validate_train_config(compose_train(overrides))


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_weighs_easy_beats_down() -> None:
    from ecg_experiments.models.losses import FocalLoss

    torch.manual_seed(0)
    logits = torch.randn(64, 5) * 3
    target = torch.randint(0, 5, (64,))
    weight = torch.tensor([0.2, 3.0, 1.0, 5.0, 1.0])
    for w in (None, weight):
        for smoothing in (0.0, 0.1):
            expected = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=smoothing)(
                logits, target)
            got = FocalLoss(0.0, w, smoothing)(logits, target)
            assert got == pytest.approx(float(expected), rel=1e-5)
    # a confidently right beat (p_true 0.99) keeps (0.01)^2 of its cross-entropy; a wrong one
    # (p_true 0.1) keeps 0.81 of it
    easy = torch.tensor([[math.log(396.0), 0.0, 0, 0, 0]])  # 396 / (396 + 4) = 0.99
    hard = torch.tensor([[0.0, math.log(6.0), 0, 0, 0]])  # 1 / (1 + 6 + 3) = 0.1
    label = torch.tensor([0])
    for x, keep in ((easy, 0.01 ** 2), (hard, 0.9 ** 2)):
        ce = torch.nn.functional.cross_entropy(x, label)
        assert FocalLoss(2.0)(x, label) == pytest.approx(float(ce) * keep, rel=1e-3)
    with pytest.raises(ValueError, match="gamma=-1"):
        FocalLoss(-1.0)


def test_loss_focal_gamma_builds_the_focal_loss(compose_train) -> None:
    from ecg_experiments.models.classifier import ClassifierModule
    from ecg_experiments.models.losses import FocalLoss

    net = KachueeCNN1d(num_classes=5)
    module = ClassifierModule(net, list("NSVFQ"), focal_gamma=2.0, class_weights=[1.0] * 5)
    assert isinstance(module.criterion, FocalLoss) and module.criterion.gamma == 2.0
    assert isinstance(ClassifierModule(net, list("NSVFQ")).criterion, torch.nn.CrossEntropyLoss)
    assert compose_train(["loss.focal_gamma=2"]).loss.focal_gamma == 2
