"""The samples a model was fit and validated on, and the check that keeps them out of scores.

Every trained model carries the identity (data/identity.py) of its training and validation
samples, stored in its checkpoint as `ecg_seen`. `evaluate`, `also_test`, `predict` (with
reference labels) and the test stage compare the samples they score with it and stop
before scoring when any was seen, unless `allow_seen=true` (then the report and the run
say "includes training data").
Identities are kept as sorted 64-bit hashes (8 bytes a sample: 0.4 MB for all of MIT-BIH).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ecg_experiments.data.identity import ALSO, ID, hash_ids
from ecg_experiments.errors import ConfigError


class SeenDataError(ConfigError):
    """Samples to score that the model was fit or validated on (allow_seen=false)."""


@dataclass
class SeenSamples:
    """Hashes of the samples a model was fit and validated on, and their records."""

    hashes: np.ndarray
    records: dict[str, int] = field(default_factory=dict)  # record: samples seen

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> SeenSamples:
        """From a sample frame: every identity it gives a sample (ID, and ALSO where known)."""
        ids = [frame[ID]] + ([frame[ALSO].dropna()] if ALSO in frame else [])
        hashes = np.unique(hash_ids(pd.concat(ids, ignore_index=True)))
        records = {}
        if "record" in frame:
            counts = frame["record"].astype(str).value_counts()
            records = {str(k): int(v) for k, v in counts.sort_index().items()}
        return cls(hashes, records)

    def to_checkpoint(self) -> dict:
        return {"hashes": self.hashes.tobytes(), "records": dict(self.records)}

    @classmethod
    def from_checkpoint(cls, stored: dict | None) -> SeenSamples | None:
        if not stored:
            return None
        return cls(np.frombuffer(stored["hashes"], dtype=np.uint64), dict(stored["records"]))

    def merged(self, other: SeenSamples | None) -> SeenSamples:
        """These samples and `other`'s (a model fine-tuned from another has seen both)."""
        if other is None:
            return self
        records = dict(self.records)
        for record, count in other.records.items():
            records[record] = records.get(record, 0) + count
        return SeenSamples(np.union1d(self.hashes, other.hashes), records)

    def seen(self, frame: pd.DataFrame) -> np.ndarray:
        """Which rows of a sample frame the model was fit or validated on (by either of a
        sample's identities)."""
        seen = np.isin(hash_ids(frame[ID]), self.hashes)
        if ALSO in frame:
            known = frame[ALSO].notna().to_numpy()
            seen[known] |= np.isin(hash_ids(frame.loc[known, ALSO]), self.hashes)
        return seen


def describe_overlap(frame: pd.DataFrame, seen: np.ndarray) -> str:
    """'1,234 of 5,678 samples (records mitdb/101, mitdb/106 and 3 more)'."""
    text = f"{int(seen.sum()):,} of {len(frame):,} samples"
    if "record" in frame:
        records = sorted(frame.loc[seen, "record"].astype(str).unique())
        shown = ", ".join(records[:8]) + (f" and {len(records) - 8} more"
                                          if len(records) > 8 else "")
        text += f" ({len(records)} record{'s' if len(records) != 1 else ''}: {shown})"
    return text


def check_unseen(frame: pd.DataFrame, seen: SeenSamples | None, allow_seen: bool,
                 what: str) -> int:
    """Stop when `frame` holds samples the model was fit or validated on; return how many it
    holds (scored anyway with `allow_seen`)."""
    if seen is None or frame is None or ID not in frame:
        return 0
    mask = seen.seen(frame)
    if not mask.any():
        return 0
    if not allow_seen:
        raise SeenDataError(
            f"{what}: {describe_overlap(frame, mask)} were seen by the model in training or "
            "validation; a model is never scored on data it trained on. Score data it has not "
            "seen (evaluate without data=... uses its own test split), or set allow_seen=true "
            "to score them anyway (the report is then marked 'includes training data')")
    return int(mask.sum())
