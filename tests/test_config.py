"""Config composition and the checks that run before any work starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecg_experiments.config import validate_train_config
from ecg_experiments.errors import ConfigError
from ecg_experiments.tasks.train import train

CSV = ["data=beats_csv", "data.train_file=unused.csv"]


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgdm"])
@pytest.mark.parametrize("scheduler", ["none", "cosine", "plateau"])
def test_optimizer_and_scheduler_options_compose(compose_train, optimizer, scheduler) -> None:
    from hydra.utils import instantiate

    cfg = compose_train([*CSV, f"optimizer={optimizer}", f"scheduler={scheduler}"])
    validate_train_config(cfg)
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = instantiate(cfg.optimizer)(params)
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    if scheduler == "none":
        assert cfg.scheduler is None
    else:
        assert instantiate(cfg.scheduler)(opt) is not None
    if optimizer == "sgdm":
        assert opt.param_groups[0]["momentum"] == 0.9


def test_logger_none_and_trainer_options(compose_train) -> None:
    assert compose_train([*CSV, "logger=none"]).logger is None
    assert compose_train([*CSV, "trainer=cpu"]).trainer.accelerator == "cpu"
    assert compose_train([*CSV]).logger.tracking_uri.startswith("sqlite:///")


def test_num_classes_flows_from_data_to_model(compose_train) -> None:
    cfg = compose_train([*CSV, "data.class_names=[normal,abnormal]"])
    assert cfg.model.net.num_classes == 2


def test_kind_mismatch_names_both_options(compose_train) -> None:
    cfg = compose_train([*CSV, "model.input_kind=image"])
    with pytest.raises(ConfigError, match=r"model=cnn1d expects image input but data=beats_csv"):
        validate_train_config(cfg)


def test_monitoring_a_test_metric_is_refused(compose_train) -> None:
    cfg = compose_train([*CSV, "monitor.metric=test/f1_macro"])
    with pytest.raises(ConfigError, match="validation metrics"):
        validate_train_config(cfg)


@pytest.mark.parametrize("override,message", [
    ("optimizer.lr=0", "optimizer.lr=0"),
    ("optimizer.lr=-0.1", "must be > 0"),
    ("data.batch_size=0", "data.batch_size=0"),
    ("monitor.mode=maximum", "monitor.mode"),
    # Lightning's "until trainer.max_time": the default cosine schedule would alternate
    ("trainer.max_epochs=-1", r"scheduler.T_max=-1 .*scheduler=none"),
])
def test_out_of_range_options(compose_train, override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_train_config(compose_train([*CSV, override]))


def test_a_time_bounded_run_takes_a_constant_rate_or_its_own_schedule_length(
        compose_train) -> None:
    for fixed in ("scheduler=none", "scheduler.T_max=30"):
        validate_train_config(compose_train([*CSV, "trainer.max_epochs=-1", fixed]))


def test_no_validation_split_refuses_what_would_monitor_it(compose_train) -> None:
    base = ["data=mitbih", "data.split=interpatient", "data.val_fraction=0"]
    with pytest.raises(ConfigError, match=r"val_fraction=0: no validation split, but "
                       r"callbacks.model_checkpoint, callbacks.early_stopping monitor "
                       r"val/f1_macro; train a fixed epoch count"):
        validate_train_config(compose_train(base))
    with pytest.raises(ConfigError, match=r"scheduler=plateau monitors"):
        validate_train_config(compose_train([
            *base, "scheduler=plateau", "callbacks.model_checkpoint.monitor=null",
            "callbacks.early_stopping=null"]))
    # turned off on purpose: a fixed-epoch final fit is what this test is about
    fixed = ["callbacks.model_checkpoint.monitor=null", "callbacks.early_stopping=null"]
    validate_train_config(compose_train([*base, *fixed]))
    validate_train_config(compose_train([*base, "cv.folds=5"]))  # CV makes its own folds


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_trainer_gpu_without_gpu_fails_clearly(compose_train) -> None:
    cfg = compose_train([*CSV, "trainer=gpu"])
    with pytest.raises(ConfigError, match=r"trainer=gpu .*needs a CUDA GPU"):
        train(cfg)


def test_balanced_class_weights(compose_train, tmp_path) -> None:
    from ecg_experiments.data.beats import BeatsDataModule, write_beats_csv
    from ecg_experiments.runs.fit_setup import class_weights as _class_weights

    labels = [0] * 60 + [1] * 20 + [2] * 20  # class 3 and 4 absent
    path = tmp_path / "b.csv"
    # distinct rows: identical ones would be kept in one split
    write_beats_csv(path, np.random.default_rng(0).random((100, 187)), np.array(labels))
    datamodule = BeatsDataModule(str(path), val_fraction=0.2, test_fraction=0.2)
    datamodule.setup()
    cfg = compose_train(["data=beats_csv", "data.train_file=x.csv", "loss.class_weights=balanced"])
    weights = _class_weights(cfg, datamodule)
    # training split: 36 / 12 / 12 -> 60 / (3 x count)
    assert weights == pytest.approx([60 / (3 * 36), 60 / (3 * 12), 60 / (3 * 12), 0.0, 0.0])
    # tempered: their square root (the rare class still weighs more, 1.73x instead of 3x)
    cfg = compose_train(["data=beats_csv", "data.train_file=x.csv", "loss.class_weights=balanced",
                         "loss.class_weight_power=0.5"])
    tempered = _class_weights(cfg, datamodule)
    assert tempered == pytest.approx([(60 / 108) ** 0.5, (60 / 36) ** 0.5, (60 / 36) ** 0.5, 0, 0])


@pytest.mark.parametrize(("overrides", "message"), [
    (["loss.class_weight_power=1.5"],
     r"loss.class_weight_power=1.5: expected a number in \[0, 1\]"),
    (["loss.class_weight_power=0.5"], r"tempers balanced class weights, but "
                                      r"loss.class_weights=None"),
    (["loss.class_weight_power=0.5", "loss.class_weights=[1,2,3,4,5]"],
     r"but loss.class_weights=.*use loss.class_weights=balanced"),
])
def test_class_weight_power_refused_without_balanced_weights(compose_train, overrides,
                                                             message) -> None:
    cfg = compose_train(["data=beats_csv", "data.train_file=x.csv", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate_train_config(cfg)
