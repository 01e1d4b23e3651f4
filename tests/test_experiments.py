"""Every experiment config composes and trains one fast_dev_run step on the shared raw records."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecg_experiments.config import CONFIG_DIR
from ecg_experiments.tasks.train import train
from tests.conftest import all_runs, shared_path

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# images: a few per class, small batches; ImageNet weights cannot be downloaded here
IMAGES = ["data.max_per_class=8", "data.batch_size=4", "data.num_workers=0",
          "model.pretrained=null", "data.source.beats.download=false"]


def test_the_seed_studies_are_all_there() -> None:
    assert EXPERIMENTS == ["accuracy_interpatient", "accuracy_random", "alexnet_spectrogram",
                           "cnn1d_balanced_noise_transfer", "cnn1d_mitbih", "cnn2d_beat_images",
                           "crossdb", "inception_ecg_images"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_one_fast_dev_run_step(name: str, compose_train, tmp_path: Path) -> None:
    mitdb = shared_path("mitdb")
    cfg = compose_train([f"experiment={name}", "trainer.fast_dev_run=true",
                         f"paths.mitdb_dir={mitdb}", "report.bootstrap_rounds=0",
                         "report.log_model=false"])
    overrides = IMAGES if cfg.model.input_kind == "image" else [
        "data.download=false", "data.records=[100,119,208,213,217]"]  # a quicker preparation
    cfg = compose_train([f"experiment={name}", "trainer.fast_dev_run=true",
                         f"paths.mitdb_dir={mitdb}", "report.bootstrap_rounds=0",
                         "report.log_model=false", "report.attribution_per_group=0",
                         *overrides])
    assert cfg.experiment_name == name.replace("_", "-")
    metrics = train(cfg)
    assert "test/acc" in metrics
    runs = all_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["choice.experiment"] == name
    if name == "cnn1d_balanced_noise_transfer":
        assert {"noise/acc_clean", "noise/acc_snr0db"} <= set(metrics)
        assert runs[0].data.params["data.balance_to"] == "16000"
