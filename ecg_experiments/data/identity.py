"""The identity of a sample, whatever folder or file it is read from: what lets a trained
model's seen samples (evaluation/seen.py) be recognised in other data.

A beat cut from a record is `<database>/<record>:<R-peak sample>`, an image or a rendered
beat `sha256:<its content>`, a row of a beats CSV `row:<hash of its values>`. Identities are
compared as stable 64-bit hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

# the column of a split table / sample frame that holds the identity
ID = "sample_id"


def hash_ids(ids: Iterable[str]) -> np.ndarray:
    """Stable 64-bit hashes of sample identities (blake2b; Python's hash() is salted)."""
    return np.array([int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(),
                                    "little") for i in ids], dtype=np.uint64)


def row_ids(signals: np.ndarray) -> list[str]:
    """The identity of each row of a beats CSV: a hash of its values as read (float32)."""
    rows = np.ascontiguousarray(signals, dtype=np.float32)
    return ["row:" + hashlib.blake2b(row.tobytes(), digest_size=12).hexdigest() for row in rows]


def beat_ids(records: Iterable[str], samples: Iterable[int]) -> list[str]:
    """The identity of beats cut from records: `<database>/<record>:<R-peak sample>`."""
    return [f"{record}:{int(sample)}" for record, sample in zip(records, samples, strict=True)]
