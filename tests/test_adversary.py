"""Patient-invariant training (`adversary=records`, models/adversary.py): the reversed
gradient, its schedule, a real fit on mitdb records whose record classifier knows this fit's
training records, a resumed fit that continues it, and the refusals."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from ecg_experiments.config import validate_train_config
from ecg_experiments.errors import ConfigError
from ecg_experiments.models.adversary import GradientReversal, RecordAdversary
from ecg_experiments.models.checkpoint import load_trained_model
from ecg_experiments.tasks.train import train
from tests.conftest import compose_config, shared_path


def test_the_gradient_is_reversed_and_scaled_by_the_schedule() -> None:
    x = torch.ones(3, 4, requires_grad=True)
    (GradientReversal.apply(x, 0.25) * 2.0).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3, 4), -0.5))
    ganin = RecordAdversary(width=4, records=3, weight=0.2, schedule="ganin", gamma=10.0)
    assert ganin.coefficient(0.0) == 0.0
    assert ganin.coefficient(0.5) == pytest.approx(0.2 * (2 / (1 + math.exp(-5)) - 1))
    assert ganin.coefficient(1.0) == pytest.approx(0.2, abs=1e-4)
    assert RecordAdversary(4, 3, 0.2, "constant").coefficient(0.0) == 0.2
    for bad, match in (({"schedule": "linear"}, "adversary.schedule='linear'"),
                       ({"weight": 0}, "adversary.weight=0"), ({"records": 1}, "1 record")):
        with pytest.raises(ConfigError, match=match):
            RecordAdversary(**{"width": 4, "records": 3, **bad})


def test_the_features_get_the_record_classifiers_gradient_negated() -> None:
    torch.manual_seed(0)
    adversary = RecordAdversary(4, 3, 0.5, "constant")
    features = torch.randn(8, 4, 5, requires_grad=True)  # [batch, channels, positions]
    records = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss, accuracy = adversary(features, records, 0.0)
    assert float(accuracy) == pytest.approx(float(
        (adversary.classifier(features.mean(dim=-1)).argmax(-1) == records).float().mean()))
    loss.backward()
    classifier_grad = adversary.classifier[0].weight.grad.clone()
    reversed_grad = features.grad.clone()
    features.grad = None
    logits = adversary.classifier(features.flatten(2).mean(dim=-1))
    adversary.zero_grad()
    torch.nn.functional.cross_entropy(logits, records).backward()
    torch.testing.assert_close(reversed_grad, -0.5 * features.grad)
    # the record classifier itself learns with the plain gradient
    torch.testing.assert_close(classifier_grad, adversary.classifier[0].weight.grad)


def test_a_fit_learns_its_training_records_and_resumes_them(tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = ["experiment=accuracy_interpatient", "adversary=records",
            f"data.dir={shared_path('mitdb')}", "data.download=false",
            "data.records=[100,101,105,106,108,109,203,205]", "data.split=records",
            "data.val_fraction=0.25", "data.test_fraction=0.25", "trainer.max_epochs=1",
            "trainer.limit_train_batches=4", "test=false", "report.bootstrap_rounds=0",
            "report.attribution_per_group=0", f"paths.data_dir={tmp_path / 'data'}"]
    train(compose_config(tmp_path / "a", args))
    run_dir = tmp_path / "a" / "run"
    split = pd.read_csv(run_dir / "split.csv")
    training = sorted(split.loc[split["split"] == "train", "record"].unique())
    assert len(training) == 4
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    out = last["state_dict"]["adversary.classifier.2.weight"]
    assert out.shape[0] == len(training)  # one output per training record of this fit
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {"train/adversary_loss", "train/adversary_acc"} <= set(run.data.metrics)
    # the saved model is the network alone: evaluate, predict and export see no adversary
    model = load_trained_model(run_dir / "checkpoints" / "last.ckpt")
    assert not any("adversary" in name for name, _ in model.net.named_parameters())
    # a fit resumed from its checkpoint continues the record classifier
    train(compose_config(tmp_path / "b", [*args, "trainer.max_epochs=2",
                                          f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]))
    resumed = torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt",
                         map_location="cpu", weights_only=False)
    assert resumed["epoch"] == last["epoch"] + 1
    assert not torch.equal(resumed["state_dict"]["adversary.classifier.2.weight"], out)


@pytest.mark.parametrize("overrides,match", [
    (["data=beats_csv", "data.train_file=x.csv", "model=cnn1d"], "needs beats cut from records"),
    (["model=alexnet", "data=spectrogram"], "needs beats cut from records"),
    (["experiment=accuracy_interpatient", "freeze=last_n"], "keeps them fixed"),
])
def test_the_adversary_refuses_what_it_cannot_train(compose_train, overrides, match) -> None:
    cfg = compose_train([*overrides, "adversary=records"])
    with pytest.raises(ConfigError, match=match):
        validate_train_config(cfg)
