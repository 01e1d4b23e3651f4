"""Preparing the real MIT-BIH records: counts, beat shape, agreement with the public rows."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from ecg_experiments.data.beat_features import RR_FEATURES
from ecg_experiments.data.beat_table import BeatTable, prepare_mitbih
from ecg_experiments.data.beats import read_beats_csv
from ecg_experiments.data.mitbih import MitbihDataModule
from ecg_experiments.data.physionet import DS1, DS2, PACED, read_record
from ecg_experiments.data.segment import CenteredRecipe, KachueeRecipe

# the public Kaggle files (mitbih_train.csv + mitbih_test.csv) per AAMI class
KAGGLE_TOTALS = {"N": 90_589, "S": 2_779, "V": 7_236, "F": 803, "Q": 8_039}


def _class_means(signals: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.stack([signals[labels == c].mean(axis=0) for c in range(5)])


def _agreement(ours: np.ndarray, public: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    corr = np.array([np.corrcoef(a, b)[0, 1] for a, b in zip(ours, public, strict=True)])
    return corr, np.abs(ours - public).mean(axis=1)


def _within_tolerance(corr: np.ndarray, mean_abs: np.ndarray) -> bool:
    return bool((corr >= 0.95).all() and (mean_abs <= 0.07).all())


def test_kachuee_counts_match_the_public_totals(kachuee_prepared: Path) -> None:
    table = BeatTable.load(kachuee_prepared / "beats.npz")
    counts = dict(zip("NSVFQ", np.bincount(table.beats.labels, minlength=5).tolist(),
                      strict=True))
    for name, expected in KAGGLE_TOTALS.items():
        assert abs(counts[name] - expected) <= 0.02 * expected, (name, counts[name], expected)
    assert sum(counts.values()) == pytest.approx(109_446, rel=0.02)
    assert len(np.unique(table.records)) == 48


def test_kachuee_beats_are_unit_range_187_long_zero_padded(kachuee_prepared: Path) -> None:
    signals = BeatTable.load(kachuee_prepared / "beats.npz").beats.signals
    assert signals.shape[1] == 187 and signals.dtype == np.float32
    assert signals.min() == 0.0 and signals.max() == 1.0
    assert (signals.max(axis=1) == 1.0).mean() > 0.99  # normalised per beat, as the public rows
    nonzero = signals != 0
    end = signals.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)  # after the last nonzero sample
    inside = np.arange(signals.shape[1])[None, :] < end[:, None]
    zeros_inside = ((signals == 0) & inside).sum(axis=1)
    assert zeros_inside.max() <= 1  # only the minimum itself is 0 before the padding
    assert np.median(signals.shape[1] - end) > 40  # most beats are padded


def test_class_mean_beats_agree_with_the_public_rows(
    kachuee_prepared: Path, kachuee_mitbih_csv: Path, mitdb_dir: Path
) -> None:
    public_x, public_y = read_beats_csv(kachuee_mitbih_csv)
    public = _class_means(public_x, public_y)
    table = BeatTable.load(kachuee_prepared / "beats.npz")
    corr, mean_abs = _agreement(_class_means(table.beats.signals, table.beats.labels), public)
    assert _within_tolerance(corr, mean_abs), (corr, mean_abs)

    # the tolerance is tight enough to catch a wrong sampling rate or missing normalisation
    records = [read_record(mitdb_dir, r, missing_lead="first") for r in ("208", "213", "119",
                                                                         "207", "232", "217")]
    for recipe, scale in ((KachueeRecipe(rate=360.0), 1.0), (KachueeRecipe(), None)):
        beats = [recipe.extract(record) for record in records]
        signals = np.concatenate([b.signals for b in beats])
        labels = np.concatenate([b.labels for b in beats])
        if scale is None:  # undo the normalisation: raw millivolts
            signals = signals * 2.0 - 0.5
        corr, mean_abs = _agreement(_class_means(signals, labels), public)
        assert not _within_tolerance(corr, mean_abs), recipe


def test_second_run_does_no_work(kachuee_prepared: Path, mitdb_dir: Path, caplog) -> None:
    before = (kachuee_prepared / "beats.npz").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        again = prepare_mitbih(mitdb_dir, kachuee_prepared.parent, KachueeRecipe(),
                               missing_lead="first", download=False, progress=False)
    assert again == kachuee_prepared
    assert (kachuee_prepared / "beats.npz").stat().st_mtime_ns == before
    assert "nothing to do" in caplog.text
    manifest = json.loads((kachuee_prepared / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "kachuee" and len(manifest["inputs"]) == 48 * 3


def test_changed_manifest_prepares_again(mitdb_dir: Path, tmp_path: Path) -> None:
    args = (mitdb_dir, tmp_path, KachueeRecipe())
    kwargs = {"records": ["100", "101"], "download": False, "progress": False}
    path = prepare_mitbih(*args, **kwargs)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["inputs"]["100.dat"] = "0" * 64  # as if the raw data had changed
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert prepare_mitbih(*args, **kwargs) == path
    assert json.loads((path / "manifest.json").read_text())["inputs"]["100.dat"] != "0" * 64
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp folder left


def _datamodule(prepared: Path, split: str, **kwargs) -> MitbihDataModule:
    dm = MitbihDataModule(
        mitdb_dir="unused", prepared_dir=str(prepared.parent), recipe=KachueeRecipe(),
        split=split, missing_lead="first", download=False, seed=7, **kwargs,
    )
    dm.prepared_paths = {"mitdb": prepared}
    dm.setup("fit")
    return dm


def _records_of(dm: MitbihDataModule) -> dict[str, set[str]]:
    """Record names per split (ids are <database>/<record>)."""
    frame = dm.split_frame
    assert frame["record"].str.startswith("mitdb/").all()
    return {name: {r.split("/")[1] for r in frame.loc[frame["split"] == name, "record"]}
            for name in ("train", "val", "test")}


def test_interpatient_split(kachuee_prepared: Path) -> None:
    # the paced records are excluded from an interpatient preparation; here the table has
    # all 48, so the split itself must leave them out
    dm = _datamodule(kachuee_prepared, "interpatient")
    records = _records_of(dm)
    assert records["train"] <= set(DS1) and records["val"] <= set(DS1)
    assert records["test"] == set(DS2)
    assert not records["train"] & records["val"]
    assert len(records["val"]) >= 1 and not (set().union(*records.values()) & set(PACED))
    assert set(dm.records["mitdb"]).isdisjoint(PACED)


def test_records_split_keeps_records_apart(kachuee_prepared: Path) -> None:
    dm = _datamodule(kachuee_prepared, "records")
    records = _records_of(dm)
    assert not (records["train"] & records["val"] or records["train"] & records["test"]
                or records["val"] & records["test"])
    assert sum(len(r) for r in records.values()) == 48
    assert len(records["test"]) == round(0.2 * 48)


def test_random_split_is_kaggle_like_and_saved(kachuee_prepared: Path) -> None:
    dm = _datamodule(kachuee_prepared, "random")
    sizes = {name: len(ds) for name, ds in dm.datasets.items()}
    assert sizes["test"] == pytest.approx(21_892, abs=5)
    assert sizes["train"] + sizes["val"] == pytest.approx(87_554, abs=5)
    folder = dm._split_dir()
    x, y = read_beats_csv(folder / "mitbih_test.csv")
    assert len(y) == sizes["test"] and x.shape[1] == 187
    np.testing.assert_array_equal(np.bincount(y, minlength=5), dm.class_counts("test"))
    assert os.path.getsize(folder / "mitbih_train.csv") > 4 * os.path.getsize(
        folder / "mitbih_test.csv")
    again = _datamodule(kachuee_prepared, "random")
    np.testing.assert_array_equal(again.labels("val"), dm.labels("val"))


def test_centered_recipe(mitdb_dir: Path) -> None:
    recipe = CenteredRecipe()
    record = read_record(mitdb_dir, "208")
    beats = recipe.extract(record)
    assert recipe.length == 90 + 162
    assert beats.signals.shape == (len(beats.labels), 252)
    assert len(beats.labels) >= len(record.beat_samples) - 2
    np.testing.assert_allclose(beats.signals.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(beats.signals.std(axis=1), 1, atol=1e-3)
    assert beats.features.shape == (len(beats.labels), len(RR_FEATURES))
    # a premature ventricular beat comes early: its pre-R-R ratio is below 1 on average
    pre_ratio = beats.features[:, 2]
    assert pre_ratio[beats.labels == 2].mean() < 0.9 < pre_ratio[beats.labels == 0].mean()


def test_rr_features_against_the_average_rhythm() -> None:
    """The *_avg_ratio features divide by the mean R-R of the 10 minutes around the beat:
    a patient at 60 then 120 beats/min reads 1.0 in both stretches, an early beat below."""
    fs = 360.0
    rr = np.r_[np.full(700, 1.0), np.full(1400, 0.5)]
    rr[300] = 0.6  # one premature beat in the slow stretch (and a longer pause after it)
    rr[301] = 1.4
    samples = np.round(np.r_[0.0, np.cumsum(rr)] * fs).astype(np.int64)
    features = dict(zip(RR_FEATURES, CenteredRecipe().rr_features(samples, fs).T, strict=True))
    slow, fast = slice(10, 250), slice(1700, 2000)  # > 5 min from the change of rate
    np.testing.assert_allclose(features["pre_rr"][fast], 0.5, atol=1e-2)
    np.testing.assert_allclose(features["pre_rr_avg_ratio"][slow], 1.0, atol=1e-2)
    np.testing.assert_allclose(features["pre_rr_avg_ratio"][fast], 1.0, atol=1e-2)
    np.testing.assert_allclose(features["local_rr_avg_ratio"][fast], 1.0, atol=1e-2)
    assert features["pre_rr_avg_ratio"][301] == pytest.approx(0.6, abs=0.01)
    assert features["post_rr_avg_ratio"][301] == pytest.approx(1.4, abs=0.01)


def test_rr_context_is_the_sequence_of_intervals_around_the_beat() -> None:
    """rr_context=2: the 7 features, then the two intervals before the beat's previous one
    and the two after its next one, each over the average R-R (the edges repeat)."""
    fs = 100.0
    rr = np.array([1.0, 1.0, 1.0, 0.6, 1.4, 1.0, 1.0, 1.0])  # an early beat, then a pause
    samples = np.round(np.r_[0.0, np.cumsum(rr)] * fs).astype(np.int64)
    recipe = CenteredRecipe(rr_context=2)
    assert recipe.feature_names == (*RR_FEATURES, "rr_before1_avg_ratio", "rr_before2_avg_ratio",
                                    "rr_after1_avg_ratio", "rr_after2_avg_ratio")
    features = recipe.rr_features(samples, fs)
    plain = CenteredRecipe().rr_features(samples, fs)
    np.testing.assert_array_equal(features[:, :7], plain)
    named = dict(zip(recipe.feature_names, features.T, strict=True))
    average = 1.0  # the mean of the intervals (all within 600 s)
    # beat 5 (after the pause): previous R-R 1.4; before it 0.6 then 1.0; next 1.0, 1.0
    assert named["pre_rr"][5] == pytest.approx(1.4)
    assert named["rr_before1_avg_ratio"][5] == pytest.approx(0.6 / average, abs=1e-3)
    assert named["rr_before2_avg_ratio"][5] == pytest.approx(1.0 / average, abs=1e-3)
    # beat 2: next R-R 1.0 (to beat 3); after it 0.6 and 1.4
    assert named["rr_after1_avg_ratio"][2] == pytest.approx(0.6, abs=1e-3)
    assert named["rr_after2_avg_ratio"][2] == pytest.approx(1.4, abs=1e-3)
    # the first beat repeats its own previous interval at the edge
    assert named["rr_before2_avg_ratio"][0] == pytest.approx(named["pre_rr_avg_ratio"][0])
    with pytest.raises(ValueError, match="rr_context=-1: expected an integer 0-20"):
        CenteredRecipe(rr_context=-1)


def test_rhythm_features_tell_an_early_beat_in_sinus_rhythm_from_one_in_fibrillation() -> None:
    """rhythm_beats=8: after the R-R features, the spread of the 8 intervals before the beat
    (CV, RMSSD over mean) and the previous R-R over their median: a premature beat after a
    regular rhythm has spread 0 and ratio 0.6; the same early interval inside an irregular
    run has a large spread; the first beat, with nothing before, reads as regular."""

    fs = 250.0
    irregular = [0.9, 0.5, 1.1, 0.7, 1.2, 0.6, 0.8, 1.0]
    rr = np.array([1.0] * 12 + [0.6, 1.4] + [1.0] * 10 + irregular + [0.6])
    samples = np.round(np.r_[0.0, np.cumsum(rr)] * fs).astype(np.int64)
    recipe = CenteredRecipe(rr_context=1, rhythm_beats=8)
    assert recipe.feature_names == (*RR_FEATURES, "rr_before1_avg_ratio", "rr_after1_avg_ratio",
                                    "rhythm8_rr_cv", "rhythm8_rr_rmssd_ratio",
                                    "rhythm8_pre_rr_median_ratio")
    features = recipe.rr_features(samples, fs)
    np.testing.assert_array_equal(features[:, :9], CenteredRecipe(rr_context=1).rr_features(
        samples, fs))
    named = {name.removeprefix("rhythm8_"): values
             for name, values in zip(recipe.feature_names, features.T, strict=True)}
    premature, in_fibrillation, first = 13, len(rr), 0  # beat i's previous R-R is rr[i - 1]
    assert named["pre_rr"][premature] == pytest.approx(0.6)
    assert named["rr_cv"][premature] == pytest.approx(0.0, abs=1e-6)
    assert named["rr_rmssd_ratio"][premature] == pytest.approx(0.0, abs=1e-6)
    assert named["pre_rr_median_ratio"][premature] == pytest.approx(0.6, abs=1e-3)
    assert named["pre_rr"][in_fibrillation] == pytest.approx(0.6)
    before = np.array(irregular)
    assert named["rr_cv"][in_fibrillation] == pytest.approx(
        before.std() / before.mean(), abs=1e-3)
    assert named["rr_rmssd_ratio"][in_fibrillation] == pytest.approx(
        np.sqrt(np.mean(np.diff(before) ** 2)) / before.mean(), abs=1e-3)
    assert named["pre_rr_median_ratio"][in_fibrillation] == pytest.approx(
        0.6 / np.median(before), abs=1e-3)
    assert named["rr_cv"][in_fibrillation] > 0.25
    assert (named["rr_cv"][first], named["pre_rr_median_ratio"][first]) == (0, 1)
    # one beat (no interval) and two annotations on one sample read as a regular rhythm
    assert recipe.rr_features(np.array([100]), fs)[0, -3:].tolist() == [0, 0, 1]
    same = recipe.rr_features(np.array([0, 250, 250, 500, 750]), fs)
    assert np.isfinite(same[:, -3:]).all()
    # the option is off by default and then leaves the recipe's parameters as they were
    assert "rhythm_beats" not in CenteredRecipe().params()
    assert CenteredRecipe(rhythm_beats=16).params()["rhythm_beats"] == 16
    for bad in (2, 101, 1.5, True):
        with pytest.raises(ValueError, match=f"rhythm_beats={bad!r}: expected 0"):
            CenteredRecipe(rhythm_beats=bad)


def test_template_features_set_ventricular_beats_apart_from_the_patients_own(
        mitdb_dir: Path) -> None:
    """template_features: correlation with / RMS from the record's median beat. On record 208
    (992 V among 1,586 N) the V beats are far from the median beat, the N beats close."""
    from ecg_experiments.data.beat_features import TEMPLATE_FEATURES, template_features

    record = read_record(mitdb_dir, "208")
    recipe = CenteredRecipe(rate=120, template_features=True)
    beats = recipe.extract(record)
    assert recipe.feature_names == (*RR_FEATURES, *TEMPLATE_FEATURES)
    assert beats.features.shape == (len(beats.labels), 9)
    corr, rms = beats.features[:, 7], beats.features[:, 8]
    normal, ventricular = beats.labels == 0, beats.labels == 2
    assert np.median(corr[normal]) > 0.9 > 0.5 > np.median(corr[ventricular])
    assert np.median(rms[ventricular]) > 2 * np.median(rms[normal])
    # the same as computing it by hand: correlation with the median row
    rows = beats.signals
    expected = np.corrcoef(rows[:5], np.median(rows, axis=0)[None])[-1, :5]
    np.testing.assert_allclose(template_features(rows)[:5, 0], expected, atol=1e-5)


def test_subtract_template_makes_morphology_relative_to_the_patients_median_beat(
        mitdb_dir: Path) -> None:
    """subtract_template: each normalised beat minus the record's median beat. On record 208
    the N beats end near zero and the V beats far from it; features are unchanged."""
    record = read_record(mitdb_dir, "208")
    plain = CenteredRecipe(rate=120, template_features=True).extract(record)
    relative = CenteredRecipe(rate=120, template_features=True,
                              subtract_template=True).extract(record)
    np.testing.assert_allclose(relative.signals,
                               plain.signals - np.median(plain.signals, axis=0), atol=1e-5)
    np.testing.assert_array_equal(relative.features, plain.features)
    np.testing.assert_array_equal(relative.labels, plain.labels)
    size = np.sqrt(np.mean(relative.signals ** 2, axis=1))
    normal, ventricular = relative.labels == 0, relative.labels == 2
    assert np.median(size[ventricular]) > 2 * np.median(size[normal])  # 0.94 vs 0.44
    assert np.median(size[normal]) < 0.5  # z-scored beats: RMS 1 before the subtraction


def test_detector_option_labels_detected_peaks(mitdb_dir: Path) -> None:
    record = read_record(mitdb_dir, "208")
    annotated = len(record.beat_samples)
    loose = KachueeRecipe(rpeaks="detector", detector_threshold=0.5).extract(record)
    paper = KachueeRecipe(rpeaks="detector").extract(record)  # the paper's threshold, 0.9
    assert 0.95 * annotated < len(loose.labels) <= annotated
    assert len(paper.labels) < 0.5 * len(loose.labels)
    # every detected peak carries the class of the annotation it was matched to
    index = np.searchsorted(record.beat_samples, loose.samples)
    np.testing.assert_array_equal(record.beat_samples[index], loose.samples)
    np.testing.assert_array_equal(record.beat_symbols[index], loose.symbols)
