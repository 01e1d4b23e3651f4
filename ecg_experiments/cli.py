"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

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


class CheckOutputDir(Callback):
    """Hydra callback: stop with one clear line when the run/sweep folder cannot be created
    (Hydra would fail later with a traceback)."""

    @staticmethod
    def _check(path: str, option: str) -> None:
        target = Path(path)
        existing = target
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            print(f"error: {option}={target}: cannot create the output folder there "
                  f"({existing} is not a writable folder); set paths.outputs_dir to one",
                  file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")
