"""Real training of cnn1d on real public beat rows, tracked in a real MLflow SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from ecg_experiments.config import PROJECT_ROOT
from ecg_experiments.tasks.train import train


def _runs(tracking_uri: str):
    client = mlflow.MlflowClient(tracking_uri)
    experiments = client.search_experiments()
    return client, client.search_runs([e.experiment_id for e in experiments])


def test_training_lowers_val_loss_and_mlflow_holds_the_returned_metrics(
    compose_train, kachuee_mitbih_csv: Path, tmp_path: Path
) -> None:
    cfg = compose_train([
        "data=beats_csv", f"data.train_file={kachuee_mitbih_csv}", "data.batch_size=32",
        # 12 epochs: the default cosine schedule on these 350 training rows gives 66 steps
        # in 6 epochs, too few (test accuracy 0.35; Adam at a constant rate 0.47; 12: 0.61)
        "trainer.max_epochs=12", "trainer=cpu", "callbacks.early_stopping.patience=20",
    ])
    metrics = train(cfg)

    client, runs = _runs(cfg.logger.tracking_uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    history = [m.value for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert len(history) == 12
    assert history[-1] < history[0] - 0.1, history
    # what train() returns is exactly what MLflow stores
    test_metrics = {k: v for k, v in metrics.items() if k.startswith("test/")}
    aami = [k for k in test_metrics if k.startswith("test/aami/")]  # EC57, tests/test_aami.py
    ci = [k for k in test_metrics if "_ci_" in k and k not in aami]
    assert len(test_metrics) - len(ci) - len(aami) == 26  # loss, 5 averages, 4 x 5 classes
    assert len(ci) == 2 * (2 + 5)  # low/high of acc, macro-F1 and recall per class
    for key, value in test_metrics.items():
        assert run.data.metrics[key] == value, key
    assert metrics["test/acc"] > 0.4  # 5 balanced classes: chance is 0.2
    assert run.data.params["model.net._target_"] == "ecg_experiments.models.cnn1d.KachueeCNN1d"
    # the defaults as shipped: AdamW at 2e-3 on a cosine schedule (docs/results.md, "The defaults")
    assert run.data.params["optimizer._target_"] == "torch.optim.AdamW"
    assert run.data.params["optimizer.lr"] == "0.002"
    assert run.data.params["scheduler._target_"] == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert run.data.tags["choice.model"] == "cnn1d"
    assert len(run.data.tags["data.train_file.sha256"]) == 64
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "split.csv"} <= artifacts
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["data"]["train_file"] == str(kachuee_mitbih_csv)
    # the monitored validation value is the best one seen
    best = max(m.value for m in client.get_metric_history(run.info.run_id, "val/f1_macro"))
    assert metrics["val/f1_macro"] == pytest.approx(best)


def test_sgdm_plateau_without_tracking(compose_train, kachuee_mitbih_csv: Path, tmp_path) -> None:
    """SGD with momentum and a plateau scheduler on the validation metric: with a learning
    rate too small to move the metric and patience 0, every epoch after the first halves
    the rate (and the optimizer keeps its momentum)."""
    import torch

    cfg = compose_train([
        "data=beats_csv", f"data.train_file={kachuee_mitbih_csv}", "optimizer=sgdm",
        "optimizer.lr=1e-6", "scheduler=plateau", "scheduler.patience=0", "logger=none",
        "trainer.max_epochs=3", "loss.class_weights=balanced", "loss.label_smoothing=0.1",
    ])
    metrics = train(cfg)
    assert "test/acc" in metrics
    assert not (tmp_path / "mlflow.db").exists()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    [group] = saved["optimizer_states"][0]["param_groups"]
    assert group["momentum"] == 0.9 and group["lr"] == pytest.approx(1e-6 * 0.5 ** 2)
    [plateau] = saved["lr_schedulers"]
    assert plateau["mode"] == "max" and plateau["num_bad_epochs"] == 0  # reset at each cut


@pytest.mark.slow  # a CLI process; test_everyday_use's run into a log checks the same
def test_cli_records_one_finished_run(kachuee_mitbih_csv: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [
            sys.executable, "-m", "ecg_experiments.train", "data=beats_csv",
            f"data.train_file={kachuee_mitbih_csv}", "trainer.max_epochs=3",
            f"paths.outputs_dir={tmp_path}", f"logger.tracking_uri={uri}",
        ],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Test metrics per class" in result.stdout
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["ecg-experiments"])
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    assert "metrics.test/f1_macro" in runs.columns
    assert list((tmp_path / "runs").glob("*/*/checkpoints/last.ckpt"))


@pytest.mark.slow  # a CLI process; the bad-input suite covers the same cases
def test_cli_user_error_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ecg_experiments.train", "data=beats_csv",
         f"data.train_file={tmp_path / 'missing.csv'}", f"paths.outputs_dir={tmp_path}",
         "logger=none"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert f"error: {tmp_path / 'missing.csv'}: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_training_from_raw_mitbih_records_logs_recipe_and_split(
    compose_train, mitdb_dir: Path, tmp_path: Path
) -> None:
    cfg = compose_train([
        f"paths.mitdb_dir={mitdb_dir}", "data.records=[100,105,119,208,217]",
        "data.download=false", "trainer.max_epochs=1", "trainer.limit_train_batches=20",
    ])
    # the default dataset: the mitdb preset of data=physionet
    assert cfg.data._target_.endswith("PhysionetDataModule") and cfg.data.database == "mitdb"
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.5
    client, runs = _runs(cfg.logger.tracking_uri)
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["data.split"] == "random"
    assert run.data.params["data.recipe._target_"] == "ecg_experiments.data.segment.KachueeRecipe"
    assert run.data.tags["data.recipe"] == "kachuee" and run.data.tags["data.split"] == "random"
    split = (tmp_path / "run" / "split.csv").read_text().splitlines()
    assert split[0] == "index,split,record,sample,label,sample_id,also_id"
    prepared = list((tmp_path / "outputs" / "data").glob("mitdb-kachuee-*/splits/*/split.csv"))
    assert len(prepared) == 1
