"""Freezing policies leave exactly the expected parameters trainable."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ecg_experiments.data.beats import BeatsDataModule
from ecg_experiments.errors import ConfigError
from ecg_experiments.models.classifier import ClassifierModule
from ecg_experiments.models.cnn1d import KachueeCNN1d
from ecg_experiments.models.freezing import (
    FreezeAllButLastN,
    FreezeBackbone,
    GradualUnfreezing,
    NoFreezing,
    count_trainable,
)
from tests.conftest import FAST

HEAD = (64 * 32 + 32) + (32 * 32 + 32) + (32 * 5 + 5)  # dense 64->32->32->5
LAST_CONV = 32 * 32 * 5 + 32


def _net() -> KachueeCNN1d:
    return KachueeCNN1d(num_classes=5)


def test_none_trains_everything() -> None:
    net = _net()
    NoFreezing().apply(net)
    # stem 192 + 10 convs x 5,152 + head 3,301
    assert count_trainable(net) == sum(p.numel() for p in net.parameters()) == 55_013


def test_backbone_trains_only_the_head() -> None:
    net = _net()
    FreezeBackbone().apply(net)
    assert count_trainable(net) == HEAD == 3_301
    assert not net.stem.weight.requires_grad


@pytest.mark.parametrize("n,expected", [(1, 32 * 5 + 5), (3, HEAD), (4, HEAD + LAST_CONV)])
def test_last_n_layers(n: int, expected: int) -> None:
    net = _net()
    FreezeAllButLastN(n).apply(net)
    assert count_trainable(net) == expected


def test_last_n_out_of_range() -> None:
    with pytest.raises(ConfigError, match="freeze.n=0"):
        FreezeAllButLastN(0)
    with pytest.raises(ConfigError, match="freeze.n=15 but KachueeCNN1d has only 14 layers"):
        FreezeAllButLastN(15).apply(_net())


def test_gradual_unfreezes_the_backbone_at_the_given_epoch(small_csv, tmp_path) -> None:
    pl.seed_everything(0)
    net = _net()
    policy = GradualUnfreezing(unfreeze_at_epoch=1, backbone_lr_factor=0.1)
    policy.apply(net)
    stem_before = net.stem.weight.detach().clone()
    module = ClassifierModule(net, list("NSVFQ"), optimizer=lambda p: torch.optim.Adam(p, 1e-3))

    class Watch(pl.Callback):
        stem_after_first_epoch = None

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 0:
                Watch.stem_after_first_epoch = pl_module.net.stem.weight.detach().clone()

    # the policy's own callback on a bare Trainer (train() as configured is tested below)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[*policy.callbacks(), Watch()],
                         default_root_dir=tmp_path)
    trainer.fit(module, datamodule=BeatsDataModule(str(small_csv), batch_size=32))
    assert torch.equal(Watch.stem_after_first_epoch, stem_before)  # frozen in epoch 0
    assert not torch.equal(net.stem.weight.detach(), stem_before)  # trained after epoch 1
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)


def test_grid_search_config_sweeps_unfrozen_layers(compose_train) -> None:
    cfg = compose_train(["hparams_search=grid", "data=beats_csv", "data.train_file=x.csv"])
    assert cfg.freeze._target_.endswith("FreezeAllButLastN")


def test_gradual_unfreezing_through_train_as_configured(compose_train, small_csv,
                                                        tmp_path) -> None:
    """freeze=gradual as a user runs it (train(), the MLflow logger and its learning-rate
    monitor, checkpoints): epoch 1 trains the head alone, at epoch 2 the backbone joins
    with a tenth of the rate, and a checkpoint holds both parameter groups."""
    import mlflow

    from ecg_experiments.tasks.train import train
    from tests.conftest import all_runs

    cfg = compose_train(["data=beats_csv", f"data.train_file={small_csv}", *FAST,
                         "freeze=gradual", "freeze.unfreeze_at_epoch=1",
                         "trainer.max_epochs=3", "optimizer=adam", "optimizer.lr=2e-3",
                         "scheduler=none"])  # constant rates: the groups' ratio reads plainly
    train(cfg)
    [run] = all_runs(tmp_path)
    assert int(run.data.params["model.params_trainable"]) == HEAD  # the head only at first
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rates = {key: [m.value for m in client.get_metric_history(run.info.run_id, key)]
             for key in ("lr-Adam", "lr-Adam/pg1", "lr-Adam/pg2")}
    # one group (the head) first, two once the backbone joined (Lightning's monitor names)
    assert rates["lr-Adam"] and rates["lr-Adam/pg2"]
    assert rates["lr-Adam"] + rates["lr-Adam/pg1"] == pytest.approx(
        [2e-3] * (len(rates["lr-Adam"]) + len(rates["lr-Adam/pg1"])))
    assert rates["lr-Adam/pg2"] == pytest.approx([2e-4] * len(rates["lr-Adam/pg2"]))
    saved = torch.load(cfg.paths.run_dir + "/checkpoints/last.ckpt", weights_only=False)
    groups = saved["optimizer_states"][0]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([2e-3, 2e-4])
    assert sum(len(g["params"]) for g in groups) == len(
        [k for k in saved["state_dict"] if k.startswith("net.")])  # every weight trains


def _frozen_state(net: torch.nn.Module) -> set[str]:
    """The state-dict entries a freezing policy left frozen: parameters that take no gradient
    and the running statistics of batch-norm layers whose parameters are all frozen."""
    names = {n for n, p in net.named_parameters() if not p.requires_grad}
    for prefix, module in net.named_modules():
        params = list(module.parameters(recurse=False))
        if (isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and params
                and not any(p.requires_grad for p in params)):
            names |= {f"{prefix}.{b}" for b, _ in module.named_buffers()}
    return names


@pytest.mark.parametrize("model", [
    ["model=timm", "model.name=resnet18", "model.input_size=32"],
    pytest.param(["model=inception_v3"], marks=pytest.mark.slow),
], ids=["timm-resnet18", "inception_v3"])
def test_frozen_layers_are_identical_after_an_epoch_of_training(model, compose_train,
                                                                tmp_path) -> None:
    """freeze=backbone through a real run: every frozen tensor, batch-norm running statistics
    included, leaves training exactly as it came from the weights file."""
    import numpy as np
    from PIL import Image

    from ecg_experiments.config import build
    from ecg_experiments.tasks.train import train

    rng = np.random.default_rng(0)
    for k, name in enumerate(["low", "high"]):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(rng.normal(60 + 120 * k, 30, (40, 40, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    data = ["data=image_folder", f"data.root={tmp_path / 'images'}", "data.num_workers=0",
            "data.batch_size=4", "data.class_names=[high,low]"]
    # the starting weights: a fresh network whose batch-norm statistics are not the defaults
    start = build(compose_train([*model, *data]).model.net)
    for module in start.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    weights = tmp_path / "start.pth"
    torch.save(start.state_dict(), weights)
    cfg = compose_train([*model, *data, f"model.pretrained={weights}", "freeze=backbone",
                         *FAST[1:], "trainer.max_epochs=1"])
    train(cfg)
    frozen_net = build(cfg.model.net)
    build(cfg.freeze).apply(frozen_net)
    frozen = _frozen_state(frozen_net)
    assert any(name.endswith("running_mean") for name in frozen)
    trained = torch.load(next((Path(cfg.paths.run_dir) / "checkpoints").glob("epoch_*.ckpt")),
                         map_location="cpu", weights_only=True)["state_dict"]
    initial = torch.load(weights, weights_only=True)
    changed = [n for n in frozen if not torch.equal(trained[f"net.{n}"], initial[n])]
    assert not changed, changed[:5]
    assert any(p.requires_grad for p in frozen_net.parameters())  # the head trains
