"""Image backbones: heads for any class count, local weights, Inception's auxiliary loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecg_experiments.errors import DataError
from ecg_experiments.models.backbones import build_backbone
from ecg_experiments.models.classifier import ClassifierModule
from ecg_experiments.models.freezing import FreezeBackbone, count_trainable

SIZES = {"alexnet": 227, "inception_v3": 299, "cnn2d": 64, "timm:resnet18": 224}


@pytest.mark.parametrize("name", list(SIZES))
def test_forward_backward_with_replaced_heads(name: str) -> None:
    for classes in (2, 4, 5, 6):
        net = build_backbone(name, classes, pretrained=None, input_size=SIZES[name]).eval()
        x = torch.randn(1, 3, SIZES[name], SIZES[name])
        logits = net(x)
        assert logits.shape == (1, classes)
        logits.sum().backward()
        # every parameter but Inception's auxiliary head (not used at evaluation) gets a gradient
        assert all(p.grad is not None for n, p in net.named_parameters() if "AuxLogits" not in n)


def test_freeze_backbone_counts_on_alexnet_and_resnet18() -> None:
    alexnet = build_backbone("alexnet", 5)
    FreezeBackbone().apply(alexnet)
    # classifier: 9216->4096, 4096->4096, 4096->5
    assert count_trainable(alexnet) == (9216 * 4096 + 4096) + (4096 * 4096 + 4096) + (
        4096 * 5 + 5)
    resnet = build_backbone("timm:resnet18", 5)
    FreezeBackbone().apply(resnet)
    assert count_trainable(resnet) == 512 * 5 + 5


def test_local_weights_load_and_a_wrong_file_is_refused(tmp_path: Path) -> None:
    source = build_backbone("cnn2d", 5)
    torch.save(source.state_dict(), tmp_path / "cnn2d.pth")
    target = build_backbone("cnn2d", 3, pretrained=str(tmp_path / "cnn2d.pth"))
    assert torch.equal(target.features[0].weight, source.features[0].weight)
    assert target.head[-1].out_features == 3  # the head is new
    other = build_backbone("cnn2d", 5, input_size=32)  # another dense layer size
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(DataError, match=r"other\.pth: weights do not fit SmallCNN2d: wrong shape"):
        build_backbone("cnn2d", 5, pretrained=str(tmp_path / "other.pth"))
    resnet = build_backbone("timm:resnet18", 5)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    again = build_backbone("timm:resnet18", 2, pretrained=str(tmp_path / "resnet18.pth"))
    assert torch.equal(again.conv1.weight, resnet.conv1.weight)


def test_inception_auxiliary_loss_in_training_only() -> None:
    net = build_backbone("inception_v3", 5, input_size=299)
    module = ClassifierModule(net, list("NSVFQ"))
    x, y = torch.randn(2, 3, 299, 299), torch.tensor([0, 3])
    torch.manual_seed(0)
    module.train()
    output = net(x)
    assert hasattr(output, "aux_logits")
    torch.manual_seed(0)
    loss = module._step((x, y), "train")
    expected = module.criterion(output.logits, y) + 0.4 * module.criterion(output.aux_logits, y)
    assert torch.allclose(loss, expected, atol=1e-5)
    module.eval()
    with torch.no_grad():
        assert isinstance(net(x), torch.Tensor)  # no auxiliary head at evaluation
