"""Features of a beat beside its samples: R-R intervals (de Chazal et al. 2004) and the
beat's likeness to its record's typical (median) beat; their names as the recipes make them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ecg_experiments.errors import DataError

# R-R features of the centered recipe: the intervals before and after the beat (s), each over
# the local mean R-R (beats nearby), and the previous, next and local interval over the
# average R-R of the +-5 minutes around the beat (de Chazal et al. 2004), which puts every
# patient's rhythm on one scale - what inter-patient classification of S beats rests on
RR_FEATURES = ("pre_rr", "post_rr", "pre_rr_ratio", "post_rr_ratio",
               "pre_rr_avg_ratio", "post_rr_avg_ratio", "local_rr_avg_ratio")


# rhythm context: how irregular the R-R intervals before the beat were - their coefficient of
# variation, their successive-difference RMS (RMSSD) over their mean, and the beat's previous
# R-R over their median. In atrial fibrillation or flutter every interval differs from the
# last, so an early normal beat is the rhythm, not a premature beat: the local-mean ratios
# alone cannot tell the two apart (issue 28: most inter-patient S false positives are there)
# (named with their window, `rhythm16_rr_cv`: a model and data of other windows never meet)
RHYTHM_FEATURES = ("rr_cv", "rr_rmssd_ratio", "pre_rr_median_ratio")


def rhythm_feature_names(beats: int) -> tuple[str, ...]:
    """RHYTHM_FEATURES over a window of `beats` intervals: `rhythm<beats>_<feature>`."""
    return tuple(f"rhythm{int(beats)}_{name}" for name in RHYTHM_FEATURES)

# morphology against the patient's own typical beat (the median beat of the record): the
# correlation with it and the RMS difference from it, in the beat's normalised units
TEMPLATE_FEATURES = ("template_corr", "template_rms")

# the fewest beats of one record whose median makes its typical beat (template_features,
# subtract_template): the median of a handful of beats is one of them (an ectopic beat of a
# short excerpt can become the "typical" beat); 20 beats are about 15-20 s of sinus rhythm
MIN_TEMPLATE_BEATS = 20


def rr_feature_names(context: int = 0, template: bool = False,
                     rhythm: int = 0) -> tuple[str, ...]:
    """RR_FEATURES, then with `context` k > 0 the R-R sequence around the beat: the k
    intervals before its previous one and the k after its next one, each over the average
    R-R (beat context: an early beat followed by a pause, a run of early beats); then with
    `rhythm` (a number of intervals, > 0) the RHYTHM_FEATURES; then with `template` the
    TEMPLATE_FEATURES."""
    context = int(context)
    return (RR_FEATURES + tuple(f"rr_before{k}_avg_ratio" for k in range(1, context + 1))
            + tuple(f"rr_after{k}_avg_ratio" for k in range(1, context + 1))
            + (rhythm_feature_names(rhythm) if int(rhythm or 0) else ())
            + (TEMPLATE_FEATURES if template else ()))


def rhythm_features(pre_rr: np.ndarray, beats: int) -> np.ndarray:
    """[n, 3] RHYTHM_FEATURES of each beat from the `beats` R-R intervals before its own
    previous one (`pre_rr[i]` is beat i's previous interval): their coefficient of variation,
    their RMSSD over their mean, and `pre_rr[i]` over their median. The first beats of a
    record use the intervals there are; with none (or intervals of 0 s: annotations on one
    sample), 0, 0 and 1 (a regular rhythm)."""
    before = pd.Series(np.asarray(pre_rr, dtype=np.float64)).shift(1)
    window = before.rolling(beats, min_periods=1)
    mean = window.mean()
    cv = before.rolling(beats, min_periods=2).std(ddof=0) / mean
    rmssd = before.diff().pow(2).rolling(beats - 1, min_periods=1).mean().pow(0.5) / mean
    prematurity = pd.Series(pre_rr, dtype=np.float64) / window.median()
    return np.stack([
        part.replace([np.inf, -np.inf], np.nan).fillna(fill)
        for part, fill in ((cv, 0.0), (rmssd, 0.0), (prematurity, 1.0))
    ], axis=1).astype(np.float32)


def median_beat(rows: np.ndarray) -> np.ndarray:
    """The record's typical beat: the sample-wise median of its beats (rows)."""
    return np.median(rows, axis=0)


def check_template_beats(record: str, count: int, options: tuple[str, ...]) -> None:
    """A DataError unless a record with beats has at least MIN_TEMPLATE_BEATS of them when
    `options` (those of the recipe that take the record's median beat) are set: the median
    of fewer is a poor template. A record without beats passes (nothing to make relative)."""
    if options and 0 < count < MIN_TEMPLATE_BEATS:
        raise DataError(
            f"record {record}: {count} beat{'s' if count != 1 else ''}, but "
            f"{' and '.join(f'data.recipe.{o}=true' for o in options)} "
            f"need{'s' if len(options) == 1 else ''} at least {MIN_TEMPLATE_BEATS} beats of the "
            "record for its median beat (MIN_TEMPLATE_BEATS); give a longer excerpt of the "
            "record, or leave the record out (data.exclude_records)")


def template_features(rows: np.ndarray) -> np.ndarray:
    """[n, 2]: each row's Pearson correlation with the median row, and the RMS of its
    difference from it (the rows of one record: its typical beat is the median)."""
    if len(rows) == 0:
        return np.zeros((0, 2), dtype=np.float32)
    template = median_beat(rows)
    centred = rows - rows.mean(axis=1, keepdims=True)
    t = template - template.mean()
    norm = np.linalg.norm(centred, axis=1) * np.linalg.norm(t)
    corr = np.where(norm > 0, centred @ t / np.where(norm > 0, norm, 1.0), 0.0)
    rms = np.sqrt(np.mean((rows - template) ** 2, axis=1))
    return np.stack([corr, rms], axis=1).astype(np.float32)
