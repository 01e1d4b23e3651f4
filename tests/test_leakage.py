"""No score of a model on data it has seen, unless told (issue: honest numbers).

(a) evaluate on the model's own data option reproduces its test metrics (its own split, no
new one drawn); (b) an inter-patient model evaluated on a random split stops, naming the DS1
records it trained on; (c) allow_seen=true scores them and marks the report and the run;
(d) also_test with two training databases leaves the trained-on records out of the other
database's row. Also: the scoring stage's files are the same from train and evaluate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecg_experiments.errors import ConfigError
from ecg_experiments.tasks.evaluate import evaluate
from ecg_experiments.tasks.predict import predict
from ecg_experiments.tasks.train import train
from tests.conftest import FAST, all_runs, shared_path

FEW = ["trainer.limit_train_batches=6", "report.log_model=false"]


def _mitbih(records: str) -> list[str]:
    return ["data=mitbih", f"paths.mitdb_dir={shared_path('mitdb')}", "data.download=false",
            f"data.records={records}", "data.batch_size=64"]


def _checkpoint(run_dir: Path) -> Path:
    return next((run_dir / "checkpoints").glob("epoch*.ckpt"))


def _test_part(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith("test/")
            and not k.endswith(("_ci_low", "_ci_high")) and "/noise/" not in k}


RECORDS = "[100,106,119,208,209]"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real public beats drawn as 64x64 line images, 12 in each of the N, S and V folders."""
    from ecg_experiments.data.beats import read_beats_csv
    from ecg_experiments.data.render import WaveformRenderer, write_images

    root = tmp_path_factory.mktemp("images")
    x, y = read_beats_csv(shared_path("kachuee_samples", "mitbih_train_sample.csv"))
    for label, name in enumerate("NSV"):
        (root / name).mkdir()
        rows = np.flatnonzero(y == label)[:12]
        write_images(WaveformRenderer(), x[rows], 125.0, 64,
                     [root / name / f"{i:04d}.png" for i in range(len(rows))])
    return root


def _option(option: str, small_csv: Path, image_root: Path) -> tuple[str, list[str]]:
    """The model and the data overrides of a small run on every data option."""
    if option == "mitbih":
        return "cnn1d", _mitbih("[100,101,103,105,106,108]")
    if option == "physionet":  # two databases at once
        return "cnn1d", ["data=physionet", "data.databases=[mitdb,svdb]",
                         f"data.dirs.mitdb={shared_path('mitdb')}",
                         f"data.dirs.svdb={shared_path('svdb')}", "data.download=false",
                         "data.records=[106,208,svdb/800,svdb/801]", "data.batch_size=64"]
    if option == "beats_csv":
        return "cnn1d", ["data=beats_csv", f"data.train_file={small_csv}", "data.batch_size=32"]
    if option == "image_folder":
        return "cnn2d", ["data=image_folder", f"data.root={image_root}", "data.num_workers=0",
                         "data.batch_size=8"]
    # drawn from the records' beats on the fly
    return "cnn2d", [f"data={option}", f"paths.mitdb_dir={shared_path('mitdb')}",
                     "data.source.beats.download=false", f"data.source.beats.records={RECORDS}",
                     "data.max_per_class=12", "data.num_workers=0", "data.batch_size=16"]


# the images drawn from records (spectrogram, scalogram, beat_images) share one split table
# with image_folder and mitbih, and mitbih is physionet's mitdb preset: they run with
# `make test-all`
@pytest.mark.parametrize("option", [
    "physionet", "beats_csv", "image_folder",
    *(pytest.param(o, marks=pytest.mark.slow) for o in ("mitbih", "spectrogram", "scalogram",
                                                         "beat_images"))])
def test_evaluate_on_its_own_data_option_scores_its_own_test_split(
        option, compose_train, small_csv, image_root, tmp_path) -> None:
    model, data = _option(option, small_csv, image_root)
    cfg = compose_train([f"model={model}", *data, *FAST, *FEW, "seed=7"])
    # seed 7: the data's split seed too; evaluate's own seed is 42
    trained = train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    evaluated = evaluate(compose_train([f"ckpt={_checkpoint(run_dir)}", *data, "logger=none",
                                        "report.bootstrap_rounds=50",
                                        "report.attribution_per_group=1",
                                        "report.attribution_steps=4"], "eval"))
    own = _test_part(trained)
    assert {k: evaluated[k] for k in own} == pytest.approx(own, abs=1e-6)
    assert evaluated["test/samples"] == len(pd.read_csv(run_dir / "report" / "predictions.csv"))
    # one scoring stage: the same per-sample predictions and intervals from both
    report = Path(compose_train([], "eval").paths.run_dir) / "report"
    for name in ("predictions.csv", "confidence_intervals.csv", "per_class.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(report / name),
                                      pd.read_csv(run_dir / "report" / name))


@pytest.fixture
def interpatient_model(compose_train) -> Path:
    """An inter-patient model: DS1 records 101 and 106 train it, DS2 100 and 103 test it."""
    cfg = compose_train(["model=cnn1d", *_mitbih("[101,106,100,103]"), "data.split=interpatient",
                         "data.val_fraction=0", "callbacks.early_stopping=null",
                         "callbacks.model_checkpoint.monitor=null", *FAST, *FEW])
    train(cfg)
    return _checkpoint(Path(cfg.paths.run_dir))


def _trained_test_split(checkpoint: Path) -> pd.DataFrame:
    return pd.read_csv(checkpoint.parent.parent / "report" / "predictions.csv")


def test_a_random_split_of_its_training_records_is_refused_then_scored_when_allowed(
        interpatient_model, compose_train, tmp_path) -> None:
    random_split = [f"ckpt={interpatient_model}", *_mitbih("[101,106,100,103]"),
                    "data.split=random", "report.bootstrap_rounds=20",
                    "report.attribution_per_group=0"]
    with pytest.raises(ConfigError, match=r"2 records: mitdb/101, mitdb/106\) were seen by "
                                          r"the model in training or validation"):
        evaluate(compose_train(random_split, "eval"))
    runs_before = len(all_runs(tmp_path))  # refused before any MLflow run was made

    cfg = compose_train([*random_split, "allow_seen=true"], "eval")
    metrics = evaluate(cfg)
    assert 0 <= metrics["test/acc"] <= 1
    [run] = [r for r in all_runs(tmp_path) if r.data.tags.get("includes_training_data")]
    assert len(all_runs(tmp_path)) == runs_before + 1
    predictions = pd.read_csv(Path(cfg.paths.run_dir) / "report" / "predictions.csv")
    seen = predictions["record"].isin(["mitdb/101", "mitdb/106"]).sum()
    assert int(run.data.tags["includes_training_data"]) == seen > 0
    assert run.data.tags["report.ci_over"] == f"{predictions['record'].nunique()} records"

    # its own data option: its own inter-patient split, DS2 only, nothing refused
    own = evaluate(compose_train([f"ckpt={interpatient_model}", *_mitbih("[101,106,100,103]"),
                                  "logger=none", "report.bootstrap_rounds=0",
                                  "report.attribution_per_group=0"], "eval"))
    tested = _trained_test_split(interpatient_model)
    assert set(tested["record"]) == {"mitdb/100", "mitdb/103"}
    assert own["test/samples"] == len(tested)

    # predict with reference labels on a training record: refused, then allowed
    record = shared_path("mitdb") / "101"
    with pytest.raises(ConfigError, match=r"1 record: 101\) were seen by the model"):
        predict(compose_train([f"ckpt={interpatient_model}", f"input={record}"], "predict"))
    frame = predict(compose_train([f"ckpt={interpatient_model}", f"input={record}",
                                   "allow_seen=true", "strip.duration=0"], "predict"))
    assert len(frame) > 1500
    unseen = predict(compose_train([f"ckpt={interpatient_model}",
                                    f"input={shared_path('mitdb') / '100'}",
                                    "strip.duration=0"], "predict"))
    assert len(unseen) > 2000


def test_also_test_leaves_out_the_records_of_the_other_training_database(
        compose_train, tmp_path) -> None:
    cfg = compose_train([
        "model=cnn1d", "data=physionet", "data.databases=[mitdb,svdb]",
        f"data.dirs.mitdb={shared_path('mitdb')}", f"data.dirs.svdb={shared_path('svdb')}",
        "data.download=false", "data.split=interpatient", "data.val_fraction=0",
        "data.records=[101,106,100,103,svdb/800,svdb/801]", "callbacks.early_stopping=null",
        "callbacks.model_checkpoint.monitor=null", *FAST, *FEW,
        "+also_test.svdb.database=svdb", "+also_test.svdb.records=[800,801,802,803]",
        f"+also_test.svdb.dir={shared_path('svdb')}", "+also_test.svdb.download=false"])
    metrics = train(cfg)
    run_dir = Path(cfg.paths.run_dir)
    table = pd.read_csv(run_dir / "report" / "also_test.csv")
    row = table[table["data"] == "svdb"].iloc[0]
    assert row["note"] == "2 trained-on record(s) left out: svdb/800, svdb/801"
    scored = pd.read_csv(run_dir / "also_test" / "svdb" / "report" / "predictions.csv")
    assert set(scored["record"]) == {"svdb/802", "svdb/803"}  # no mitdb, no trained-on svdb
    assert row["beats"] == len(scored)
    assert row["acc"] == pytest.approx(metrics["also_test/svdb/acc"])
    [child] = [r for r in all_runs(tmp_path) if r.data.tags.get("also_test") == "svdb"]
    assert child.data.tags["also_test.left_out"] == "svdb/800, svdb/801"
    assert child.info.status == "FINISHED"
