"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from ecg_experiments.errors import EcgUserError

log = logging.getLogger("ecg_experiments")


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn an EcgUserError into one clear line on stderr and exit status 2 (no traceback)."""
    try:
        yield
    except EcgUserError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
