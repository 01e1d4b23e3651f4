"""Beat extraction recipes: one record (a lead + reference beats) -> fixed-length beats.

- KachueeRecipe reproduces the recipe behind the public Kaggle CSVs (Kachuee et al. 2018).
- CenteredRecipe cuts a window around each R-peak and adds R-R interval features.
Both work on whole records with array indexing (no per-beat Python loop). Each says which of
its options make a beat depend on more of its record than the beat itself
(`record_only_options`): a model trained with those cannot read ready-cut beats (a CSV row).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from fractions import Fraction

import numpy as np
import pandas as pd
from scipy.signal import find_peaks, resample_poly

from ecg_experiments.data.beat_features import (
    check_template_beats,
    median_beat,
    rhythm_features,
    rr_feature_names,
    template_features,
)
from ecg_experiments.data.filters import check_bandpass, clean
from ecg_experiments.data.physionet import Record, aami_label
from ecg_experiments.errors import ConfigError


def _yaml(value: object) -> str:
    """An option value as a command-line override writes it (true, [0.5, 40.0], window)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def _cleaning_options(baseline: bool, bandpass_hz: tuple[float, float] | None
                      ) -> dict[str, str]:
    """The record-only cleaning options (filters.py): both filter the record's signal before
    its beats are cut (a filter needs the signal around the beat, past its window)."""
    options = {}
    if baseline:
        options["baseline"] = "the record's baseline removed before its beats are cut"
    if bandpass_hz is not None:
        options["bandpass_hz"] = "the record band-pass filtered before its beats are cut"
    return options


def describe_record_only(recipe: object) -> str | None:
    """`data.recipe.<option>=<value> (why), ...` for the options of `recipe` that a row of a
    beats CSV cannot carry (its `record_only_options`), or None when it has none."""
    options = getattr(recipe, "record_only_options", lambda: {})()
    if not options:
        return None
    return ", ".join(f"data.recipe.{name}={_yaml(getattr(recipe, name))} ({why})"
                     for name, why in options.items())


def window_length(before: float, after: float, rate: float) -> int:
    """Samples in a window of `before` + `after` seconds around an R-peak at `rate` Hz."""
    return int(round(float(before) * float(rate))) + int(round(float(after) * float(rate)))


@dataclass
class Beats:
    """Beats of one or more records; row i of every array describes beat i."""

    signals: np.ndarray  # float32 [n, length]
    labels: np.ndarray  # int64 AAMI class index [n]
    samples: np.ndarray  # int64 R-peak sample at the record's original rate [n]
    symbols: np.ndarray  # str annotation symbol [n]
    features: np.ndarray  # float32 [n, k] (k = 0 when the recipe has none)


def resample(signal: np.ndarray, fs: float, rate: float) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from fs to rate Hz."""
    if fs == rate:
        return signal
    ratio = Fraction(rate / fs).limit_denominator(1000)
    return resample_poly(signal, ratio.numerator, ratio.denominator)


def _minmax_rows(rows: np.ndarray, valid: np.ndarray) -> np.ndarray:
    low = np.where(valid, rows, np.inf).min(axis=1, keepdims=True)
    high = np.where(valid, rows, -np.inf).max(axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    return np.where(valid, (rows - low) / span, 0.0)


def _gather(signal: np.ndarray, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows signal[start : start + length]; positions past either end are marked invalid."""
    index = starts[:, None] + np.arange(length)[None, :]
    valid = (index >= 0) & (index < len(signal))
    return signal[np.clip(index, 0, len(signal) - 1)], valid


def _match_to_annotations(
    peaks: np.ndarray, beats: np.ndarray, tolerance: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each detected peak the nearest annotated beat within tolerance (one peak per beat).

    Written here because wfdb.processing.compare_annotations is built to score a detector
    (sensitivity, predictivity); labelling each detected beat needs its nearest annotation.
    """
    if len(beats) == 0 or len(peaks) == 0:
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    right = np.clip(np.searchsorted(beats, peaks), 0, len(beats) - 1)
    left = np.clip(right - 1, 0, len(beats) - 1)
    nearest = np.where(np.abs(beats[left] - peaks) <= np.abs(beats[right] - peaks), left, right)
    close = np.abs(beats[nearest] - peaks) <= tolerance
    peaks, nearest = peaks[close], nearest[close]
    distance = np.abs(beats[nearest] - peaks)
    order = np.lexsort((distance, nearest))  # per beat, the closest peak first
    first = np.ones(len(order), dtype=bool)
    first[1:] = nearest[order][1:] != nearest[order][:-1]
    keep = np.sort(order[first])
    return peaks[keep], nearest[keep]


@dataclass(frozen=True)
class KachueeRecipe:
    """The recipe of Kachuee et al. (2018) behind the public MIT-BIH beat CSVs.

    Resample to `rate` Hz; split into `window_s` windows; nominal period T = median R-R of
    the window; from each R-peak take `segment_periods`·T samples; min-max normalise to
    [0, 1]; zero-pad to `length`. The paper normalises each window; the public files were
    evidently normalised per beat (99% of their rows reach exactly 1.0), hence
    `normalize="beat"` by default and `"window"` as in the paper's text. R-peaks come from
    the reference annotations, or (`rpeaks="detector"`) from the paper's detector: local
    maxima above `detector_threshold` of the window-normalised signal, labelled by the
    nearest annotation. The public files lack the last beat of every record
    (`drop_last_beat`).
    """

    rate: float = 125.0
    length: int = 187
    window_s: float = 10.0
    segment_periods: float = 1.2
    normalize: str = "beat"
    rpeaks: str = "annotations"
    detector_threshold: float = 0.9
    drop_last_beat: bool = True
    # cleaning before the beats are cut (data/filters.py): median-filter baseline removal,
    # and a zero-phase band-pass [low, high] Hz
    baseline: bool = False
    bandpass_hz: tuple[float, float] | None = None

    name = "kachuee"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bandpass_hz", check_bandpass(self.bandpass_hz))
        if self.normalize not in ("beat", "window"):
            raise ValueError(f"normalize={self.normalize!r}: expected 'beat' or 'window'")
        if self.rpeaks not in ("annotations", "detector"):
            raise ValueError(f"rpeaks={self.rpeaks!r}: expected 'annotations' or 'detector'")

    def params(self) -> dict:
        return {"name": self.name, **asdict(self)}

    def record_only_options(self) -> dict[str, str]:
        """{option: why} for the options set that make a beat depend on its record beyond the
        beat itself, which a ready-cut beat (a beats CSV row) cannot carry. The defaults (per
        beat normalisation, annotated R-peaks, no cleaning) are what the public CSVs hold."""
        options = _cleaning_options(self.baseline, self.bandpass_hz)
        if self.normalize == "window":
            options["normalize"] = f"each beat scaled by its record's {self.window_s:g} s window"
        if self.rpeaks == "detector":
            options["rpeaks"] = "beats cut at the R-peaks detected in the record"
        return options

    def _window_norm(self, x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        n_windows = -(-len(x) // window)
        padded = np.full(n_windows * window, np.nan)
        padded[: len(x)] = x
        blocks = padded.reshape(n_windows, window)
        return np.nanmin(blocks, axis=1), np.nanmax(blocks, axis=1)

    def _detect(self, x: np.ndarray, low: np.ndarray, high: np.ndarray, window: int) -> np.ndarray:
        span = np.where(high > low, high - low, 1.0)
        normalised = (x - np.repeat(low, window)[: len(x)]) / np.repeat(span, window)[: len(x)]
        # one pass over the whole record: a peak must beat the threshold within its window
        peaks, _ = find_peaks(normalised, height=self.detector_threshold)
        return peaks.astype(np.int64)

    def extract(self, record: Record) -> Beats:
        signal = clean(record.signal, record.fs, self.baseline, self.bandpass_hz)
        x = resample(signal, record.fs, self.rate)
        scale = self.rate / record.fs
        window = int(round(self.window_s * self.rate))
        samples, symbols = record.beat_samples, record.beat_symbols
        if self.drop_last_beat and len(samples):
            samples, symbols = samples[:-1], symbols[:-1]
        r = np.round(samples * scale).astype(np.int64)
        low, high = self._window_norm(x, window)
        if self.rpeaks == "detector":
            peaks, matched = _match_to_annotations(
                self._detect(x, low, high, window), r, tolerance=int(round(0.15 * self.rate))
            )
            r, samples, symbols = peaks, samples[matched], symbols[matched]
        period = self._nominal_period(r, window)
        seg_len = np.minimum(np.round(self.segment_periods * period).astype(np.int64), self.length)
        rows, valid = _gather(x, r, self.length)
        valid &= np.arange(self.length)[None, :] < seg_len[:, None]
        if self.normalize == "beat":
            signals = _minmax_rows(rows, valid)
        else:
            w = np.minimum(r // window, len(low) - 1)
            span = np.where(high[w] > low[w], high[w] - low[w], 1.0)[:, None]
            signals = np.where(valid, np.clip((rows - low[w][:, None]) / span, 0, 1), 0.0)
        return Beats(
            signals=signals.astype(np.float32),
            labels=aami_label(symbols),
            samples=samples.astype(np.int64),
            symbols=symbols,
            features=np.zeros((len(r), 0), dtype=np.float32),
        )

    @staticmethod
    def _nominal_period(r: np.ndarray, window: int) -> np.ndarray:
        """Median R-R of each beat's window (the record's median where a window has none)."""
        if len(r) < 2:
            return np.full(len(r), window / 10.0)
        rr = np.diff(r).astype(np.float64)
        win = r // window
        same = win[1:] == win[:-1]
        per_window = pd.Series(rr[same]).groupby(win[1:][same]).median()
        fallback = float(np.median(rr))
        return pd.Series(win).map(per_window).fillna(fallback).to_numpy()


@dataclass(frozen=True)
class CenteredRecipe:
    """A window of `before` + `after` seconds around each annotated R-peak at `rate` Hz.

    Normalised per beat ("zscore", "minmax" or "none"). R-R features per beat (RR_FEATURES):
    the previous and next R-R interval (s), each divided by the local mean R-R over
    `local_rr_beats` beats on either side, and the previous, next and local R-R divided by
    the average R-R of the `average_rr_seconds` around the beat; with `rr_context` k also
    the k intervals before and after those, over the same average (`rr_feature_names`);
    with `rhythm_beats` n how irregular the n intervals before the beat were
    (RHYTHM_FEATURES); with `template_features` the beat against the record's median beat
    (TEMPLATE_FEATURES).
    With `subtract_template` the signal is the normalised beat minus the record's median
    normalised beat: morphology relative to the patient's own typical beat, so that a new
    patient's normal beats sit near zero whatever their shape (the template features, if
    any, are taken before the subtraction). Both need at least MIN_TEMPLATE_BEATS beats of a
    record (a DataError names the record otherwise). Beats whose window leaves the record are
    dropped.
    """

    rate: float = 360.0
    before: float = 0.25
    after: float = 0.45
    normalize: str = "zscore"
    local_rr_beats: int = 10
    average_rr_seconds: float = 600.0
    rr_context: int = 0
    rhythm_beats: int = 0
    template_features: bool = False
    subtract_template: bool = False
    length: int | None = None  # derived: round(before * rate) + round(after * rate)
    # cleaning before the beats are cut (data/filters.py), as in KachueeRecipe
    baseline: bool = False
    bandpass_hz: tuple[float, float] | None = None

    name = "centered"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bandpass_hz", check_bandpass(self.bandpass_hz))
        if isinstance(self.rr_context, bool) or int(self.rr_context) != self.rr_context \
                or not 0 <= int(self.rr_context) <= 20:
            raise ValueError(f"rr_context={self.rr_context!r}: expected an integer 0-20 (R-R "
                             "intervals on either side of the beat's own two)")
        object.__setattr__(self, "rr_context", int(self.rr_context))
        if isinstance(self.rhythm_beats, bool) or int(self.rhythm_beats) != self.rhythm_beats \
                or not (int(self.rhythm_beats) == 0 or 3 <= int(self.rhythm_beats) <= 100):
            raise ValueError(f"rhythm_beats={self.rhythm_beats!r}: expected 0 (off) or an "
                             "integer 3-100 (R-R intervals before the beat)")
        object.__setattr__(self, "rhythm_beats", int(self.rhythm_beats))
        if self.normalize not in ("zscore", "minmax", "none"):
            raise ValueError(f"normalize={self.normalize!r}: expected zscore, minmax or none")
        length = window_length(self.before, self.after, self.rate)
        if self.length is not None and int(self.length) != length:
            raise ValueError(f"length={self.length} but before/after/rate give {length}")
        object.__setattr__(self, "length", length)

    def params(self) -> dict:
        params = asdict(self)
        if not self.rhythm_beats:  # an option added later: off, the prepared beats' key and
            del params["rhythm_beats"]  # the stored runs' recipe stay what they were
        return {"name": self.name, **params, "features": list(self.feature_names)}

    def record_only_options(self) -> dict[str, str]:
        """{option: why} for the options set that make a beat's signal depend on its record
        beyond the beat itself, which a ready-cut beat (a beats CSV row) cannot carry (the
        R-R and template features are features: a CSV carries none)."""
        options = _cleaning_options(self.baseline, self.bandpass_hz)
        if self.subtract_template:
            options["subtract_template"] = "each beat minus its record's median beat"
        return options

    @property
    def feature_names(self) -> tuple[str, ...]:
        return rr_feature_names(self.rr_context, self.template_features, self.rhythm_beats)

    def rr_features(self, samples: np.ndarray, fs: float) -> np.ndarray:
        """The R-R part of the features (`rr_feature_names(rr_context, rhythm=...)`)."""
        if len(samples) < 2:  # no interval: ratios 1, and a regular rhythm (0, 0, 1)
            ones = np.ones((len(samples), len(rr_feature_names(self.rr_context))), np.float32)
            if self.rhythm_beats:
                ones = np.concatenate([ones, rhythm_features(np.ones(len(samples)), 2)], axis=1)
            return ones
        rr = np.diff(samples) / fs
        pre = np.concatenate([rr[:1], rr])
        post = np.concatenate([rr, rr[-1:]])
        local = (
            pd.Series(pre).rolling(2 * self.local_rr_beats + 1, center=True, min_periods=1)
            .mean().to_numpy()
        )
        at = pd.to_timedelta(np.asarray(samples) / fs, unit="s")
        average = (
            pd.Series(pre, index=at)
            .rolling(pd.Timedelta(seconds=self.average_rr_seconds), center=True, min_periods=1)
            .mean().to_numpy()
        )
        # the sequence: pre R-R of beat i-k and post R-R of beat i+k (ends repeat the edge)
        last = len(pre) - 1
        index = np.arange(len(pre))
        context = [pre[np.clip(index - k, 0, last)] / average
                   for k in range(1, self.rr_context + 1)]
        context += [post[np.clip(index + k, 0, last)] / average
                    for k in range(1, self.rr_context + 1)]
        features = np.stack(
            [pre, post, pre / local, post / local, pre / average, post / average,
             local / average, *context], axis=1,
        ).astype(np.float32)
        if self.rhythm_beats:
            features = np.concatenate([features, rhythm_features(pre, self.rhythm_beats)],
                                      axis=1)
        return features

    def extract(self, record: Record) -> Beats:
        signal = clean(record.signal, record.fs, self.baseline, self.bandpass_hz)
        x = resample(signal, record.fs, self.rate)
        r = np.round(record.beat_samples * self.rate / record.fs).astype(np.int64)
        before = int(round(self.before * self.rate))
        assert self.length is not None
        features = self.rr_features(record.beat_samples, record.fs)
        keep = (r - before >= 0) & (r - before + self.length <= len(x))
        rows, _ = _gather(x, r[keep] - before, self.length)
        if self.normalize == "zscore":
            std = rows.std(axis=1, keepdims=True)
            rows = (rows - rows.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
        elif self.normalize == "minmax":
            rows = _minmax_rows(rows, np.ones_like(rows, dtype=bool))
        features = features[keep]
        check_template_beats(record.name, len(rows), tuple(
            o for o in ("template_features", "subtract_template") if getattr(self, o)))
        if self.template_features:
            features = np.concatenate([features, template_features(rows)], axis=1)
        if self.subtract_template and len(rows):
            rows = rows - median_beat(rows)
        return Beats(
            signals=rows.astype(np.float32),
            labels=aami_label(record.beat_symbols[keep]),
            samples=record.beat_samples[keep],
            symbols=record.beat_symbols[keep],
            features=features,
        )


def cut_beats(recipe: KachueeRecipe | CenteredRecipe, record: Record) -> Beats:
    """The recipe's beats of a record: of its one lead (signals [n, length]), or of each of
    its channels (a [samples, channels] signal: signals [n, channels, length]). Every lead is
    cut at the same annotated R-peaks; the features are the first lead's (the R-R features
    are the same for every lead; template features describe the first lead)."""
    if record.signal.ndim == 1:
        return recipe.extract(record)
    if getattr(recipe, "rpeaks", "annotations") != "annotations":
        raise ConfigError(f"data.recipe.rpeaks={recipe.rpeaks}: beats of several leads are cut "
                          "at the annotated R-peaks (a detector would cut each lead elsewhere)")
    leads = record.lead.split("+")
    parts = [recipe.extract(replace(record, signal=record.signal[:, k], lead=leads[k]))
             for k in range(record.signal.shape[1])]
    first = parts[0]
    return replace(first, signals=np.stack([p.signals for p in parts], axis=1))


def with_features(signals: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Beats with their per-beat features appended after the samples of every channel:
    [n, length] -> [n, length + k]; [n, channels, length] -> [n, channels, length + k]."""
    if signals.ndim == 2:
        return np.concatenate([signals, features], axis=1)
    copies = np.repeat(features[:, None, :], signals.shape[1], axis=1)
    return np.concatenate([signals, copies.astype(signals.dtype)], axis=2)
