"""Silent wrong numbers in data preparation, each fixed at its mechanism: recipe options a
beats CSV cannot carry, a record's median beat taken over too few beats, annotation symbols
left out uncounted, a split folder named by too little, a record named twice."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import wfdb

from ecg_experiments.data.beat_features import MIN_TEMPLATE_BEATS
from ecg_experiments.data.beat_table import prepare_database
from ecg_experiments.data.physionet import AAMI_MAP, read_record
from ecg_experiments.data.physionet_datamodule import PhysionetDataModule
from ecg_experiments.data.segment import CenteredRecipe, KachueeRecipe
from ecg_experiments.errors import ConfigError, DataError
from tests.conftest import compose_config, shared_path

# recipe, override, what the refusal must name: every option that makes a beat depend on
# more of its record than the beat itself
RECORD_ONLY = [
    ("kachuee", "data.recipe.baseline=true", "data.recipe.baseline=true"),
    ("kachuee", "data.recipe.bandpass_hz=[0.5,40]", "data.recipe.bandpass_hz=[0.5, 40.0]"),
    ("kachuee", "data.recipe.normalize=window", "data.recipe.normalize=window"),
    ("kachuee", "data.recipe.rpeaks=detector", "data.recipe.rpeaks=detector"),
    ("centered", "data.recipe.subtract_template=true", "data.recipe.subtract_template=true"),
    ("centered", "data.recipe.baseline=true", "data.recipe.baseline=true"),
    ("centered", "data.recipe.bandpass_hz=[0,40]", "data.recipe.bandpass_hz=[0.0, 40.0]"),
]


def _model(tmp_path: Path, recipe: str, overrides: list[str]):  # -> TrainedModel
    from ecg_experiments.inputs import InputSpec
    from ecg_experiments.models.checkpoint import TrainedModel

    extra = ["data.recipe.rate=120", "model=resnet1d"] if recipe == "centered" else []
    trained = compose_config(tmp_path / "trained", ["data=mitbih", f"data/recipe={recipe}",
                                                    *extra, *overrides])
    length = 84 if recipe == "centered" else 187
    spec = InputSpec("signal", tuple("NSVFQ"), signal_length=length,
                     rate=120.0 if recipe == "centered" else 125.0)
    return TrainedModel(net=torch.nn.Identity(), config=trained, class_names=list("NSVFQ"),
                        checkpoint=tmp_path / "x.ckpt", history=[], input=spec)


def _csv(tmp_path: Path, length: int) -> Path:
    path = tmp_path / "beats.csv"
    np.savetxt(path, np.zeros((3, length)), delimiter=",")
    return path


@pytest.mark.parametrize(("recipe", "override", "named"), RECORD_ONLY,
                         ids=[f"{r}-{o.split('.')[-1].split('=')[0]}" for r, o, _ in RECORD_ONLY])
def test_every_record_only_recipe_option_refuses_beats_csvs(
    tmp_path: Path, recipe: str, override: str, named: str
) -> None:
    """predict input=<csv> and evaluate data=beats_csv refuse a model whose recipe option
    makes its beats depend on their record, naming the option (before: only
    subtract_template was refused; the others fed absolute, uncleaned beats silently)."""
    from ecg_experiments.tasks.evaluate import data_for_model
    from ecg_experiments.tasks.predict import load_inputs

    model = _model(tmp_path, recipe, [override])
    csv = _csv(tmp_path, int(model.input.signal_length))
    reason = model.record_only_reason()
    assert reason is not None and named in reason
    with pytest.raises(DataError, match=r"beats.csv: a beats CSV cannot feed this model: "
                       + r".*" + re.escape(named)):
        load_inputs(csv, model)
    cfg = compose_config(tmp_path / "eval", ["run_id=x", "data=beats_csv",
                                             f"data.train_file={csv}"], "eval")
    with pytest.raises(ConfigError, match=r"ready-cut beats, but .*"
                       + re.escape(named)):
        data_for_model(cfg, model)


@pytest.mark.parametrize("recipe", ["kachuee", "centered"])
def test_plain_recipes_read_beats_csvs(tmp_path: Path, recipe: str) -> None:
    """The Kachuee recipe as configured by default is what the public CSVs hold (beats
    normalised one by one, cut at the annotated R-peaks, no cleaning): not refused; nor the
    plain centered recipe."""
    from ecg_experiments.tasks.predict import load_inputs

    assert KachueeRecipe().record_only_options() == {}
    assert CenteredRecipe().record_only_options() == {}
    model = _model(tmp_path, recipe, [])
    assert model.record_only_reason() is None
    assert len(load_inputs(_csv(tmp_path, int(model.input.signal_length)), model)[0]) == 3


def test_several_record_only_options_are_all_named(tmp_path: Path) -> None:
    reason = _model(tmp_path, "kachuee", ["data.recipe.baseline=true",
                                          "data.recipe.normalize=window"]).record_only_reason()
    assert reason is not None
    assert "data.recipe.baseline=true" in reason and "data.recipe.normalize=window" in reason


@pytest.mark.parametrize("option", ["subtract_template", "template_features"])
def test_median_beat_of_too_few_beats_is_refused(option: str) -> None:
    """A short excerpt's median beat is a poor template: under MIN_TEMPLATE_BEATS beats the
    recipe refuses, naming the record, the count and the minimum (before: a median of a
    handful of beats, silently)."""
    record = read_record(shared_path("mitdb"), "100")
    fs = record.fs

    def excerpt(seconds: float):  # -> Record
        end = int(seconds * fs)
        inside = record.beat_samples < end - int(0.5 * fs)
        return dataclasses.replace(record, signal=record.signal[:end],
                                   beat_samples=record.beat_samples[inside],
                                   beat_symbols=record.beat_symbols[inside])

    recipe = CenteredRecipe(rate=120, **{option: True})
    short = excerpt(8.0)
    with pytest.raises(DataError, match=rf"record 100: \d+ beats, but data\.recipe\.{option}="
                                        rf"true needs at least {MIN_TEMPLATE_BEATS} beats"):
        recipe.extract(short)
    assert len(recipe.extract(excerpt(40.0)).labels) >= MIN_TEMPLATE_BEATS
    assert len(CenteredRecipe(rate=120).extract(short).labels) > 0  # no template: fine


def test_unmapped_annotation_symbols_are_counted_and_logged(
    mitdb_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Record 207 holds 472 `!` (ventricular flutter waves: a beat symbol of no AAMI class)
    and rhythm / noise marks; 100 one `+`. They are counted per record in the manifest and
    logged in one line (before: dropped without a trace)."""
    records = ["207", "100"]
    expected = {}
    for name in records:
        symbols = wfdb.rdann(str(mitdb_dir / name), "atr").symbol
        expected[name] = dict(collections.Counter(s for s in symbols if s not in AAMI_MAP))
    assert expected["207"]["!"] == 472
    with caplog.at_level(logging.INFO, logger="ecg_experiments.data.beat_table"):
        target = prepare_database(mitdb_dir, tmp_path, KachueeRecipe(), "mitdb", records,
                                  download=False, progress=False)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["unmapped_symbols"] == expected
    [line] = [r.getMessage() for r in caplog.records if "left out (symbol" in r.getMessage()]
    total_plus = expected["207"]["+"] + expected["100"]["+"]
    assert "beat symbols of no AAMI class ! 472" in line and f"+ {total_plus}" in line
    assert "~ 15" in line and "[ 6" in line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ecg_experiments.data.beat_table"):
        prepare_database(mitdb_dir, tmp_path, KachueeRecipe(), "mitdb", records,
                         download=False, progress=False)  # cached: still said
    assert any("! 472" in r.getMessage() for r in caplog.records)


@pytest.fixture
def svdb_subset(tmp_path: Path) -> Path:
    """Three svdb records in a folder of their own (RECORDS lists them): a database whose
    records come from its folder's listing, so exclusions do not change its preparation."""
    source = shared_path("svdb")
    folder = tmp_path / "svdb"
    folder.mkdir()
    for name in ("800", "801", "802"):
        for ext in ("hea", "dat", "atr"):
            (folder / f"{name}.{ext}").symlink_to(source / f"{name}.{ext}")
    (folder / "RECORDS").write_text("800\n801\n802\n")
    return folder


def _svdb_split(folder: Path, prepared: Path, exclude: list[str]
                ) -> tuple[PhysionetDataModule, pd.DataFrame]:
    dm = PhysionetDataModule(str(prepared), KachueeRecipe(), database="svdb", dir=str(folder),
                             split="all", exclude_records=exclude, download=False)
    dm.prepare_data()
    _, frame = dm.load_splits()
    return dm, frame


def test_split_folder_is_keyed_by_exclude_records(svdb_subset: Path, tmp_path: Path) -> None:
    """Two runs that differ only in exclude_records share the prepared beats but not the
    saved split: before, the second found the first's split.csv (and mitbih_train.csv,
    mitbih_test.csv) and kept it, so the saved files held an excluded record."""
    prepared = tmp_path / "prepared"
    every, _ = _svdb_split(svdb_subset, prepared, [])
    fewer, frame = _svdb_split(svdb_subset, prepared, ["802"])
    assert every.prepared_path == fewer.prepared_path  # one preparation
    assert every._split_dir() != fewer._split_dir()
    saved = pd.read_csv(fewer._split_dir() / "split.csv", dtype={"record": str})
    assert "svdb/802" not in set(saved["record"])
    pd.testing.assert_frame_equal(saved, frame.reset_index(drop=True), check_dtype=False)
    assert set(pd.read_csv(every._split_dir() / "split.csv")["record"]) >= {"svdb/802"}


def test_a_stale_saved_split_is_replaced(svdb_subset: Path, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """A split.csv in the split's folder that is not this split (written by an older
    naming) is replaced with a warning, not kept."""
    prepared = tmp_path / "prepared"
    dm, frame = _svdb_split(svdb_subset, prepared, ["802"])
    saved = dm._split_dir() / "split.csv"
    saved.write_text(frame.iloc[:10].to_csv(index=False))
    with caplog.at_level(logging.WARNING, logger="ecg_experiments.data.physionet_datamodule"):
        _svdb_split(svdb_subset, prepared, ["802"])
    assert saved.read_text() == frame.to_csv(index=False)
    assert any("another split" in r.getMessage() for r in caplog.records)
    # the same rows saved without a column added since: rewritten, without a warning
    saved.write_text(frame.drop(columns=["label"]).to_csv(index=False))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ecg_experiments.data.physionet_datamodule"):
        _svdb_split(svdb_subset, prepared, ["802"])
    assert saved.read_text() == frame.to_csv(index=False)
    assert not any("another split" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("option", "given", "named"), [
    ("records", ["101", "mitdb/101"], "data.records: mitdb/101 is named twice"),
    ("records", ["101", "103", "101"], "data.records: mitdb/101 is named twice"),
    ("exclude_records", ["102", "102"], "data.exclude_records: mitdb/102 is named twice"),
])
def test_a_record_named_twice_is_refused(tmp_path: Path, option: str, given: list[str],
                                         named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        PhysionetDataModule(str(tmp_path), KachueeRecipe(), dir=str(tmp_path),
                            **{option: given})
