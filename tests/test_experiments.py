"""Every experiment config trains for real as configured (its callbacks, checkpointing, early
stopping or fixed epochs, the MLflow logger, the report): one short epoch on the shared raw
records."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecg_experiments.config import CONFIG_DIR
from ecg_experiments.tasks.train import train
from tests.conftest import all_runs, shared_path

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# images: a few per class, small batches; ImageNet weights cannot be downloaded here
IMAGES = ["data.max_per_class=8", "data.batch_size=4", "data.num_workers=0",
          "model.pretrained=null", "data.source.beats.download=false",
          "data.source.beats.records=[100,119,208,213,217]"]
# small amounts, nothing turned off: one epoch of a few batches, a quicker preparation
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=3",
         "trainer.limit_val_batches=2", "report.bootstrap_rounds=50",
         "report.attribution_per_group=1", "report.attribution_steps=4"]


def test_the_seed_studies_are_all_there() -> None:
    assert EXPERIMENTS == ["accuracy_interpatient", "accuracy_random", "alexnet_spectrogram",
                           "cnn1d_balanced_noise_transfer", "cnn1d_mitbih", "cnn2d_beat_images",
                           "crossdb", "inception_ecg_images"]


# AlexNet at 227 px and Inception v3 at 299 px take ~20-30 s each on 2 cores: `-m slow`
# accuracy_interpatient is crossdb without also_test: crossdb's row covers it by default
SLOW = {"alexnet_spectrogram", "inception_ecg_images", "accuracy_interpatient"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in EXPERIMENTS])
def test_experiment_trains_an_epoch_as_configured(name: str, compose_train,
                                                  tmp_path: Path) -> None:
    mitdb = shared_path("mitdb")
    cfg = compose_train([f"experiment={name}", f"paths.mitdb_dir={mitdb}"])
    image = cfg.model.input_kind == "image"
    overrides = IMAGES if image else ["data.download=false",
                                      "data.records=[100,119,208,213,217]"]
    if cfg.get("also_test"):  # the other database's first records, read from the shared copy
        overrides += [f"also_test.svdb.dir={shared_path('svdb')}",
                      "also_test.svdb.download=false", "also_test.svdb.records=[800,801]"]
    cfg = compose_train([f"experiment={name}", f"paths.mitdb_dir={mitdb}", *SHORT,
                         *overrides])
    assert cfg.experiment_name == name.replace("_", "-")
    metrics = train(cfg)
    assert "test/acc" in metrics
    runs = all_runs(tmp_path)
    [run] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert run.info.status == "FINISHED"
    assert run.data.tags["choice.experiment"] == name
    assert run.data.tags["model.checkpoint"].endswith(".ckpt")  # the logged model's
    checkpoints = sorted(p.name for p in (Path(cfg.paths.run_dir) / "checkpoints").iterdir())
    assert checkpoints == ["epoch_000.ckpt", "last.ckpt"]
    assert (Path(cfg.paths.run_dir) / "report").is_dir()
    if name == "cnn1d_balanced_noise_transfer":
        assert {"noise/acc_clean", "noise/acc_snr0db"} <= set(metrics)
        assert run.data.params["data.balance_to"] == "16000"
    if name == "crossdb":  # the other database as a child run, and in the table
        [child] = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert child.data.tags["also_test"] == "svdb" and child.info.status == "FINISHED"
        assert child.info.run_name == f"eval-{run.info.run_name}-on-svdb"
        assert {d.dataset.name for d in child.inputs.dataset_inputs} == {
            "svdb centered all test"}  # its records cut as the model was trained
        assert "also_test/svdb/acc" in metrics
