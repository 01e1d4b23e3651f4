"""Image backbones: heads for any class count, local weights, Inception's auxiliary loss."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from ecg_experiments.config import CONFIG_DIR
from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.models.backbones import build_backbone
from ecg_experiments.models.classifier import ClassifierModule
from ecg_experiments.models.freezing import FreezeBackbone, NoFreezing, count_trainable

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


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Empty weight caches and every download routed to a closed local port."""
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    return tmp_path


@pytest.mark.parametrize("name", ["alexnet", "timm:resnet18"])
def test_imagenet_offline_without_cache_fails_at_once_saying_where(offline, name) -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"model.pretrained=imagenet: the .* not in .*"
                                          r"cannot be reached; .*model.pretrained=<path>"):
        build_backbone(name, 5, pretrained="imagenet")
    assert time.perf_counter() - start < 10


def test_imagenet_weights_load_offline_from_the_libraries_caches(offline) -> None:
    # torchvision: the file named as in its weights URL under $TORCH_HOME/hub/checkpoints
    source = build_backbone("alexnet", 1000)
    checkpoints = offline / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(source.state_dict(), checkpoints / "alexnet-owt-7be5be79.pth")
    net = build_backbone("alexnet", 5, pretrained="imagenet")
    assert torch.equal(net.features[0].weight, source.features[0].weight)
    assert net.classifier[6].out_features == 5
    # timm: the Hugging Face cache layout (refs/main -> snapshots/<rev>/model.safetensors)
    from safetensors.torch import save_file

    resnet = build_backbone("timm:resnet18", 1000)
    repo = offline / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(resnet.state_dict(), str(repo / "snapshots" / "abc123" / "model.safetensors"))
    loaded = build_backbone("timm:resnet18", 4, pretrained="imagenet")
    assert torch.equal(loaded.conv1.weight, resnet.conv1.weight)
    assert loaded.get_classifier().out_features == 4


def test_input_too_small_for_the_backbone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model.input_size=32: images of 32x32 are too small "
                                          r"for inception_v3 .*usual size for inception_v3 is 299"):
        build_backbone("inception_v3", 5, input_size=32)
    # large enough to evaluate, too small for the auxiliary head that training runs
    with pytest.raises(ConfigError, match=r"input_size=160: .*inception_v3 \(its auxiliary"):
        build_backbone("inception_v3", 5, input_size=160)
    net = build_backbone("inception_v3", 5, input_size=299)
    assert net.training and all(float(m.num_batches_tracked) == 0 for m in net.modules()
                                if isinstance(m, torch.nn.BatchNorm2d))  # the probe moved none
    with pytest.raises(ConfigError, match=r"model.input_size=16: .* too small for alexnet"):
        build_backbone("alexnet", 5, input_size=16)
    assert build_backbone("cnn2d", 5, pretrained="none", input_size=16) is not None


def test_frozen_batch_norm_keeps_its_running_statistics() -> None:
    net = build_backbone("timm:resnet18", 3, input_size=64)
    FreezeBackbone().apply(net)
    module = ClassifierModule(net, ["a", "b", "c"])
    module.train()
    assert not net.bn1.training and not net.layer4[1].bn2.training
    before = net.bn1.running_mean.clone()
    module._step((torch.randn(4, 3, 64, 64) * 3 + 1, torch.tensor([0, 1, 2, 0])), "train")
    assert torch.equal(net.bn1.running_mean, before)
    NoFreezing().apply(net)
    module.train()
    assert net.bn1.training
    module._step((torch.randn(4, 3, 64, 64) * 3 + 1, torch.tensor([0, 1, 2, 0])), "train")
    assert not torch.equal(net.bn1.running_mean, before)


def test_inception_inputs_are_normalised_once() -> None:
    """The config's [-1, 1] scaling equals what torchvision's transform_input would make of
    ImageNet-normalised inputs; the network itself does not normalise again."""
    net = build_backbone("inception_v3", 5, input_size=299)
    assert net.transform_input is False
    cfg = yaml.safe_load((CONFIG_DIR / "model" / "inception_v3.yaml").read_text())
    image = torch.rand(1, 3, 8, 8)
    ours = (image - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        cfg["std"]).view(1, 3, 1, 1)
    imagenet = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    reference = net.__class__._transform_input(
        type("WithTransform", (), {"transform_input": True})(),
        (image - imagenet[0]) / imagenet[1])
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.equal(net._transform_input(ours), ours)  # no second normalisation
