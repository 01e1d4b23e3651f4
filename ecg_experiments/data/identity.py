"""The identity of a sample, whatever folder or file it is read from: what lets a trained
model's seen samples (evaluation/seen.py) be recognised in other data.

A beat cut from a record is `<database>/<record>:<R-peak sample>`, an image or a rendered
beat `sha256:<its content>`, a row of a beats CSV `row:<hash of its values>`. Identities are
compared as stable 64-bit hashes.

One sample can be met in several formats: a beat cut from a record is also a row of the beats
CSV that `prepare` exports, and a rendered beat image is also a beat of its record. Where a
format knows the other identity it fills a second column (ALSO), so a model trained in one
format recognises its samples in the other.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np

# the column of a split table / sample frame that holds the identity
ID = "sample_id"
# another identity of the same sample (the CSV row of a beat, the beat of a rendered image)
ALSO = "also_id"

# the file name RenderedBeats gives a beat image: <database>-<record>_<R-peak sample>.png
_RENDERED_NAME = re.compile(r"^(?P<db>[^-/\\]+)-(?P<record>[^/\\]+)_(?P<sample>\d+)\.png$")


def hash_ids(ids: Iterable[str]) -> np.ndarray:
    """Stable 64-bit hashes of sample identities (blake2b; Python's hash() is salted)."""
    return np.array([int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(),
                                    "little") for i in ids], dtype=np.uint64)


def row_ids(signals: np.ndarray) -> list[str]:
    """The identity of each row of a beats CSV: a hash of its values as read (float32)."""
    rows = np.ascontiguousarray(signals, dtype=np.float32)
    return ["row:" + hashlib.blake2b(row.tobytes(), digest_size=12).hexdigest() for row in rows]


def distinct_row_ids(signals: np.ndarray) -> list[str | None]:
    """`row_ids` as a second identity of beats cut from records: None where it would not
    single out one beat (a constant row, such as a flat lead-off stretch normalised to zeros,
    or values another row of `signals` repeats), so two different beats never share it."""
    ids = np.array(row_ids(signals), dtype=object)
    values, counts = np.unique(ids, return_counts=True)
    repeated = np.isin(ids, values[counts > 1])
    constant = np.ptp(np.asarray(signals), axis=1) == 0 if len(ids) else repeated
    ids[repeated | constant] = None
    return ids.tolist()


def beat_ids(records: Iterable[str], samples: Iterable[int]) -> list[str]:
    """The identity of beats cut from records: `<database>/<record>:<R-peak sample>`."""
    return [f"{record}:{int(sample)}" for record, sample in zip(records, samples, strict=True)]


def rendered_beat_id(name: str) -> str | None:
    """The beat a rendered image shows, from its file name (`mitdb-100_0000077.png` is
    `mitdb/100:77`); None for a name RenderedBeats does not write."""
    match = _RENDERED_NAME.match(name)
    if match is None:
        return None
    return f"{match['db']}/{match['record']}:{int(match['sample'])}"
