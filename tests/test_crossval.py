"""Record-grouped k-fold cross-validation (`cv.folds`): folds as child runs, means and sds on
the parent, the fold mean at `cv/epochs` returned to sweepers, the test split never touched."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from ecg_experiments.errors import ConfigError
from ecg_experiments.tasks.train import train
from tests.conftest import FAST, all_runs, compose_config, run_cli, shared_path

# three DS1 records and two DS2 records: folds of the DS1 pool, DS2 left alone
RECORDS = "data.records=[101,106,108,100,103]"


def _cv_config(tmp: Path, folds: int = 3, extra: tuple[str, ...] = ()):
    return compose_config(tmp, [
        "data=mitbih", f"data.dir={shared_path('mitdb')}", "data.download=false",
        "data.split=interpatient", RECORDS, f"cv.folds={folds}", "trainer.max_epochs=2",
        "trainer.limit_train_batches=4", "report.bootstrap_rounds=0", *extra])


def test_folds_are_child_runs_with_disjoint_records_and_the_parent_gets_mean_and_sd(
        tmp_path: Path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = _cv_config(tmp_path)
    result = train(cfg)
    runs = all_runs(tmp_path)
    parent = next(r for r in runs if r.data.tags.get("cv.folds") == "3"
                  and "cv.fold" not in r.data.tags)
    folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["cv.fold"] for r in folds) == ["0", "1", "2"]
    # the parent's config and params carry the run name its folds' names build on
    name = parent.data.params["logger.run_name"]
    assert name not in ("None", "") and parent.info.run_name == f"{name}-cv3"
    assert sorted(r.info.run_name for r in folds) == [f"{name}-fold{k}" for k in range(3)]
    assert OmegaConf.load(Path(cfg.paths.run_dir) / "config.yaml").logger.run_name == name
    assert all(r.info.status == "FINISHED" for r in runs)
    # the test split (DS2) is never scored in a cross-validation
    assert not any(k.startswith("test/") for r in runs for k in r.data.metrics)
    best = [r.data.metrics["best/val/f1_macro"] for r in folds]
    # each fold's best is kept as cv/best/... (optimistic); what selects is further down
    assert parent.data.metrics["cv/best/val/f1_macro_mean"] == pytest.approx(np.mean(best))
    assert parent.data.metrics["cv/best/val/f1_macro_std"] == pytest.approx(np.std(best, ddof=1))
    for name in ("val/acc", "val/loss", "val/recall_S", "val/precision_V"):
        assert f"cv/{name}_mean" in parent.data.metrics and f"cv/{name}_std" in result
    run_dir = Path(cfg.paths.run_dir)
    assignment = pd.read_csv(run_dir / "cv_records.csv")
    assert sorted(assignment["record"]) == ["mitdb/101", "mitdb/106", "mitdb/108"]
    assert assignment["fold"].nunique() == 3  # one record per fold here, none in two
    for k in range(3):  # each fold trains on the others and never sees DS2 in train/val
        split = pd.read_csv(run_dir / f"fold{k}" / "split.csv")
        held = set(split.loc[split["split"] == "val", "record"])
        assert held == set(assignment.loc[assignment["fold"] == k, "record"])
        assert not held & set(split.loc[split["split"] == "train", "record"])
        assert set(split.loc[split["split"] == "test", "record"]) == {"mitdb/100", "mitdb/103"}
    client = mlflow.MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "cv")} == {
        "cv/cv_epochs.csv", "cv/cv_folds.csv", "cv/cv_records.csv"}
    # the epoch count of a final fit: the best fold-mean of the monitored metric
    curve = pd.read_csv(run_dir / "cv_epochs.csv")
    assert list(curve["epochs"]) == [1, 2] and list(curve["folds"]) == [3, 3]
    fold_values = [[h for h in client.get_metric_history(r.info.run_id, "val/f1_macro")]
                   for r in sorted(folds, key=lambda r: r.data.tags["cv.fold"])]
    per_epoch = np.array([[m.value for m in sorted(h, key=lambda m: m.step)] for h in fold_values])
    np.testing.assert_allclose(curve["val/f1_macro_mean"], per_epoch.mean(axis=0), rtol=1e-6)
    chosen = int(np.argmax(per_epoch.mean(axis=0))) + 1
    assert parent.data.metrics["cv/epochs"] == chosen
    assert parent.data.metrics["cv/at_epochs/val/f1_macro_mean"] == pytest.approx(
        per_epoch.mean(axis=0)[chosen - 1])
    # what sweepers get and the parent's best/<metric>: the fold mean at cv/epochs
    assert result["val/f1_macro"] == pytest.approx(per_epoch.mean(axis=0)[chosen - 1])
    assert parent.data.metrics["best/val/f1_macro"] == pytest.approx(
        per_epoch.mean(axis=0)[chosen - 1])


def test_the_cv_epoch_count_is_the_best_fold_mean_over_epochs_all_folds_reached() -> None:
    from ecg_experiments.runs.crossval import chosen_epochs, epoch_curve

    histories = [  # fold 1 stopped early after 3 epochs: the curve ends there
        [{"epoch": e, "val/f1_macro": v, "val/loss": 1 - v} for e, v in enumerate(values)]
        for values in ([0.5, 0.7, 0.6, 0.9], [0.4, 0.5, 0.7], [0.6, 0.8, 0.5, 0.2])]
    curve = epoch_curve(histories)
    assert list(curve["epochs"]) == [1, 2, 3]
    np.testing.assert_allclose(curve["val/f1_macro_mean"], [0.5, 2 / 3, 0.6])
    assert curve["val/f1_macro_std"][0] == pytest.approx(0.1)
    chosen = chosen_epochs(curve, "val/f1_macro", "max")
    assert chosen["cv/epochs"] == 2
    assert chosen["cv/at_epochs/val/loss_mean"] == pytest.approx(1 / 3)
    assert chosen_epochs(curve, "val/loss", "min")["cv/epochs"] == 2


def test_what_cannot_be_cross_validated_is_refused_before_any_work(tmp_path: Path,
                                                                    monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    csv = shared_path("kachuee_samples", "mitbih_train_sample.csv")
    cfg = compose_config(tmp_path, ["data=beats_csv", f"data.train_file={csv}", "cv.folds=5"])
    with pytest.raises(ConfigError, match="has no record or patient ids"):
        train(cfg)
    cfg = _cv_config(tmp_path, folds=1)
    with pytest.raises(ConfigError, match=r"cv.folds=1: expected an integer >= 2"):
        train(cfg)
    cfg = compose_config(tmp_path, ["data=image_folder", "data.root=x", "model=cnn2d",
                                    "cv.folds=3"])
    with pytest.raises(ConfigError, match="needs data.group_regex"):
        train(cfg)
    cfg = _cv_config(tmp_path)
    with open_dict(cfg):
        cfg.resume = True  # a cross-validation resumes, but only one that started there
    with pytest.raises(ConfigError, match="resume=true: no cross-validation to resume in"):
        train(cfg)
    cfg = _cv_config(tmp_path)
    with open_dict(cfg):
        cfg.ckpt_path = "some.ckpt"
    with pytest.raises(ConfigError, match="ckpt_path starts one fit from a checkpoint"):
        train(cfg)
    assert not list(tmp_path.glob("**/mlflow.db"))  # nothing was tracked


@pytest.mark.slow  # ~1 min of sweep processes; `make test-all` runs it
def test_an_optuna_sweep_over_cross_validation_selects_on_the_cv_mean(tmp_path: Path) -> None:
    """Each trial's value is its folds' mean validation macro-F1 at the common epoch count
    (`cv/epochs`), computed here from the folds' per-epoch histories."""
    import optuna

    run_cli(["hparams_search=optuna", "data=mitbih", f"data.dir={shared_path('mitdb')}",
             "data.download=false", "data.split=interpatient", RECORDS, "cv.folds=2",
             "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=cv", *FAST], tmp_path)
    study = optuna.load_study(study_name="cv", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    runs = all_runs(tmp_path)
    trials = [r for r in runs if r.data.tags.get("cv.folds") == "2"
              and "cv.fold" not in r.data.tags]
    assert len(study.trials) == 2 and len(trials) == 2
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for trial in trials:
        folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == trial.info.run_id]
        assert len(folds) == 2
        curves = [[m.value for m in sorted(client.get_metric_history(r.info.run_id,
                                                                     "val/f1_macro"),
                                           key=lambda m: m.step)] for r in folds]
        reached = min(len(c) for c in curves)
        mean = np.mean([c[:reached] for c in curves], axis=0)
        assert trial.data.metrics["cv/epochs"] == int(np.argmax(mean)) + 1
        assert trial.data.metrics["best/val/f1_macro"] == pytest.approx(mean.max())
    values = sorted(t.value for t in study.trials)
    assert values == pytest.approx(sorted(t.data.metrics["best/val/f1_macro"] for t in trials))


def test_image_folders_make_folds_of_whole_records(tmp_path: Path) -> None:
    """data=image_folder with data.group_regex: folds by the record in each file name."""
    from PIL import Image

    from ecg_experiments.data.images import ImageDataModule

    rng = np.random.default_rng(0)
    for record in range(8):
        for name in ("N", "V"):
            (tmp_path / name).mkdir(exist_ok=True)
            for i in range(3):
                pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / name / f"r{record}_{i}.png")

    def records(fold: int) -> dict[str, set[str]]:
        dm = ImageDataModule(str(tmp_path), split="records", group_regex=r"^(r\d+)_",
                             image_size=12, val_fraction=0.25, test_fraction=0.25, folds=2,
                             fold=fold, seed=1)
        dm.setup("fit")
        frame = dm.split_frame
        return {s: set(frame.loc[frame["split"] == s, "record"]) for s in ("train", "val",
                                                                            "test")}

    first, second = records(0), records(1)
    assert first["test"] == second["test"] and len(first["test"]) == 2
    assert not first["val"] & second["val"]
    assert first["val"] | second["val"] == first["train"] | first["val"]
    assert first["train"] == second["val"] and len(first["train"] | first["val"]) == 6


def test_a_final_fit_on_the_whole_pool_tests_its_last_epoch(tmp_path: Path,
                                                            monkeypatch) -> None:
    """data.val_fraction=0 with an unmonitored checkpoint: all DS1 records train for the
    fixed epoch count (CV's `cv/epochs`), and the last epoch's weights are tested."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = compose_config(tmp_path, [
        "data=mitbih", f"data.dir={shared_path('mitdb')}", "data.download=false",
        "data.split=interpatient", RECORDS, "data.val_fraction=0", "trainer.max_epochs=2",
        "trainer.limit_train_batches=3", "callbacks.model_checkpoint.monitor=null",
        "callbacks.early_stopping=null", "report.bootstrap_rounds=0"])
    result = train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    split = pd.read_csv(run_dir / "split.csv")
    assert set(split.loc[split["split"] == "train", "record"]) == {
        "mitdb/101", "mitdb/106", "mitdb/108"}
    assert not (split["split"] == "val").any()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "epoch_001.ckpt", "last.ckpt"]
    assert result["test/acc"] > 0 and "val/f1_macro" not in result
