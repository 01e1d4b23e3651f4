"""Mixed precision and channels-last: chosen per machine, falling back in one log line, and
composing with checkpoints, evaluate and predict (the contract matrix's cnn2d+bf16 row runs
every step: train, evaluate, predict, explain, export, init_from)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ecg_experiments.errors import ConfigError
from ecg_experiments.models import precision
from ecg_experiments.models.checkpoint import load_trained_model
from ecg_experiments.models.precision import cpu_has_bf16, resolve_precision
from ecg_experiments.tasks.evaluate import evaluate
from ecg_experiments.tasks.predict import predict
from ecg_experiments.tasks.train import train
from tests.conftest import FAST, compose_config

CSV_RUN = ["data=beats_csv", "trainer.max_epochs=1", "report.bootstrap_rounds=0"]


def test_auto_is_bf16_on_a_cpu_with_bf16_and_float32_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("auto", "cpu") == ("bf16-mixed" if cpu_has_bf16() else "32-true")
    if cpu_has_bf16():  # float16 autocast is a GPU's: the CPU runs (and says) bf16
        assert resolve_precision("16-mixed", "cpu") == "bf16-mixed"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("32-true", "cpu") == "32-true"


@pytest.mark.parametrize("requested", ["bf16-mixed", "16-mixed"])
def test_a_cpu_without_bf16_trains_in_float32_and_says_so_once(
        requested, small_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    cfg = compose_config(tmp_path, [*CSV_RUN, f"data.train_file={small_csv}",
                                    f"trainer.precision={requested}"])
    with caplog.at_level(logging.WARNING, logger="ecg_experiments.models.precision"):
        metrics = train(cfg)
    assert "test/acc" in metrics
    lines = [r.getMessage() for r in caplog.records if "bfloat16" in r.getMessage()]
    assert len(lines) == 1 and f"trainer.precision={requested}" in lines[0]
    saved = OmegaConf.load(Path(cfg.paths.run_dir) / "config.yaml")
    assert saved.trainer.precision == "32-true"  # the run says what it ran in


def test_channels_last_is_refused_for_signal_models_before_any_work(tmp_path: Path) -> None:
    cfg = compose_config(tmp_path, [*CSV_RUN, "data.train_file=/nonexistent.csv",
                                    "+model.channels_last=true"])
    with pytest.raises(ConfigError, match=r"model.channels_last=true: model=cnn1d takes "
                                          r"signal input"):
        train(cfg)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bfloat16 kernels")
def test_bf16_channels_last_run_stores_float32_weights_and_probabilities(
        small_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 run's checkpoint holds float32 weights in the usual layout's values; evaluate
    and predict (float32 by default, bf16 when asked) agree with it."""
    from ecg_experiments.data.beats import read_beats_csv
    from ecg_experiments.data.render import WaveformRenderer, write_images

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    x, y = read_beats_csv(small_csv)
    images = tmp_path / "images"
    for label, name in enumerate("NSV"):
        (images / name).mkdir(parents=True)
        rows = (y == label).nonzero()[0][:16]
        write_images(WaveformRenderer(), x[rows], 125.0, 64,
                     [images / name / f"{i:03d}.png" for i in range(len(rows))])
    cfg = compose_config(tmp_path / "train", [
        "model=cnn2d", "data=image_folder", f"data.root={images}", "data.num_workers=0",
        "data.batch_size=8", "trainer.precision=bf16-mixed", "model.channels_last=true",
        *FAST, "report.bootstrap_rounds=0"])
    metrics = train(cfg)
    assert OmegaConf.load(Path(cfg.paths.run_dir) / "config.yaml").trainer.precision == \
        "bf16-mixed"
    [ckpt] = Path(cfg.paths.run_dir).glob("checkpoints/epoch*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert {v.dtype for k, v in state.items() if k.startswith("net.")
            and v.is_floating_point()} == {torch.float32}
    trained = load_trained_model(ckpt)
    assert trained.config.model.channels_last is True
    full = evaluate(compose_config(tmp_path / "e", [f"ckpt={ckpt}", "logger=none",
                                                    "report.bootstrap_rounds=0"], "eval"))
    half = evaluate(compose_config(tmp_path / "e16", [f"ckpt={ckpt}", "logger=none",
                                                      "report.bootstrap_rounds=0",
                                                      "trainer.precision=bf16-mixed"], "eval"))
    # the fit's test ran in bf16: the same numbers as a bf16 evaluation, near float32's
    assert half["test/acc"] == pytest.approx(metrics["test/acc"])
    assert abs(full["test/acc"] - metrics["test/acc"]) <= 0.1
    frames = [predict(compose_config(tmp_path / f"p{p}", [
        f"ckpt={ckpt}", f"input={images}", "allow_seen=true", f"precision={p}"], "predict"))
        for p in ("32-true", "bf16-mixed")]
    probs = [f.filter(like="prob_").to_numpy() for f in frames]
    assert probs[0].dtype == probs[1].dtype == "float32"
    assert abs(probs[0] - probs[1]).max() < 0.05  # bf16: ~3 significant digits
    assert abs(probs[0] - probs[1]).max() > 0  # bf16 was used
