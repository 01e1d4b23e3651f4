"""Databases beyond MIT-BIH (issue 15): svdb at its own rate and lead, the INCART header
format, several databases at once, record-grouped cross-validation folds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecg_experiments.data.beat_table import BeatTable, prepare_database
from ecg_experiments.data.physionet import DATABASES, ensure_database, read_record
from ecg_experiments.data.physionet_datamodule import PhysionetDataModule
from ecg_experiments.data.segment import CenteredRecipe, KachueeRecipe
from ecg_experiments.data.splits import cv_fold
from ecg_experiments.errors import ConfigError, DataError
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def svdb_dir() -> Path:
    return shared_path("svdb")


def test_svdb_is_read_at_its_own_rate_with_its_own_lead(svdb_dir: Path, tmp_path: Path) -> None:
    folder = prepare_database(svdb_dir, tmp_path, KachueeRecipe(), "svdb", ["800", "801"],
                              download=False, progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["used"] == {"800": {"lead": "ECG1", "fs": 128.0},
                                "801": {"lead": "ECG1", "fs": 128.0}}
    table = BeatTable.load(folder / "beats.npz")
    assert set(table.records) == {"svdb/800", "svdb/801"}
    annotated = sum(np.isin(wfdb.rdann(str(svdb_dir / r), "atr").symbol,
                            list("NSVFQ")).sum() for r in ("800", "801"))
    assert len(table.records) == annotated - 2  # the recipe drops each record's last beat
    # the 30-minute records at 128 Hz come out at the recipe's 125 Hz: R-peaks scale back
    assert table.beats.signals.shape[1] == 187 and table.beats.samples.max() < 230_400


def test_a_lead_preference_list_reads_the_first_lead_a_record_has(svdb_dir: Path) -> None:
    record = read_record(svdb_dir, "800", lead=["MLII", "ECG2", "ECG1"])
    assert record.lead == "ECG2" and record.fs == 128.0
    with pytest.raises(DataError, match=r"record 800 has no MLII/II lead \(it has ECG1, ECG2\)"):
        read_record(svdb_dir, "800", lead=["MLII", "II"], missing_lead="error")


def _incart_like_record(folder: Path) -> None:
    """A 12-lead record at 257 Hz written by wfdb in the INCART header format."""
    folder.mkdir()
    leads = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    t = np.arange(257 * 20) / 257
    beats = np.arange(1, 20) * 257
    ecg = np.zeros_like(t)
    for b in beats:
        ecg += np.exp(-((t - b / 257) ** 2) / (2 * 0.01**2))
    signals = np.stack([ecg * (1 + k / 10) for k in range(12)], axis=1)
    wfdb.wrsamp("I01", fs=257, units=["mV"] * 12, sig_name=leads, p_signal=signals,
                fmt=["16"] * 12, write_dir=str(folder))
    wfdb.wrann("I01", "atr", beats, np.array(["N"] * 18 + ["V"]), write_dir=str(folder))


def test_the_incartdb_preset_reads_lead_ii_at_257_hz(tmp_path: Path) -> None:
    _incart_like_record(tmp_path / "incartdb")
    preset = DATABASES["incartdb"]
    record = read_record(tmp_path / "incartdb", "I01", lead=preset.leads)
    assert record.lead == "II" and record.fs == 257.0 and len(record.beat_samples) == 19
    folder = prepare_database(tmp_path / "incartdb", tmp_path / "out", CenteredRecipe(rate=120),
                              preset, ["I01"], download=False, progress=False)
    table = BeatTable.load(folder / "beats.npz")
    assert set(table.records) == {"incartdb/I01"} and table.beats.signals.shape[1] == 84
    with pytest.raises(DataError, match="unknown St Petersburg INCART .* record name.* I99"):
        ensure_database(tmp_path / "incartdb", preset, ["I99"], download=False)


def test_never_downloads_into_another_databases_folder(tmp_path: Path) -> None:
    mitdb = tmp_path / "mitdb"
    mitdb.mkdir()
    for ext in ("hea", "dat", "atr"):
        shutil.copy(shared_path("mitdb", f"100.{ext}"), mitdb / f"100.{ext}")
    with pytest.raises(DataError, match="not downloading svdb into it"):
        ensure_database(mitdb, "svdb", ["800"], download=True)
    assert sorted(p.name for p in mitdb.iterdir()) == ["100.atr", "100.dat", "100.hea"]


def _module(tmp_path: Path, split: str, **options) -> PhysionetDataModule:
    dm = PhysionetDataModule(
        prepared_dir=str(tmp_path / "prepared"), recipe=KachueeRecipe(),
        databases=["mitdb", "svdb"], dirs={"mitdb": str(shared_path("mitdb")),
                                           "svdb": str(shared_path("svdb"))},
        records=["101", "106", "108", "100", "103", "svdb/800", "801", "802"],
        split=split, download=False, seed=3, **options)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _records(dm: PhysionetDataModule) -> dict[str, set[str]]:
    frame = dm.split_frame
    return {s: set(frame.loc[frame["split"] == s, "record"]) for s in ("train", "val", "test")}


def test_several_databases_train_on_ds1_and_svdb_and_test_on_ds2(tmp_path: Path) -> None:
    records = _records(_module(tmp_path, "interpatient"))
    pool = {"mitdb/101", "mitdb/106", "mitdb/108", "svdb/800", "svdb/801", "svdb/802"}
    assert records["train"] | records["val"] == pool
    assert not records["train"] & records["val"]
    # models are chosen on DS1 patients only: the other database's records only train
    assert records["val"] and records["val"] <= {"mitdb/101", "mitdb/106", "mitdb/108"}
    assert {"svdb/800", "svdb/801", "svdb/802"} <= records["train"]
    assert records["test"] == {"mitdb/100", "mitdb/103"}
    with pytest.raises(ConfigError, match="split=interpatient .* has no mitdb"):
        PhysionetDataModule(str(tmp_path), KachueeRecipe(), database="svdb", dir="x",
                            split="interpatient")


def test_cross_validation_folds_are_record_disjoint_and_leave_test_alone(tmp_path: Path) -> None:
    folds = [_records(_module(tmp_path, "interpatient", folds=3, fold=k)) for k in range(3)]
    held = [f["val"] for f in folds]
    assert all(not (a & b) for i, a in enumerate(held) for b in held[i + 1:])
    ds1 = {"mitdb/101", "mitdb/106", "mitdb/108"}
    svdb = {"svdb/800", "svdb/801", "svdb/802"}
    assert set().union(*held) == ds1  # the folds are DS1's; svdb trains in every fold
    assert all(f["train"] == (ds1 | svdb) - f["val"] for f in folds)
    assert all(f["test"] == {"mitdb/100", "mitdb/103"} for f in folds)


def test_cv_fold_stratifies_rare_classes_across_folds() -> None:
    # 10 records; class 1 only in records 0-4: each of 5 folds should get one of them
    groups = np.repeat(np.arange(10), 20)
    labels = np.zeros(200, dtype=int)
    labels[(groups < 5) & (np.arange(200) % 20 == 0)] = 1
    fold = cv_fold(groups, labels, 5, seed=0)
    assert len(np.unique(fold[labels == 1])) == 5
    assert all(len(np.unique(fold[groups == g])) == 1 for g in range(10))
    with pytest.raises(DataError, match="3 record.* cannot make cv.folds=5"):
        cv_fold(np.repeat(np.arange(3), 4), np.zeros(12, dtype=int), 5, seed=0)


def test_also_test_evaluates_the_best_checkpoint_on_another_database_in_one_table(
        tmp_path: Path, monkeypatch) -> None:
    """experiment=crossdb's mechanism: trained on DS1 records, tested on DS2 and on an svdb
    record (its own rate and lead) as a child run, one table."""
    import mlflow
    import pandas as pd

    from ecg_experiments.tasks.train import train
    from tests.conftest import all_runs, compose_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = compose_config(tmp_path, [
        "experiment=crossdb", f"paths.mitdb_dir={shared_path('mitdb')}", "data.download=false",
        "data.records=[101,106,100,103]", "trainer.max_epochs=1",
        "trainer.limit_train_batches=4", "report.bootstrap_rounds=20", "report.log_model=false",
        f"also_test.svdb.dir={shared_path('svdb')}", "also_test.svdb.records=[800]",
        "also_test.svdb.download=false"])
    metrics = train(cfg)
    table = pd.read_csv(Path(cfg.paths.run_dir) / "report" / "also_test.csv")
    assert table["data"].tolist() == ["test split", "svdb"]
    # record 800's 1,883 beats less the centered window's edge losses
    assert 1_875 <= table.loc[1, "beats"] <= 1_883
    assert table.loc[1, "acc"] == pytest.approx(metrics["also_test/svdb/acc"])
    runs = all_runs(tmp_path)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in runs if r.data.tags.get("also_test") == "svdb")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["data.sources"].startswith("lead ECG1 (1 record); 128 Hz -> 120 Hz")
    assert child.data.metrics["test/aami/se_V"] == pytest.approx(table.loc[1, "se_V"])
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "report/also_test.csv" in {a.path for a in client.list_artifacts(
        parent.info.run_id, "report")}
    # one scoring stage: evaluate of the same checkpoint on the same records gives the
    # also_test row's metrics and report files
    from ecg_experiments.tasks.evaluate import evaluate

    best = next((Path(cfg.paths.run_dir) / "checkpoints").glob("epoch_*.ckpt"))
    eval_cfg = compose_config(tmp_path / "eval", [
        f"ckpt={best}", "data=physionet", "data.database=svdb",
        f"data.dir={shared_path('svdb')}", "data.records=[800]", "data.download=false",
        "holdout=all", "logger=none", "report.bootstrap_rounds=20"], "eval")
    evaluated = evaluate(eval_cfg)
    common = [k for k in child.data.metrics if k.startswith("test/") and k in evaluated]
    assert len(common) > 20 and "test/aami/se_V" in common
    for key in common:
        assert evaluated[key] == pytest.approx(child.data.metrics[key], nan_ok=True), key
    also_report = best.parent.parent / "also_test" / "svdb" / "report"
    eval_report = Path(eval_cfg.paths.run_dir) / "report"
    written = sorted(p.name for p in also_report.glob("*.csv"))
    assert written == sorted(p.name for p in eval_report.glob("*.csv"))
    assert {"predictions.csv", "per_class.csv", "per_record.csv", "aami.csv"} <= set(written)
    for name in written:
        pd.testing.assert_frame_equal(pd.read_csv(eval_report / name),
                                      pd.read_csv(also_report / name))


def test_an_empty_folder_of_a_listed_database_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no svdb records \(no RECORDS file or headers"):
        prepare_database(tmp_path / "svdb", tmp_path / "out", KachueeRecipe(), "svdb",
                         download=False, progress=False)
    assert not (tmp_path / "out").exists()
