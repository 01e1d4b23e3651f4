"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from ecg_experiments.errors import EcgUserError

log = logging.getLogger("ecg_experiments")


def user_error_in(err: BaseException) -> EcgUserError | None:
    """The EcgUserError behind `err`, also when a library wrapped it (hydra.instantiate)."""
    seen = 0
    current: BaseException | None = err
    while current is not None and seen < 10:
        if isinstance(current, EcgUserError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn an EcgUserError into one clear line on stderr and exit status 2 (no traceback)."""
    try:
        yield
    except Exception as err:
        user_error = user_error_in(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
