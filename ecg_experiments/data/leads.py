"""Which signals of a record are read: one lead from a preference list (`data.leads`), or
one lead per channel (`data.channels`), and what a record lacking one gets
(`data.missing_lead`: skip | first | error).

Written here because wfdb reads channels by index or by exact name only: choosing among
alternative names per channel, and substituting a record's spare lead, is ours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ecg_experiments.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MISSING_LEAD = ("skip", "first", "error")
Channels = Sequence[str | Sequence[str]]


def channel_entries(channels: Channels) -> list[list[str]]:
    """`data.channels` as one list of acceptable lead names per channel (an entry is a name
    or a preference list: `[MLII, [V1, ECG2]]`); a name in two channels is refused."""
    entries = [[str(entry)] if isinstance(entry, str) else [str(x) for x in entry]
               for entry in channels]
    if not entries or any(not entry for entry in entries):
        raise ConfigError(f"data.channels={list(channels)}: expected lead names, one per "
                          "channel (a name or a list of alternatives), e.g. [MLII, V1]")
    names = [name for entry in entries for name in entry]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"data.channels={entries}: lead {', '.join(twice)} named for two "
                          "channels; each channel reads another lead")
    return entries


def channel_names(channels: Channels | None) -> tuple[str, ...]:
    """The name of each channel (the first of its alternatives): the model's `leads`."""
    return tuple(entry[0] for entry in channel_entries(channels)) if channels else ()


def choose_lead(record: str, available: Sequence[str], wanted: Sequence[str],
                missing_lead: str) -> int | None:
    """The index of the first of `wanted` the record has; else by `missing_lead`: channel 0
    (first), None (skip) or a DataError (error)."""
    found = next((x for x in wanted if x in available), None)
    if found is not None:
        return list(available).index(found)
    named = "/".join(wanted)
    if missing_lead == "first" and available:
        log.warning("record %s has no %s lead (%s): using %s", record, named,
                    ", ".join(available), available[0])
        return 0
    if missing_lead == "skip":
        log.warning("record %s has no %s lead (%s): skipped", record, named, ", ".join(available))
        return None
    raise DataError(f"record {record} has no {named} lead (it has {', '.join(available)}); set "
                    "data.leads to one of them, data.missing_lead to skip or first, or exclude "
                    "the record")


def choose_channels(record: str, available: Sequence[str], channels: Channels,
                    missing_lead: str) -> list[int] | None:
    """The record's signal index for each channel of `channels`. A channel whose leads the
    record lacks follows `missing_lead`: first = the record's next lead that no other channel
    reads, in the record's order (mitdb 102: V5 for MLII, V2 for V1), logged; skip = None;
    error = a DataError naming the record, its leads and the channel."""
    entries = channel_entries(channels)
    picked: list[int | None] = []
    for entry in entries:
        found = next((x for x in entry if x in available), None)
        picked.append(None if found is None else list(available).index(found))
    missing = [k for k, index in enumerate(picked) if index is None]
    if not missing:
        return [int(index) for index in picked if index is not None]
    lacking = ", ".join("/".join(entries[k]) for k in missing)
    spare = [i for i in range(len(available)) if i not in picked]
    if missing_lead == "skip":
        log.warning("record %s has no %s lead (%s): skipped", record, lacking,
                    ", ".join(available))
        return None
    if missing_lead != "first" or len(spare) < len(missing):
        raise DataError(
            f"record {record} has no {lacking} lead (it has {', '.join(available)}) for "
            f"data.channels={entries}; set data.missing_lead=first (use its other leads), "
            "skip, or exclude the record")
    for k, index in zip(missing, spare, strict=False):
        picked[k] = index
    log.warning("record %s has no %s lead (%s): using %s in its place", record, lacking,
                ", ".join(available), ", ".join(available[picked[k]] for k in missing))
    return [int(index) for index in picked if index is not None]
