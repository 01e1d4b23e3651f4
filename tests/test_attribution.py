"""Attributions (Captum) checked against what they must satisfy, on small real networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import alexnet

from ecg_experiments.evaluation.attribution import (
    feature_map_layer,
    grad_cam,
    integrated_gradients,
    mean_attribution_report,
    plot_beat,
    sample_by_outcome,
)
from ecg_experiments.inputs import InputSpec
from ecg_experiments.models.cnn1d import KachueeCNN1d
from ecg_experiments.models.cnn2d import SmallCNN2d


def test_integrated_gradients_add_up_to_the_change_of_the_logit() -> None:
    """Completeness: the attributions of a beat sum to logit(beat) - logit(zero beat)."""
    torch.manual_seed(0)
    net = KachueeCNN1d(num_classes=5).eval()
    x = torch.randn(3, 1, 187)
    targets = torch.tensor([0, 2, 4])
    weights = integrated_gradients(net, x, targets, steps=256)
    assert weights.shape == (3, 1, 187)
    with torch.no_grad():
        change = (net(x) - net(torch.zeros_like(x)))[torch.arange(3), targets].numpy()
    np.testing.assert_allclose(weights.reshape(3, -1).sum(axis=1), change, rtol=0.02, atol=1e-3)


class Negate(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x


def _manual_grad_cam(net: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor,
                     target: int) -> torch.Tensor:
    """Grad-CAM by its definition: ReLU(sum_k mean(d logit / d A_k) * A_k), bilinear to the
    input size."""
    kept = {}
    hook = layer.register_forward_hook(lambda m, a, out: kept.setdefault("A", out))
    logits = net(x.clone().requires_grad_(True))
    hook.remove()
    (grad,) = torch.autograd.grad(logits[:, target].sum(), kept["A"])
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * kept["A"]).sum(dim=1, keepdim=True))
    return torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear")[:, 0].detach()


@pytest.mark.parametrize("name", ["cnn2d", "alexnet"])
def test_grad_cam_is_the_definition_on_the_last_spatial_feature_map(name: str) -> None:
    torch.manual_seed(0)
    if name == "alexnet":
        net, size = alexnet(num_classes=3).eval(), 227
        expected = net.avgpool  # the pooled conv features, 6 x 6
    else:
        net, size = SmallCNN2d(num_classes=3).eval(), 64
        expected = net.features  # the conv stack, 16 x 16
    for module in net.modules():  # inplace ReLUs would overwrite the kept feature map
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    x = torch.rand(2, 3, size, size)
    assert feature_map_layer(net, x) is expected
    for p in net.parameters():  # a frozen backbone still gets its maps
        p.requires_grad_(False)
    # the network and its negated logits: where one's map is all zero (ReLU of a negative
    # sum, common for random weights), the other's is not
    negated = torch.nn.Sequential(net, Negate()).eval()
    shown = 0
    for model, target in [(m, t) for m in (net, negated) for t in range(3)]:
        reference = _manual_grad_cam(model, expected, x, target)
        peak = reference.reshape(2, -1).max(dim=1).values
        maps = grad_cam(model, x, torch.tensor([target, target]))
        assert maps.shape == (2, size, size) and maps.min() >= 0
        for i in range(2):
            if peak[i] > 0:  # scaled to a maximum of 1
                np.testing.assert_allclose(maps[i], (reference[i] / peak[i]).numpy(), atol=1e-4)
                shown += 1
            else:
                assert maps[i].max() == 0
    assert shown >= 6  # the comparison ran on maps that are not all zero


def test_the_beat_figure_has_a_bar_per_r_r_feature(tmp_path, monkeypatch) -> None:
    """Beside the beat, one bar per appended feature, named, as long as its attribution and
    coloured by its sign (red: for the class)."""
    from matplotlib.colors import to_rgba

    import ecg_experiments.evaluation.attribution as attribution

    drawn = []
    save = attribution.save_figure
    monkeypatch.setattr(attribution, "save_figure", lambda fig, path: (drawn.append(fig),
                                                                 save(fig, path))[1])
    spec = InputSpec(kind="signal", class_names=("N", "V"), signal_length=100, rate=125.0,
                     features=("pre", "post"))
    beat = np.sin(np.linspace(0, 6, 102))
    weights = np.r_[np.linspace(-1, 1, 100), 0.7, -0.4]
    path = plot_beat(beat, weights, spec, "a beat", tmp_path / "beat.png")
    assert path.is_file()
    [fig] = drawn
    beat_axis, feature_axis = fig.axes
    np.testing.assert_allclose(beat_axis.lines[0].get_ydata(), beat[:100])
    bars = feature_axis.patches
    assert [t.get_text() for t in feature_axis.get_yticklabels()] == ["pre", "post"]
    assert [round(b.get_width(), 6) for b in bars] == [0.7, -0.4]
    assert [b.get_facecolor() for b in bars] == [to_rgba("tab:red"), to_rgba("tab:blue")]


def test_the_mean_attribution_report_draws_per_class_and_outcome(tmp_path) -> None:
    """At most `per_group` beats of each true class and outcome (correct / wrong) enter."""
    labels = np.array([0] * 10 + [1] * 3 + [2] * 6)
    predicted = np.array([0] * 7 + [1] * 3 + [1, 0, 0] + [2] * 6)
    chosen = sample_by_outcome(labels, predicted, 3, per_group=4, seed=0)
    groups = [(int(labels[i]), bool(labels[i] == predicted[i])) for i in chosen]
    assert sorted(set(groups)) == [(0, False), (0, True), (1, False), (1, True), (2, True)]
    assert {g: groups.count(g) for g in set(groups)} == {
        (0, True): 4, (0, False): 3, (1, True): 1, (1, False): 2, (2, True): 4}
    assert list(chosen) == sorted(set(chosen))
    torch.manual_seed(0)
    net = KachueeCNN1d(num_classes=3).eval()
    x = torch.randn(60, 1, 187)
    labels = torch.arange(60) % 3
    spec = InputSpec(kind="signal", class_names=("N", "S", "V"), signal_length=187, rate=125.0)
    files = mean_attribution_report(net, x, labels, spec, {"attribution_per_group": 4,
                                                           "attribution_steps": 4},
                                    tmp_path, seed=1, logger=None)
    assert files["mean_attribution"].stat().st_size > 20_000
    assert mean_attribution_report(net, x, labels, spec, {"attribution_per_group": 0},
                                   tmp_path / "off", seed=1, logger=None) == {}
    image = InputSpec(kind="image", class_names=("N",), image_size=8, channels=3)
    assert mean_attribution_report(net, x, labels, image, {"attribution_per_group": 4},
                                   tmp_path / "img", seed=1, logger=None) == {}
