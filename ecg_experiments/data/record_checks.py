"""Plausibility checks of a WFDB record read by wfdb, before it becomes beats.

wfdb parses whatever bytes it is given: an annotation file of random bytes becomes a few
hundred "beats" with made-up labels, one cut short becomes a shorter record, and a
sampling frequency of 0 ends in a ZeroDivisionError deep inside it. Every path that reads
records (prepare, train, evaluate, predict, explain, also_test) goes through
`physionet.read_record`, which calls these checks; each refuses with a DataError that
names the file and what was expected.

What is checked:
- header: sampling frequency, ADC gain and signal length positive and finite; ADC
  resolution and baseline finite, resolution not negative (0 is WFDB's "default");
- signal: as many samples as the header says;
- annotation file: whole 16-bit words ending in WFDB's end-of-annotations mark (0x0000)
  right where the annotation stream ends (`annotation_stream_end`); only the codes wfdb
  defines (`ann_label_table`) or the file defines (custom labels); its time resolution,
  where it states one, the record's;
- annotations: sample indices non-decreasing and inside the signal; a mean beat rate over
  the record that a human heart has (`MIN_BPM`..`MAX_BPM`; the lower bound on records of a
  minute or more).

Not detectable without a checksum: a flipped bit that turns one valid label or time into
another valid one, or another record's annotations at a similar rate. Folders with a
SHA256SUMS (or SHA256SUMS.txt, as PhysioNet publishes it) file are verified against it by
`physionet.verify_checksums`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ecg_experiments.errors import DataError

MIN_BPM = 20.0
MAX_BPM = 300.0

# MIT annotation format (WFDB annot(5)): one little-endian 16-bit word per field, code in
# the top 6 bits, a time difference or value in the lower 10.
_SKIP, _NUM, _SUB, _CHN, _AUX = 59, 60, 61, 62, 63


def _bad_number(value: object, allow_zero: bool = False) -> bool:
    """Whether a header number is missing its meaning: not finite, negative, or zero."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return True
    return not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero)


def check_header(header, path: Path) -> None:
    """Refuse a header whose sampling frequency, gains, resolutions or length cannot be."""
    fs = header.fs
    if _bad_number(fs):
        raise DataError(f"{path}: sampling frequency {fs!r} in the record line; expected a "
                        "positive number of samples per second")
    if header.sig_len is not None and (_bad_number(header.sig_len) or int(header.sig_len) < 1):
        raise DataError(f"{path}: signal length {header.sig_len!r} samples in the record "
                        "line; expected a positive number of samples")
    names = header.sig_name or []
    absent = [None] * len(names)  # a field the header does not give
    for name, gain, resolution, baseline in zip(names, header.adc_gain or absent,
                                                header.adc_res or absent,
                                                header.baseline or absent, strict=False):
        if gain is not None and _bad_number(gain):
            raise DataError(f"{path}: signal {name} has ADC gain {gain!r}; expected a positive "
                            "number of ADC units per physical unit")
        if resolution is not None and _bad_number(resolution, allow_zero=True):
            raise DataError(f"{path}: signal {name} has ADC resolution {resolution!r}; "
                            "expected a number of bits (0 for the format's default)")
        if baseline is not None and not math.isfinite(float(baseline)):
            raise DataError(f"{path}: signal {name} has baseline {baseline!r}; expected a "
                            "finite ADC value")


def check_signal(signal: np.ndarray, header, path: Path) -> None:
    """The signal holds the samples the header promises."""
    if header.sig_len is not None and len(signal) < int(header.sig_len):
        raise DataError(f"{path}: {len(signal):,} samples read but the header promises "
                        f"{int(header.sig_len):,}; expected the whole signal")
    if len(signal) == 0:
        raise DataError(f"{path}: the record has no samples; expected a signal")


def annotation_stream_end(data: bytes) -> int | None:
    """Byte offset of the end-of-annotations mark that ends the annotation stream, or None
    when the stream runs off the end of `data` without one.

    Written by hand: wfdb's reader stops at the end of the bytes and never looks for the
    mark, so it cannot tell a whole file from one cut short; no other library reads the
    MIT annotation format.
    """
    words = len(data) // 2
    i = 0
    while i < words:
        word = data[2 * i] | (data[2 * i + 1] << 8)
        code, low = word >> 10, word & 0x3FF
        if word == 0:
            return 2 * i
        if code == _SKIP:
            i += 3  # the word, then a 32-bit interval
        elif code == _AUX:
            i += 1 + (low + 1) // 2  # the word, then `low` bytes padded to a whole word
        else:
            i += 1
    return None


def check_annotation_file(path: Path) -> None:
    """Whole words, ending in the end-of-annotations mark and nothing after it."""
    data = path.read_bytes()
    end = annotation_stream_end(data)
    if end is None:
        raise DataError(f"{path}: the annotation file has no end-of-annotations mark (cut "
                        "short, or not a WFDB annotation file); expected a whole .atr file "
                        "(download the record again)")
    if end != len(data) - 2:
        raise DataError(f"{path}: {len(data) - end - 2:,} bytes follow the "
                        f"end-of-annotations mark at byte {end:,}; expected the mark to end "
                        "the annotation file")


def check_annotation_codes(annotation, path: Path) -> None:
    """Only codes wfdb defines or the file defines itself (`wrann(custom_labels=...)`): wfdb
    gives any other code the symbol NaN."""
    undefined = [k for k, symbol in enumerate(annotation.symbol or [])
                 if not isinstance(symbol, str)]
    if undefined:
        raise DataError(f"{path}: {len(undefined):,} annotation(s) with a code neither wfdb "
                        f"nor the file defines (first: annotation {undefined[0]}, at sample "
                        f"{int(annotation.sample[undefined[0]]):,}); expected a WFDB "
                        "annotation file")


def check_annotations(samples: np.ndarray, beats: int, signal_length: int, fs: float,
                      path: Path, annotation_fs: float | None = None) -> None:
    """Annotation samples in order and inside the signal, at the record's rate; a human
    heart's beat rate (the lower bound over records of a minute or more: a short excerpt
    may hold a pause)."""
    if annotation_fs is not None and abs(float(annotation_fs) - fs) > 1e-6 * fs:
        raise DataError(f"{path}: annotations at {float(annotation_fs):g} Hz (its time "
                        f"resolution note) but the record at {fs:g} Hz; expected annotation "
                        "samples at the record's rate")
    samples = np.asarray(samples, dtype=np.int64)
    if len(samples) and np.any(np.diff(samples) < 0):
        at = int(np.flatnonzero(np.diff(samples) < 0)[0]) + 1
        raise DataError(f"{path}: annotation {at} is at sample {samples[at]:,}, before the one "
                        f"before it ({samples[at - 1]:,}); expected annotations in time order")
    outside = (samples < 0) | (samples >= signal_length)
    if outside.any():
        raise DataError(f"{path}: {int(outside.sum()):,} annotation(s) outside the signal "
                        f"(first at sample {int(samples[outside][0]):,}; the signal has "
                        f"{signal_length:,} samples); expected annotations of this record")
    minutes = signal_length / fs / 60.0
    bpm = beats / minutes
    if bpm > MAX_BPM or (bpm < MIN_BPM and minutes >= 1.0):
        raise DataError(f"{path}: {beats:,} beat annotations in {minutes:.1f} min is "
                        f"{bpm:.0f} beats a minute; expected a human heart's "
                        f"{MIN_BPM:.0f}-{MAX_BPM:.0f} (not this record's annotations?)")
