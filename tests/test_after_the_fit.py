"""What happens after training: the logged model, other test sets with a rebalanced training
split, and a failure after the test stage (issue: honest numbers, the smaller list)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch

from ecg_experiments.errors import DataError
from ecg_experiments.tasks.evaluate import evaluate
from ecg_experiments.tasks.train import train
from tests.conftest import FAST, all_runs, shared_path

MITDB = ["model=cnn1d", "data=mitbih", f"paths.mitdb_dir={shared_path('mitdb')}",
         "data.download=false", "data.records=[100,101,103,105,106,108]", "data.batch_size=64",
         "trainer.limit_train_batches=6"]


def test_without_a_test_the_logged_model_holds_the_weights_of_the_checkpoint_it_names(
        compose_train, tmp_path) -> None:
    # the "best" epoch is the one with the highest validation loss: the first, not the last
    cfg = compose_train([*MITDB, *FAST, "test=false", "monitor.metric=val/loss",
                         "monitor.mode=max", "callbacks.early_stopping=null"])
    train(cfg)
    [run] = all_runs(tmp_path)
    named = run.data.tags["model.checkpoint"]
    assert "epoch_000" in named  # not the last epoch: the module in memory holds other weights
    checkpoint = Path(cfg.paths.run_dir) / "checkpoints" / Path(named).name
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    logged = mlflow.pytorch.load_model(run.data.tags["model.uri"]).state_dict()
    last = torch.load(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt",
                      map_location="cpu", weights_only=True)["state_dict"]
    assert any(not torch.equal(last[f"net.{k}"], stored[f"net.{k}"]) for k in logged)
    for key, value in logged.items():
        assert torch.equal(value, stored[f"net.{key}"]), key


# resample takes the same path after the fit as undersample: `make test-all`
@pytest.mark.parametrize("balance", ["undersample", pytest.param("resample",
                                                                 marks=pytest.mark.slow)])
def test_other_test_sets_and_holdout_all_score_a_model_trained_on_a_rebalanced_split(
        balance, compose_train, tmp_path) -> None:
    cfg = compose_train([*MITDB, *FAST, f"data.balance={balance}", "data.balance_to=300",
                         "report.log_model=false", "+also_test.ds2.split=all",
                         "+also_test.ds2.records=[200,201]"])
    metrics = train(cfg)
    assert metrics["also_test/ds2/acc"] >= 0
    assert all(r.info.status == "FINISHED" for r in all_runs(tmp_path))
    checkpoint = next((Path(cfg.paths.run_dir) / "checkpoints").glob("epoch*.ckpt"))
    every = evaluate(compose_train([f"ckpt={checkpoint}", "holdout=all", "allow_seen=true",
                                    "logger=none", "report.bootstrap_rounds=0",
                                    "report.attribution_per_group=0"], "eval"))
    beats = sum(1 for _ in (Path(cfg.paths.run_dir) / "split.csv").open()) - 1
    assert every["test/samples"] == beats  # every beat once, none dropped or repeated


def test_a_failure_after_the_test_stage_leaves_the_run_failed_not_running(
        compose_train, tmp_path) -> None:
    cfg = compose_train([*MITDB, "trainer.max_epochs=1", "report.bootstrap_rounds=0",
                         "report.attribution_per_group=0", "report.log_model=false",
                         "+also_test.svdb.database=svdb", "+also_test.svdb.records=null",
                         f"+also_test.svdb.dir={tmp_path / 'no-svdb-here'}",
                         "+also_test.svdb.download=false"])
    with pytest.raises(DataError, match="svdb"):
        train(cfg)
    [run] = [r for r in all_runs(tmp_path) if "mlflow.parentRunId" not in r.data.tags]
    assert run.info.status == "FAILED"
    assert "test/acc" in run.data.metrics  # it failed after the test stage
