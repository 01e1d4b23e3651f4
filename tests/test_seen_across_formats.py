"""A sample is recognised as seen whatever form it is scored in (issue: honest numbers).

A beat cut from a record is the same sample as its row in the Kaggle-format CSV the kachuee
recipe writes, and as its image drawn on the fly or rendered into a PNG folder; a model that
trained on one form is refused the others. Identical rows of one beats CSV stay in one split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecg_experiments.data.beats import BeatsDataModule, read_beats_csv, write_beats_csv
from ecg_experiments.data.identity import ALSO, ID, distinct_row_ids, rendered_beat_id
from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.seen import SeenSamples
from ecg_experiments.tasks.evaluate import evaluate
from ecg_experiments.tasks.prepare import prepare
from ecg_experiments.tasks.train import train
from tests.conftest import shared_path

FEW = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "report.log_model=false",
       "report.bootstrap_rounds=0", "report.attribution_per_group=0"]
RECORDS = "[100,106,119,208,209]"


def test_either_identity_of_a_sample_marks_it_seen() -> None:
    trained = pd.DataFrame({ID: ["sha256:aa", "sha256:bb"], ALSO: ["mitdb/100:5", None]})
    seen = SeenSamples.from_frame(trained)
    scored = pd.DataFrame({ID: ["sha256:zz", "sha256:bb", "sha256:yy", "sha256:xx"],
                           ALSO: ["mitdb/100:5", None, "mitdb/100:6", None]})
    assert seen.seen(scored).tolist() == [True, True, False, False]
    assert seen.seen(scored[[ID]]).tolist() == [False, True, False, False]
    assert rendered_beat_id("mitdb-100_0000077.png") == "mitdb/100:77"
    assert rendered_beat_id("svdb-800_0123456.png") == "svdb/800:123456"
    assert rendered_beat_id("100_000077.png") is None  # not a rendered beat's name


def test_a_beats_values_are_its_second_identity_only_where_they_single_it_out() -> None:
    # a flat (lead-off) beat normalised to zeros in one record and another in a second
    # record are different beats: their values must not make one "seen" as the other
    rng = np.random.default_rng(0)
    signals = np.vstack([rng.random((3, 187)), np.zeros((1, 187)), rng.random((1, 187))])
    signals = np.vstack([signals, signals[1]])  # row 5 repeats row 1
    ids = distinct_row_ids(signals)
    assert ids[0] is not None and ids[2] is not None and ids[4] is not None
    assert ids[1] is None and ids[5] is None and ids[3] is None
    trained = pd.DataFrame({ID: ["mitdb/100:10", "mitdb/100:20"], ALSO: distinct_row_ids(
        np.vstack([np.zeros((1, 187)), signals[0]]))})
    scored = pd.DataFrame({ID: ["mitdb/200:10", "mitdb/200:20"], ALSO: distinct_row_ids(
        np.vstack([np.zeros((1, 187)), signals[0]]))})
    assert SeenSamples.from_frame(trained).seen(scored).tolist() == [False, True]


def _mitbih(records: str = RECORDS) -> list[str]:
    return ["data=mitbih", f"paths.mitdb_dir={shared_path('mitdb')}", "data.download=false",
            f"data.records={records}", "data.batch_size=64"]


def test_a_record_model_is_refused_the_kaggle_csv_rows_of_its_beats(compose_train) -> None:
    cfg = compose_train(["model=cnn1d", *_mitbih(), *FEW])
    train(cfg)
    [exported] = Path(cfg.paths.data_dir).rglob("mitbih_train.csv")  # its train + val rows
    checkpoint = next((Path(cfg.paths.run_dir) / "checkpoints").glob("*.ckpt"))
    as_rows = [f"ckpt={checkpoint}", "data=beats_csv", f"data.train_file={exported}",
               "holdout=all", "logger=none", "report.bootstrap_rounds=0",
               "report.attribution_per_group=0"]
    with pytest.raises(ConfigError, match=r"were seen by the model in training"):
        evaluate(compose_train(as_rows, "eval"))
    # the other way round: a model of those CSV rows is refused their beats in the records
    rows_cfg = compose_train(["model=cnn1d", "data=beats_csv", f"data.train_file={exported}",
                              "data.batch_size=64", *FEW])
    train(rows_cfg)
    rows_model = next((Path(rows_cfg.paths.run_dir) / "checkpoints").glob("*.ckpt"))
    with pytest.raises(ConfigError, match=r"records: mitdb/100, mitdb/106.*were seen"):
        evaluate(compose_train([f"ckpt={rows_model}", *_mitbih(), "holdout=all",
                                "logger=none", "report.bootstrap_rounds=0",
                                "report.attribution_per_group=0"], "eval"))


def test_an_image_model_drawn_on_the_fly_is_refused_the_rendered_files(compose_train) -> None:
    source = [f"paths.mitdb_dir={shared_path('mitdb')}", "data.source.beats.download=false",
              f"data.source.beats.records={RECORDS}", "data.max_per_class=12",
              "data.num_workers=0"]
    cfg = compose_train(["model=cnn2d", "data=beat_images", *source, *FEW])
    train(cfg)
    checkpoint = next((Path(cfg.paths.run_dir) / "checkpoints").glob("*.ckpt"))
    prepare(compose_train([f"paths.mitdb_dir={shared_path('mitdb')}", "data.download=false",
                           f"data.records={RECORDS}", "render=waveform", "max_per_class=12"],
                          "prepare"))
    [folder] = (Path(cfg.paths.data_dir) / "images").glob("waveform-64px-*")
    with pytest.raises(ConfigError, match=r"were seen by the model in training"):
        evaluate(compose_train([f"ckpt={checkpoint}", "data=image_folder",
                                f"data.root={folder}", "holdout=all", "logger=none",
                                "report.bootstrap_rounds=0"], "eval"))


def test_identical_rows_of_a_beats_csv_stay_in_one_split(tmp_path) -> None:
    x, y = read_beats_csv(shared_path("kachuee_samples", "mitbih_train_sample.csv"))
    keep = np.concatenate([np.flatnonzero(y == k)[:30] for k in range(5)])
    twice = np.concatenate([keep, keep[:60]])  # 60 rows written a second time
    path = tmp_path / "twice.csv"
    write_beats_csv(path, x[twice], y[twice])
    data = BeatsDataModule(str(path), val_fraction=0.2, test_fraction=0.2, seed=3)
    data.setup("fit")
    frame = data.split_frame
    splits_per_row = frame.groupby(ID)["split"].nunique()
    assert len(splits_per_row) == len(keep) and splits_per_row.max() == 1
    assert len(frame) == len(twice)
    assert (frame["split"] == "test").mean() == pytest.approx(0.2, abs=0.05)
