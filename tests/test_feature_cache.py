"""Frozen layers computed once: the cached run trains the same model as the uncached one,
per epoch, for every freezing policy that leaves a frozen prefix; it steps aside (one log
line) or refuses (enabled=true) where it cannot serve; the cut equals the whole network."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from ecg_experiments.errors import ConfigError
from ecg_experiments.models.backbones import build_backbone
from ecg_experiments.models.classifier import ClassifierModule
from ecg_experiments.models.freezing import FreezeAllButLastN, FreezeBackbone
from ecg_experiments.models.frozen_split import frozen_split
from ecg_experiments.models.resnet1d import XResNet1d
from ecg_experiments.tasks.train import train
from tests.conftest import compose_config

LOGGER = "ecg_experiments.models.feature_cache"


@pytest.fixture(scope="module")
def images(small_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 real beats per class of N, S, V drawn as 64x64 line images."""
    from ecg_experiments.data.beats import read_beats_csv
    from ecg_experiments.data.render import WaveformRenderer, write_images

    x, y = read_beats_csv(small_csv)
    root = tmp_path_factory.mktemp("cache-images")
    for label, name in enumerate("NSV"):
        (root / name).mkdir()
        rows = (y == label).nonzero()[0][:16]
        write_images(WaveformRenderer(), x[rows], 125.0, 64,
                     [root / name / f"{i:03d}.png" for i in range(len(rows))])
    return root


def _fit(tmp: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list]:
    """Train; the metrics and the per-epoch history of the checkpoint."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    cfg = compose_config(tmp, [*args, "report.bootstrap_rounds=0", "logger=none",
                               "callbacks.early_stopping=null"])
    metrics = train(cfg)
    ckpt = torch.load(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt",
                      map_location="cpu", weights_only=False)
    return metrics, ckpt


def _same_training(cached: tuple[dict, dict], uncached: tuple[dict, dict]) -> None:
    (m1, c1), (m2, c2) = cached, uncached
    history1, history2 = c1["ecg_history"], c2["ecg_history"]
    assert len(history1) == len(history2) >= 2
    for row1, row2 in zip(history1, history2, strict=True):  # every metric, every epoch
        assert row1.keys() == row2.keys()
        for key in row1:
            assert row1[key] == pytest.approx(row2[key], abs=1e-5), (row1["epoch"], key)
    for name, tensor in c1["state_dict"].items():
        torch.testing.assert_close(tensor, c2["state_dict"][name], rtol=1e-4, atol=1e-5,
                                   msg=name)
    assert m1["test/acc"] == pytest.approx(m2["test/acc"])


@pytest.mark.parametrize("freeze", [["freeze=backbone"], ["freeze=last_n", "freeze.n=2"],
                                    ["freeze=gradual", "freeze.unfreeze_at_epoch=1"]],
                         ids=["backbone", "last_n", "gradual"])
def test_cached_training_is_the_uncached_training(freeze, images, tmp_path, monkeypatch,
                                                  caplog) -> None:
    """cnn2d on image files: three epochs with and without the cache give the same metrics
    per epoch and the same weights; gradual leaves the cache at its unfreeze epoch."""
    args = ["model=cnn2d", "data=image_folder", f"data.root={images}", "data.num_workers=0",
            "data.batch_size=8", "data.augment.rotation=0", "trainer.max_epochs=3",
            "model.dropout=0.3", *freeze, f"paths.data_dir={tmp_path / 'prepared'}"]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        cached = _fit(tmp_path / "cached", args, monkeypatch)
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("feature cache on: SmallCNN2d") for m in said)
    assert sum("feature cache: train" in m for m in said) == 1  # computed once
    files = list((tmp_path / "prepared" / "feature_cache").glob("*/part0.npy"))
    assert len(files) == 2  # training and validation outputs
    uncached = _fit(tmp_path / "plain", [*args, "feature_cache.enabled=false"], monkeypatch)
    _same_training(cached, uncached)


def test_signal_beats_cached_and_read_back_by_the_next_run(small_csv, tmp_path, monkeypatch,
                                                           caplog) -> None:
    """cnn1d on beats (tensors read a batch at a time): same model; a second run with the
    same key reads the files instead of computing them."""
    args = ["data=beats_csv", f"data.train_file={small_csv}", "freeze=backbone",
            "trainer.max_epochs=2", f"paths.data_dir={tmp_path / 'prepared'}"]
    uncached = _fit(tmp_path / "plain", [*args, "feature_cache.enabled=false"], monkeypatch)
    first = _fit(tmp_path / "first", args, monkeypatch)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = _fit(tmp_path / "again", args, monkeypatch)
    said = [r.getMessage() for r in caplog.records]
    assert sum("read from" in m for m in said) == 2 and not any("computing" in m for m in said)
    _same_training(first, uncached)
    _same_training(again, uncached)


def test_augmented_inputs_turn_the_cache_off_in_one_line_or_refuse(
        images, tmp_path, monkeypatch, caplog) -> None:
    args = ["model=cnn2d", "data=image_folder", f"data.root={images}", "data.num_workers=0",
            "data.batch_size=8", "data.augment.rotation=10", "trainer.max_epochs=1",
            "freeze=backbone"]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _fit(tmp_path / "auto", args, monkeypatch)
    said = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert said == ["feature cache off: data.augment (RandomRotation) changes the frozen "
                    "layers' input in every epoch (set it to 0/null to cache)"]
    with pytest.raises(ConfigError, match="feature_cache.enabled=true: cannot cache"):
        _fit(tmp_path / "true", [*args, "feature_cache.enabled=true"], monkeypatch)
    assert not (tmp_path / "true" / "run" / "checkpoints").exists()  # refused before training


def test_a_policy_training_layers_before_the_head_has_no_cut() -> None:
    net = build_backbone("alexnet", 3, input_size=227)
    x = torch.randn(2, 3, 227, 227)
    FreezeAllButLastN(4).apply(net)  # the last convolution trains too
    assert frozen_split(net, x) == ("layers before the classifier head train "
                                    "(features.10.weight, ...)")
    FreezeAllButLastN(3).apply(net)  # the three linear layers: the classifier
    split = frozen_split(net, x)
    assert not isinstance(split, str)
    assert split.boundary == "AlexNet: features + avgpool | classifier"
    assert len(split.frozen_state) == 10  # 5 convolutions' weights and biases


def test_layers_random_in_training_before_the_head_have_no_cut() -> None:
    net = build_backbone("cnn2d", 3, input_size=64)
    net.features.insert(3, torch.nn.Dropout(0.2))  # a dropout between the convolutions
    FreezeBackbone().apply(net)
    assert "compute something else in training" in frozen_split(net, torch.randn(2, 3, 64, 64))


def _train_mode_outputs_agree(net: torch.nn.Module, x: torch.Tensor) -> None:
    """In training (frozen batch norm in inference, as the module sets it), the cut gives
    the whole network's outputs, auxiliary ones included, under the same dropout draws."""
    FreezeBackbone().apply(net)
    split = frozen_split(net, x[:2])
    assert not isinstance(split, str), split
    module = ClassifierModule(net, ["a", "b", "c"])
    module.train()
    torch.manual_seed(0)
    whole = net(x)
    torch.manual_seed(0)
    cut = split.suffix(split.prefix(x))
    for a, b in zip(whole if isinstance(whole, tuple) else (whole,),
                    cut if isinstance(cut, tuple) else (cut,), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_cut_is_the_network_for_timm_with_batch_norm_and_rr_features() -> None:
    torch.manual_seed(0)
    _train_mode_outputs_agree(build_backbone("timm:resnet18", 3, dropout=0.2, input_size=64),
                              torch.randn(4, 3, 64, 64))
    _train_mode_outputs_agree(XResNet1d(3, num_features=4), torch.randn(4, 1, 191))


@pytest.mark.slow
def test_the_cut_is_the_network_for_inception_v3_with_its_auxiliary_head() -> None:
    torch.manual_seed(0)
    _train_mode_outputs_agree(build_backbone("inception_v3", 3, input_size=299),
                              torch.randn(2, 3, 299, 299))


def test_gradual_resumed_inside_its_cached_phase_leaves_the_cache_at_its_epoch(
        images, tmp_path, monkeypatch) -> None:
    """A gradual run stopped after epoch 0 and resumed (unfreeze at epoch 2): epoch 1 is
    cached, epoch 2 trains the whole network on images, as in the uninterrupted run."""
    args = ["model=cnn2d", "data=image_folder", f"data.root={images}", "data.num_workers=0",
            "data.batch_size=8", "data.augment.rotation=0", "freeze=gradual",
            "freeze.unfreeze_at_epoch=2", f"paths.data_dir={tmp_path / 'prepared'}",
            # the stop after epoch 0 is max_epochs=1: cosine keeps the whole run's length
            "scheduler.T_max=3"]
    whole = _fit(tmp_path / "whole", [*args, "trainer.max_epochs=3"], monkeypatch)
    _fit(tmp_path / "parts", [*args, "trainer.max_epochs=1"], monkeypatch)
    resumed = _fit(tmp_path / "parts", [*args, "trainer.max_epochs=3", "resume=true"],
                   monkeypatch)
    _same_training(resumed, whole)
