"""The run report, the logged model, and evaluate / predict / export / compare / explore."""

from __future__ import annotations

import shutil

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.evaluation.report import bootstrap_ci, report_table
from ecg_experiments.models.checkpoint import checkpoint_from_run, load_trained_model
from ecg_experiments.tasks.evaluate import evaluate
from ecg_experiments.tasks.explain import explain
from ecg_experiments.tasks.export import export_model
from ecg_experiments.tasks.predict import predict, rhythm_strip
from ecg_experiments.tasks.train import train
from tests.conftest import assert_export_matches_checkpoint, compose_config, shared_path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """One real run: cnn1d on the public sample rows, 4 epochs, tracked in its own store."""
    csv = shared_path("kachuee_samples", "mitbih_train_sample.csv")
    tmp = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = compose_config(tmp, ["data=beats_csv", f"data.train_file={csv}",
                                   "data.batch_size=32", "trainer.max_epochs=4",
                                   "report.bootstrap_rounds=200"])
        metrics = train(cfg)
    run = mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()])[0]
    return {"uri": uri, "metrics": metrics, "run": run, "tmp": tmp, "csv": csv}


def test_report_artifacts_ci_metrics_and_logged_model(trained_run) -> None:
    client = mlflow.MlflowClient(trained_run["uri"])
    run = trained_run["run"]
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/confusion_matrix.png", "report/roc.png", "report/learning_curves.png",
            "report/per_class.csv", "report/confidence_intervals.csv",
            "report/mean_attribution.png"} <= report
    metrics = run.data.metrics
    for name in ("acc", "f1_macro", "recall_N", "recall_Q"):
        low, high = metrics[f"test/{name}_ci_low"], metrics[f"test/{name}_ci_high"]
        assert low <= high
    assert metrics["test/acc_ci_low"] <= metrics["test/acc"] <= metrics["test/acc_ci_high"]
    table = pd.read_csv(trained_run["tmp"] / "run" / "report" / "per_class.csv")
    assert table["class"].tolist() == ["N", "S", "V", "F", "Q", "macro avg", "micro avg"]
    assert table.loc[:4, "support"].sum() == 75
    # the MLflow model predicts exactly what the best checkpoint predicts
    model = mlflow.pytorch.load_model(run.data.tags["model.uri"])
    checkpoint = checkpoint_from_run(run.info.run_id, trained_run["uri"],
                                     str(trained_run["tmp"] / "download"))
    reference = load_trained_model(checkpoint)
    x = torch.rand(32, 1, 187, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), reference.net(x).numpy(), atol=1e-6)
    assert reference.class_names == ["N", "S", "V", "F", "Q"]
    best_epoch = int(checkpoint.stem.split("_")[1])  # epoch_002.ckpt
    assert [row["epoch"] for row in reference.history] == list(range(best_epoch + 1))
    assert "val/loss" in reference.history[0]


def test_evaluate_run_id_reproduces_the_test_metrics(trained_run, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_run["uri"])
    source = trained_run["run"]
    cfg = compose_config(trained_run["tmp"] / "eval", [f"run_id={source.info.run_id}",
                                                        "report.bootstrap_rounds=50"], "eval")
    metrics = evaluate(cfg)
    expected = {k: v for k, v in trained_run["metrics"].items()
                if k.startswith("test/") and "_ci_" not in k}
    assert len([k for k in expected if "/aami/" not in k]) == 26  # the live metrics
    assert expected["test/aami/kappa"] > 0  # and the EC57 numbers, equal too
    for key, value in expected.items():
        assert metrics[key] == value, key
    client = mlflow.MlflowClient(trained_run["uri"])
    runs = client.search_runs([source.info.experiment_id],
                              filter_string=f"tags.`source.run_id` = '{source.info.run_id}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["test/f1_macro"] == trained_run["metrics"]["test/f1_macro"]


def test_predict_a_raw_record_one_row_per_annotated_beat(trained_run, tmp_path) -> None:
    mitdb = shared_path("mitdb")
    checkpoint = checkpoint_from_run(trained_run["run"].info.run_id, trained_run["uri"],
                                     str(tmp_path / "ckpt"))
    cfg = compose_config(tmp_path, [f"ckpt={checkpoint}", f"input={mitdb / '100.hea'}"],
                         "predict")
    frame = predict(cfg)
    assert len(frame) == 2273  # the annotated beats of record 100
    probs = frame[[f"prob_{c}" for c in "NSVFQ"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert set(frame["true"]) == {"N", "S", "V"} and set(frame["predicted"]) <= set("NSVFQ")
    written = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(written) == 2273 and list(written.columns[:4]) == ["record", "sample", "symbol",
                                                                  "true"]


def test_predict_draws_a_rhythm_strip_of_a_record(trained_run, tmp_path) -> None:
    """Record 208 (V and F beats): the strip of 10-40 s holds every predicted beat of that
    range, reference labels beneath and each disagreement marked."""
    mitdb = shared_path("mitdb")
    checkpoint = checkpoint_from_run(trained_run["run"].info.run_id, trained_run["uri"],
                                     str(tmp_path / "ckpt"))
    cfg = compose_config(tmp_path, [f"ckpt={checkpoint}", f"input={mitdb / '208'}",
                                    "strip.start=10", "strip.duration=30"], "predict")
    frame = predict(cfg)
    in_range = frame[(frame["sample"] >= 10 * 360) & (frame["sample"] < 40 * 360)]
    path, beats, wrong = rhythm_strip(frame, cfg.strip)
    assert path == tmp_path / "run" / "rhythm_strip.png" and path.stat().st_size > 20_000
    assert beats == len(in_range) > 30
    assert wrong == int((in_range["true"] != in_range["predicted"]).sum())
    assert {"V", "N"} <= set(in_range["true"])
    with Image.open(path) as picture:
        assert picture.size[0] > 1500  # 30 s drawn wide enough to read each label
    late = compose_config(tmp_path / "late", [f"ckpt={checkpoint}", f"input={mitdb / '208'}",
                                              "strip.start=5000"], "predict")
    with pytest.raises(ConfigError, match="strip.start=5000: record 208 lasts 1805.6 s"):
        predict(late)
    assert not (tmp_path / "late" / "run" / "predictions.csv").exists()  # refused first


def test_explain_beats_of_a_csv_and_of_a_record(trained_run, tmp_path) -> None:
    """Integrated gradients on the public rows and on record 208's V beats: one figure per
    beat, the same predicted class as predict, a table of what was explained."""
    mitdb = shared_path("mitdb")
    checkpoint = checkpoint_from_run(trained_run["run"].info.run_id, trained_run["uri"],
                                     str(tmp_path / "ckpt"))
    rows = explain(compose_config(tmp_path / "csv", [f"ckpt={checkpoint}",
                                                     f"input={trained_run['csv']}",
                                                     "items=[0,150,499]"], "explain"))
    assert list(rows["position"]) == [0, 150, 499]
    assert list(rows["true"]) == ["F", "N", "S"]  # the labels of those public rows
    folder = tmp_path / "csv" / "run" / "explain"
    assert sorted(p.name for p in folder.iterdir()) == [
        "000_row00000.png", "001_row00150.png", "002_row00499.png", "explanations.csv"]
    predicted = predict(compose_config(tmp_path / "p", [f"ckpt={checkpoint}",
                                                        f"input={trained_run['csv']}",
                                             "allow_seen=true"],
                                       "predict"))
    assert list(rows["predicted"]) == list(predicted["predicted"][[0, 150, 499]])
    first = explain(compose_config(tmp_path / "rec1", [f"ckpt={checkpoint}",
                                                       f"input={mitdb / '208'}", "limit=1"],
                                   "explain"))
    chosen = first["predicted"][0]  # this small model's call of 208's first beat
    beats = explain(compose_config(tmp_path / "rec", [f"ckpt={checkpoint}",
                                                      f"input={mitdb / '208'}",
                                                      f"only=[{chosen}]", "limit=3"], "explain"))
    assert len(beats) == 3 and set(beats["predicted"]) == {chosen}
    assert beats["figure"].str.contains(r"_208_s\d{7}\.png$").all()
    for option, message in (("target=X", "target=X: not a class of this model"),
                            ("items=[900]", r"items=\[900\]: .* holds 500 inputs")):
        with pytest.raises(ConfigError, match=message):
            explain(compose_config(tmp_path / "bad", [f"ckpt={checkpoint}",
                                                      f"input={trained_run['csv']}", option],
                                   "explain"))
    assert not (tmp_path / "bad" / "run" / "explain").exists()


def test_predict_a_record_without_annotations_and_a_csv(trained_run, tmp_path) -> None:
    mitdb = shared_path("mitdb")
    (tmp_path / "rec").mkdir()
    for ext in ("hea", "dat"):
        shutil.copy(mitdb / f"100.{ext}", tmp_path / "rec" / f"100.{ext}")
    checkpoint = checkpoint_from_run(trained_run["run"].info.run_id, trained_run["uri"],
                                     str(tmp_path / "ckpt"))
    cfg = compose_config(tmp_path, [f"ckpt={checkpoint}", f"input={tmp_path / 'rec' / '100'}"],
                         "predict")
    frame = predict(cfg)
    assert abs(len(frame) - 2273) <= 5  # XQRS finds the beats
    assert (frame["symbol"] == "?").all()
    cfg = compose_config(tmp_path / "csv", [f"ckpt={checkpoint}", f"input={trained_run['csv']}",
                                             "allow_seen=true"],
                         "predict")
    frame = predict(cfg)
    assert len(frame) == 500 and (frame["true"].value_counts() == 100).all()
    cfg = compose_config(tmp_path / "bad", [f"ckpt={checkpoint}", "input=/no/such/file.txt"],
                         "predict")
    with pytest.raises(DataError, match="expected a Kaggle-format .csv file or a WFDB record"):
        predict(cfg)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity(trained_run, tmp_path, fmt) -> None:
    checkpoint = checkpoint_from_run(trained_run["run"].info.run_id, trained_run["uri"],
                                     str(tmp_path / "ckpt"))
    cfg = compose_config(tmp_path, [f"ckpt={checkpoint}", f"format={fmt}"], "export")
    path, _ = export_model(cfg)
    assert path.name == ("model.onnx" if fmt == "onnx" else "model.pt")
    assert_export_matches_checkpoint(path, fmt, checkpoint)  # the file itself, read back


def test_bootstrap_interval_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=2000)
    pred = np.where(rng.random(2000) < 0.8, y, (y + 1) % 3)
    ci = bootstrap_ci(y, pred, ["a", "b", "c"], rounds=2000, seed=0)
    p = (pred == y).mean()
    half = 1.96 * np.sqrt(p * (1 - p) / len(y))
    assert ci["acc"][0] == pytest.approx(p - half, abs=0.004)
    assert ci["acc"][1] == pytest.approx(p + half, abs=0.004)
    assert ci == bootstrap_ci(y, pred, ["a", "b", "c"], rounds=2000, seed=0)  # seeded
    perfect = bootstrap_ci(y, y, ["a", "b", "c"], rounds=100, seed=0)
    assert perfect["acc"] == (1.0, 1.0) and perfect["recall_b"] == (1.0, 1.0)


def test_report_table_auroc_and_averages_against_sklearn() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    probs = np.array([[.8, .1, .1], [.4, .5, .1], [.2, .7, .1], [.3, .3, .4],
                      [.1, .1, .8], [.2, .2, .6], [.5, .2, .3], [.6, .3, .1]])
    metrics = {"test/acc": 0.625, "test/precision_macro": 0.1, "test/recall_macro": 0.2,
               "test/f1_macro": 0.3}
    table = report_table(metrics, y, probs, ["a", "b", "c"])
    for k in range(3):
        assert table.loc[k, "auroc"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))
        assert table.loc[k, "support"] == (y == k).sum()
    micro = table.set_index("class").loc["micro avg"]
    assert micro["f1"] == 0.625
    # micro specificity: true negatives over all negatives, pooled over classes
    pred = probs.argmax(axis=1)
    tn = sum(((y != k) & (pred != k)).sum() for k in range(3))
    assert micro["specificity"] == pytest.approx(tn / (2 * len(y)))


def test_macro_specificity_averages_the_classes_present_like_every_macro_figure() -> None:
    # class c is absent from the targets but predicted twice: its specificity (6/8) must not
    # enter the macro average, as it enters no other macro figure
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    pred = np.array([0, 2, 2, 1, 1, 0, 0, 1])
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    spec = [((y != k) & (pred != k)).sum() / (y != k).sum() for k in range(3)]
    metrics = {"test/acc": 0.75, **{f"test/specificity_{name}": spec[k]
                                    for k, name in enumerate("abc")}}
    table = report_table(metrics, y, probs, ["a", "b", "c"]).set_index("class")
    spec_a, spec_b = spec[:2]
    assert spec[2] == 6 / 8
    assert table.loc["macro avg", "specificity"] == pytest.approx((spec_a + spec_b) / 2)
    # one class only: no negatives, so no specificity to average (torchmetrics gives 0)
    only = report_table({"test/acc": 0.5, "test/specificity_a": 0.0}, np.zeros(4, dtype=int),
                        np.eye(3)[[0, 1, 0, 1]], ["a", "b", "c"]).set_index("class")
    assert np.isnan(only.loc["macro avg", "specificity"])


def test_compare_ranks_by_the_best_validation_epoch_and_refuses_test_metrics(tmp_path,
                                                                             capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("study", artifact_location=(tmp_path / "a").as_uri())
    # best validation F1 high > mid > low; the test F1 would rank them the other way round,
    # and the last epoch's validation F1 of "high" (0.2, after early stopping) is its lowest
    for name, best_f1, last_f1, test_f1, loss in (("low", 0.5, 0.5, 0.9, 0.3),
                                                  ("high", 0.9, 0.2, 0.5, 0.9),
                                                  ("mid", 0.7, 0.7, 0.7, 0.1)):
        run = client.create_run(experiment, run_name=name)
        client.log_metric(run.info.run_id, "best/val/f1_macro", best_f1)
        client.log_metric(run.info.run_id, "val/f1_macro", last_f1)
        client.log_metric(run.info.run_id, "test/f1_macro", test_f1)
        client.log_metric(run.info.run_id, "val/loss", loss)
        client.set_terminated(run.info.run_id)
    from ecg_experiments.compare import main

    main(["study", f"tracking_uri={uri}"])  # the CLI's function, printing its table
    stdout = capsys.readouterr().out
    lines = [line for line in stdout.splitlines() if " high " in line or " mid " in line
             or " low " in line]
    assert [n for line in lines for n in ("high", "mid", "low") if f" {n} " in line] == [
        "high", "mid", "low"]
    from ecg_experiments.compare import compare_runs

    assert "test/f1_macro" in stdout  # shown beside, for reading
    by_loss = compare_runs(uri, "study", "val/loss")  # no best/val/loss: the last value
    assert by_loss["name"].tolist() == ["mid", "low", "high"]  # a loss sorts ascending
    with pytest.raises(ConfigError, match="validation metric"):
        compare_runs(uri, "study", "test/f1_macro")
    with pytest.raises(ConfigError, match="no MLflow experiment named 'nope'"):
        compare_runs(uri, "nope")


def test_compare_ranks_a_cross_validation_by_its_parent_not_its_folds(tmp_path) -> None:
    from ecg_experiments.compare import compare_runs, parse_args

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("study", artifact_location=(tmp_path / "a").as_uri())

    def run(name: str, best: float, **tags: str) -> str:
        run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
        client.log_metric(run_id, "best/val/f1_macro", best)
        client.set_terminated(run_id)
        return run_id

    cv = run("cv", 0.80, **{"cv.folds": "2"})
    # each fold's best epoch is chosen on the data that scores it: 0.95 is not a result
    run("cv-fold0", 0.95, **{"cv.fold": "0", "mlflow.parentRunId": cv})
    run("cv-fold1", 0.85, **{"cv.fold": "1", "mlflow.parentRunId": cv})
    seeds = run("seeds", 0.75, **{"repeat.seeds": "42,1"})
    run("seeds-42", 0.99, **{"repeat.seed": "42", "mlflow.parentRunId": seeds})
    sweep = run("sweep", 0.0)
    run("trial", 0.90, **{"mlflow.parentRunId": sweep})  # a sweep's trial is a whole run
    run("plain", 0.70)
    table = compare_runs(uri, "study")
    assert table["name"].tolist() == ["trial", "cv", "seeds", "plain", "sweep"]
    everything = compare_runs(uri, "study", children=True)
    assert everything["name"].tolist()[:3] == ["seeds-42", "cv-fold0", "trial"]
    assert everything.set_index("name")["part"].to_dict()["cv-fold1"] == "fold 1"
    assert parse_args(["children=true"])["children"] == "true"
    with pytest.raises(ConfigError, match="children=maybe"):
        parse_args(["children=maybe"])


def test_explore_writes_distribution_examples_and_split_sizes(
    compose_train, kachuee_mitbih_csv, tmp_path
) -> None:
    from hydra.utils import instantiate

    from ecg_experiments.evaluation.explore import explore_data

    cfg = compose_train(["data=beats_csv", f"data.train_file={kachuee_mitbih_csv}"], "explore")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    files = explore_data(datamodule, tmp_path / "explore")
    assert all(path.stat().st_size > 1000 for path in files.values() if path.suffix == ".png")
    sizes = pd.read_csv(files["split_sizes"], index_col="split")
    assert sizes["total"].to_dict() == {"train": 350, "val": 75, "test": 75}
    assert (sizes[list("NSVFQ")].sum() == 100).all()


def test_a_model_evaluates_on_another_database_with_the_ec57_table(trained_run, monkeypatch,
                                                                   capsys) -> None:
    """Trained on MIT-BIH beats (125 Hz), evaluated on an svdb record (128 Hz, lead ECG1):
    the beats are cut at the model's rate and the run says which lead and rate it read."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained_run["uri"])
    source = trained_run["run"].info.run_id
    cfg = compose_config(trained_run["tmp"] / "crossdb", [
        f"run_id={source}", "data=physionet", "data.database=svdb",
        f"data.dir={shared_path('svdb')}", "data.records=[800]", "data.download=false",
        "holdout=all", "report.bootstrap_rounds=50"], "eval")
    metrics = evaluate(cfg)
    assert 0 <= metrics["test/aami/se_V"] <= 1 and metrics["test/aami/acc"] > 0
    assert "AAMI EC57" in capsys.readouterr().out
    client = mlflow.MlflowClient(trained_run["uri"])
    run = client.search_runs([trained_run["run"].info.experiment_id],
                             filter_string="tags.`data.databases` = 'svdb'")[0]
    assert run.data.tags["data.sources"] == ("lead ECG1 (1 record); 128 Hz -> 125 Hz "
                                             "(kachuee recipe)")
    assert run.data.tags["data.split"] == "all"
    table = pd.read_csv(trained_run["tmp"] / "crossdb" / "run" / "report" / "aami.csv")
    beats = table.loc[table["class"] == "overall", "support"].item()
    assert beats == 1882  # record 800's 1,883 annotated beats, less the recipe's last


def test_predict_reads_an_svdb_record_with_its_own_lead_and_rate(trained_run, tmp_path,
                                                                  caplog) -> None:
    checkpoint = checkpoint_from_run(trained_run["run"].info.run_id, trained_run["uri"],
                                     str(tmp_path / "ckpt"))
    cfg = compose_config(tmp_path, [f"ckpt={checkpoint}",
                                    f"input={shared_path('svdb') / '800.hea'}"], "predict")
    with caplog.at_level("INFO"):
        frame = predict(cfg)
    assert len(frame) == 1883  # every annotated beat of record 800
    # the reference labels by AAMI name, as record 800's .atr has them
    assert frame["true"].value_counts().to_dict() == {"N": 1846, "S": 30, "V": 6, "F": 1}
    assert "record 800: lead ECG1 at 128 Hz, beats cut at 125 Hz (kachuee recipe)" in caplog.text
