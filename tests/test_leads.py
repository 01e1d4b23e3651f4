"""Several leads as channels (`data.channels`): which signal each channel reads, beats of
[channels, samples] equal to the one-lead beats of each lead, and the places that refuse
them (image renderers, beats CSVs, a source model reading other leads). Real mitdb and svdb
records; the whole path through training, evaluate, predict, explain, export and init_from is
the contract matrix's two-lead row (tests/test_contract.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_experiments.data.leads import channel_entries, channel_names, choose_channels
from ecg_experiments.data.physionet import read_record
from ecg_experiments.data.segment import CenteredRecipe, KachueeRecipe, cut_beats, with_features
from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.inputs import InputSpec, on_signal, split_features
from ecg_experiments.models.checkpoint import init_from
from ecg_experiments.models.resnet1d import XResNet1d
from tests.conftest import shared_path


def test_each_channel_reads_its_lead_or_a_named_substitute(caplog) -> None:
    assert choose_channels("101", ["MLII", "V1"], ["MLII", "V1"], "error") == [0, 1]
    # another order in the record: by name, never by position (mitdb 114: V5, MLII)
    assert choose_channels("114", ["V5", "MLII"], ["MLII", "V5"], "error") == [1, 0]
    # alternatives per channel: svdb's ECG1 / ECG2
    assert choose_channels("800", ["ECG1", "ECG2"], [["MLII", "ECG1"], ["V1", "ECG2"]],
                           "error") == [0, 1]
    # a missing lead: the record's lead that no channel reads takes its place, and is named
    assert choose_channels("114", ["V5", "MLII"], ["MLII", "V1"], "first") == [1, 0]
    assert "record 114 has no V1 lead (V5, MLII): using V5 in its place" in caplog.text
    assert choose_channels("102", ["V5", "V2"], ["MLII", "V1"], "first") == [0, 1]
    assert choose_channels("114", ["V5", "MLII"], ["MLII", "V1"], "skip") is None
    with pytest.raises(DataError, match=r"record 114 has no V1 lead \(it has V5, MLII\)"):
        choose_channels("114", ["V5", "MLII"], ["MLII", "V1"], "error")
    with pytest.raises(DataError, match="record 1 has no V1, V2 lead"):  # too few leads
        choose_channels("1", ["MLII"], ["MLII", "V1", "V2"], "first")
    with pytest.raises(ConfigError, match="lead MLII named for two channels"):
        channel_entries(["MLII", ["V1", "MLII"]])
    assert channel_names([["MLII", "ECG1"], "V1"]) == ("MLII", "V1")


@pytest.mark.parametrize("recipe", [CenteredRecipe(rr_context=1, template_features=True,
                                                   subtract_template=True, bandpass_hz=(0.5, 40)),
                                    KachueeRecipe()], ids=["centered", "kachuee"])
def test_two_lead_beats_are_the_one_lead_beats_of_each_lead(recipe) -> None:
    mitdb = shared_path("mitdb")
    both = read_record(mitdb, "114", channels=["MLII", "V5"], missing_lead="error")
    assert both is not None and both.lead == "MLII+V5" and both.signal.shape[1] == 2
    beats = cut_beats(recipe, both)
    for k, lead in enumerate(("MLII", "V5")):
        one = cut_beats(recipe, read_record(mitdb, "114", lead=lead, missing_lead="error"))
        np.testing.assert_array_equal(beats.signals[:, k], one.signals)
        if k == 0:  # the features are the first lead's
            np.testing.assert_array_equal(beats.features, one.features)
            np.testing.assert_array_equal(beats.samples, one.samples)
    assert beats.signals.shape == (len(beats.labels), 2, recipe.length)
    # features after the samples of every channel; the model reads the first channel's
    rows = with_features(beats.signals, beats.features)
    x = torch.from_numpy(rows)
    signal, features = split_features(x, beats.features.shape[1])
    assert signal.shape[1:] == (2, recipe.length)
    if beats.features.shape[1]:
        np.testing.assert_array_equal(features.numpy(), beats.features)
        np.testing.assert_array_equal(rows[:, 1, recipe.length:], beats.features)
    # a waveform transform touches the samples of both leads, never the features
    moved = on_signal(x, beats.features.shape[1], lambda s: s + 1.0)
    torch.testing.assert_close(moved[..., :recipe.length], x[..., :recipe.length] + 1.0)
    torch.testing.assert_close(moved[..., recipe.length:], x[..., recipe.length:])


def test_svdb_leads_take_the_named_channels_place() -> None:
    record = read_record(shared_path("svdb"), "800", channels=["MLII", "V1"],
                         missing_lead="first")
    assert record is not None and record.lead == "ECG1+ECG2" and record.fs == 128.0


def test_the_input_description_names_the_leads() -> None:
    two = InputSpec("signal", ("N", "V"), signal_length=252, rate=360.0, leads=("MLII", "V1"))
    assert two.shape == (2, 252) and "leads MLII+V1" in two.describe()
    assert InputSpec.from_dict(two.to_dict()) == two
    one = InputSpec("signal", ("N", "V"), signal_length=252, rate=360.0)
    assert one.shape == (1, 252)
    with pytest.raises(ConfigError, match=r"leads \[one lead\] instead of \[MLII, V1\]"):
        two.check_data(one, "data=mitbih")
    swapped = InputSpec("signal", ("N", "V"), signal_length=252, rate=360.0,
                        leads=("V1", "MLII"))
    with pytest.raises(ConfigError, match=r"leads \[V1, MLII\] instead of \[MLII, V1\]"):
        two.check_data(swapped, "data=mitbih")


def test_init_from_meets_channels_by_lead_name(tmp_path: Path) -> None:
    source = XResNet1d(num_classes=5, in_channels=2, widths=(8, 16), blocks=(1, 1))
    path = tmp_path / "two.ckpt"
    spec = InputSpec("signal", tuple("NSVFQ"), signal_length=252, rate=360.0,
                     leads=("MLII", "V1"))
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()},
                "ecg_input": spec.to_dict(), "ecg_class_names": list("NSVFQ")}, path)
    same = XResNet1d(num_classes=5, in_channels=2, widths=(8, 16), blocks=(1, 1))
    report = init_from(same, str(path), "", list("NSVFQ"), leads=("MLII", "V1"))
    assert report.reinitialised == []
    with pytest.raises(ConfigError, match=r"reads leads \[MLII, V1\], this run \[V1, MLII\]"):
        init_from(XResNet1d(num_classes=5, in_channels=2, widths=(8, 16), blocks=(1, 1)),
                  str(path), "", list("NSVFQ"), leads=("V1", "MLII"))
    # one lead from a two-lead model: the input layer starts afresh, the rest is copied
    one = XResNet1d(num_classes=5, in_channels=1, widths=(8, 16), blocks=(1, 1))
    report = init_from(one, str(path), "", list("NSVFQ"), leads=())
    assert report.reinitialised and len(report.loaded) > 4


def test_images_and_csv_rows_refuse_several_leads(compose_train, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    cfg = compose_train(["data=beat_images", "data.source.beats.channels=[MLII,V1]",
                         f"data.source.beats.dir={shared_path('mitdb')}",
                         "data.source.beats.records=[100]", "data.source.beats.download=false",
                         f"paths.data_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="the image renderers draw one lead per beat"):
        instantiate(cfg.data).source.rows()
    assert not any(tmp_path.iterdir())  # refused before any beat was prepared


@pytest.mark.parametrize("model", ["cnn1d", "resnet1d", "inception1d"])
def test_every_1d_model_takes_one_input_channel_per_lead(compose_train, model) -> None:
    from ecg_experiments.config import build

    extra = [] if model == "cnn1d" else ["data/recipe=centered", "data.rr_features=true"]
    cfg = compose_train([f"model={model}", "data.channels=[MLII,V1]", *extra])
    net = build(cfg.model.net)
    length = int(cfg.data.signal_length) + int(cfg.model.net.get("num_features") or 0)
    assert cfg.model.net.in_channels == 2
    assert net.eval()(torch.zeros(3, 2, length)).shape == (3, 5)
    assert compose_train([f"model={model}", *extra]).model.net.in_channels == 1


def test_one_lead_and_channels_are_not_given_together(tmp_path: Path) -> None:
    from ecg_experiments.data.physionet_datamodule import PhysionetDataModule

    with pytest.raises(ConfigError, match=r"data.leads=\['MLII'\] and data.channels"):
        PhysionetDataModule(str(tmp_path), CenteredRecipe(), dir=str(tmp_path),
                            leads=["MLII"], channels=["MLII", "V1"])
    with pytest.raises(ConfigError, match="data.channels: beats of several leads are cut at "
                                          "the annotated R-peaks"):
        PhysionetDataModule(str(tmp_path), KachueeRecipe(rpeaks="detector"), dir=str(tmp_path),
                            channels=["MLII", "V1"])
