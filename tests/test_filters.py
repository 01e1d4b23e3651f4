"""Cleaning records before beats are cut: baseline removal and band-pass filtering, on a
synthetic signal and on real MIT-BIH beats with real baseline wander from the NSTDB."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import welch

from ecg_experiments.data.filters import bandpass, check_bandpass, clean, remove_baseline
from ecg_experiments.errors import ConfigError
from tests.conftest import shared_path

FS = 360.0


def _spikes(seconds: float = 20.0) -> np.ndarray:
    """QRS-like triangles (80 ms wide, height 1) every 0.8 s on a flat line."""
    t = np.arange(int(seconds * FS)) / FS
    phase = (t % 0.8) - 0.4
    return np.clip(1 - np.abs(phase) / 0.04, 0, None)


def test_baseline_removal_takes_the_slow_wander_and_keeps_the_qrs() -> None:
    ecg = _spikes()
    wander = 0.8 * np.sin(2 * np.pi * 0.3 * np.arange(len(ecg)) / FS)
    cleaned = remove_baseline(ecg + wander, FS)
    inner = slice(int(FS), -int(FS))  # away from the ends
    left = (cleaned - ecg)[inner]
    # 94% of the wander's RMS is gone (0.032 of 0.56 left), at most 0.11 anywhere
    assert np.sqrt(np.mean(left**2)) < 0.1 * np.sqrt(np.mean(wander[inner] ** 2))
    assert np.abs(left).max() < 0.15
    assert np.abs(np.corrcoef(cleaned[inner], wander[inner])[0, 1]) < 0.05
    peaks = cleaned[inner][ecg[inner] > 0.99]
    assert peaks.min() > 0.85  # the QRS height is kept (0.89 at the steepest wander)


def test_bandpass_keeps_the_band_and_removes_what_lies_outside() -> None:
    t = np.arange(int(30 * FS)) / FS
    inside, below, above = (np.sin(2 * np.pi * f * t) for f in (10.0, 0.1, 120.0))
    filtered = bandpass(inside + below + above, FS, (0.5, 40.0))
    freqs, power = welch(filtered, fs=FS, nperseg=4096)
    at = {f: power[np.argmin(np.abs(freqs - f))] for f in (10.0, 0.1, 120.0)}
    assert at[0.1] < 1e-3 * at[10.0] and at[120.0] < 1e-3 * at[10.0]
    lowpass = bandpass(inside + above, FS, (0.0, 40.0))
    assert np.abs(lowpass - inside)[int(FS):-int(FS)].max() < 0.02


@pytest.mark.parametrize("band", [[40, 0.5], [-1, 40], [1, 2, 3]])
def test_a_wrong_band_names_the_option(band) -> None:
    with pytest.raises(ConfigError, match=r"data.recipe.bandpass_hz=.*\[low, high\]"):
        check_bandpass(band)
    with pytest.raises(ConfigError, match=r"upper edge must be below 62.5 Hz"):
        bandpass(np.zeros(1000), 125.0, (0.5, 70.0))


def test_real_baseline_wander_is_taken_out_of_real_beats() -> None:
    """Record 100 (MLII) plus the NSTDB's recorded baseline wander (`bw`), scaled to the
    ECG's amplitude: after cleaning, the noisy record is close to the cleaned original."""
    import wfdb

    ecg = wfdb.rdrecord(str(shared_path("mitdb") / "100"), channels=[0], sampto=int(120 * FS))
    noise = wfdb.rdrecord(str(shared_path("nstdb") / "bw"), channels=[0], sampto=int(120 * FS))
    x = ecg.p_signal[:, 0]
    wander = noise.p_signal[:, 0]
    wander = (wander - wander.mean()) / wander.std() * x.std() * 2
    noisy = x + wander
    band = check_bandpass([0.5, 40])
    reference, cleaned = clean(x, FS, True, band), clean(noisy, FS, True, band)
    inner = slice(int(2 * FS), -int(2 * FS))
    before = np.sqrt(np.mean((noisy - x)[inner] ** 2))
    after = np.sqrt(np.mean((cleaned - reference)[inner] ** 2))
    assert after < 0.1 * before, (before, after)
    assert np.corrcoef(cleaned[inner], reference[inner])[0, 1] > 0.98


def test_recipes_clean_before_cutting_and_key_their_cache_by_it() -> None:
    from ecg_experiments.data.physionet import read_record
    from ecg_experiments.data.segment import CenteredRecipe, KachueeRecipe

    record = read_record(shared_path("mitdb"), "100")
    for recipe_class in (KachueeRecipe, CenteredRecipe):
        plain = recipe_class()
        filtered = recipe_class(baseline=True, bandpass_hz=[0.5, 40])
        assert filtered.bandpass_hz == (0.5, 40.0)
        assert plain.params() != filtered.params()  # another prepared folder
        a, b = plain.extract(record), filtered.extract(record)
        assert np.array_equal(a.labels, b.labels) and a.signals.shape == b.signals.shape
        assert not np.allclose(a.signals, b.signals)
