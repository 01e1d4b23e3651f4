"""Cleaning a record's signal before beats are cut: baseline removal and band-pass filtering.

`baseline`: the baseline estimated by a 200 ms median filter followed by a 600 ms one (de
Chazal et al. 2004; Mondejar-Guerra et al. 2019) is subtracted - it follows the slow wander
of respiration and electrode motion, not the QRS or the T wave. `bandpass_hz`: a zero-phase
Butterworth filter (scipy `sosfiltfilt`), `[low, high]` Hz; low 0 makes it a low-pass.
Both work at the record's own rate, before the recipe resamples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.signal import butter, sosfiltfilt

from ecg_experiments.errors import ConfigError

BASELINE_WINDOWS_S = (0.2, 0.6)
BANDPASS_ORDER = 3


def check_bandpass(bandpass_hz: Sequence[float] | None) -> tuple[float, float] | None:
    """`[low, high]` Hz as a tuple (0 <= low < high), or None; ConfigError naming the option."""
    if bandpass_hz is None:
        return None
    values = tuple(float(v) for v in bandpass_hz)
    if len(values) != 2 or not 0 <= values[0] < values[1]:
        raise ConfigError(f"data.recipe.bandpass_hz={list(bandpass_hz)}: expected [low, high] "
                          "Hz with 0 <= low < high (low 0: a low-pass filter)")
    return values


def remove_baseline(signal: np.ndarray, fs: float) -> np.ndarray:
    """The signal minus its baseline (200 ms then 600 ms median filters)."""
    baseline = np.asarray(signal, dtype=np.float64)
    for seconds in BASELINE_WINDOWS_S:
        size = int(round(seconds * fs)) | 1  # odd: the window is centred on its sample
        baseline = ndimage.median_filter(baseline, size=size, mode="nearest")
    return signal - baseline


def bandpass(signal: np.ndarray, fs: float, band: tuple[float, float]) -> np.ndarray:
    """Zero-phase Butterworth band-pass (low-pass when band[0] is 0); the upper edge must lie
    below the Nyquist frequency of `fs`."""
    low, high = band
    if high >= fs / 2:
        raise ConfigError(f"data.recipe.bandpass_hz={list(band)}: the upper edge must be below "
                          f"{fs / 2:g} Hz (half the record's rate of {fs:g} Hz)")
    if low > 0:
        sos = butter(BANDPASS_ORDER, [low, high], btype="bandpass", fs=fs, output="sos")
    else:
        sos = butter(BANDPASS_ORDER, high, btype="lowpass", fs=fs, output="sos")
    return sosfiltfilt(sos, signal)


def clean(signal: np.ndarray, fs: float, baseline: bool,
          band: tuple[float, float] | None) -> np.ndarray:
    """Baseline removal, then band-pass filtering, each when asked for."""
    if baseline:
        signal = remove_baseline(signal, fs)
    if band is not None:
        signal = bandpass(signal, fs, band)
    return signal
