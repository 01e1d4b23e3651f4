"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
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


def _config_dirs(argv: Sequence[str]) -> list[Path]:
    """The project's config folder and every folder the command line adds (--config-dir /
    -cd, --config-path / -cp, hydra.searchpath=[...])."""
    from ecg_experiments.config import CONFIG_DIR

    folders = [CONFIG_DIR]
    args = list(argv)
    for i, arg in enumerate(args):
        for flag in ("--config-dir", "-cd", "--config-path", "-cp"):
            if arg == flag and i + 1 < len(args):
                folders.append(Path(args[i + 1]))
            elif arg.startswith(flag + "="):
                folders.append(Path(arg.split("=", 1)[1]))
        if arg.startswith(("hydra.searchpath=", "+hydra.searchpath=")):
            for item in arg.split("=", 1)[1].strip("[]").split(","):
                item = item.strip().strip("'\"")
                if item.startswith("file://") or (item and "://" not in item):
                    folders.append(Path(item.removeprefix("file://")))
    return [f for f in folders if f.is_dir()]


def check_config_files(argv: Sequence[str]) -> None:
    """Stop with one line (exit 2) when a YAML file of the config search path is not UTF-8
    YAML. Hydra reads them itself and would end in a traceback for bytes that do not decode;
    this reads each file once before it (about 80 small files: milliseconds)."""
    import yaml

    for folder in _config_dirs(argv):
        for path in sorted(folder.rglob("*.yaml")):
            if not path.is_file():
                continue
            try:
                yaml.safe_load(path.read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
                reason = (err.strerror if isinstance(err, OSError) else
                          str(err).splitlines()[0])
                print(f"error: {path}: not a readable config file ({reason}); expected a "
                      "UTF-8 YAML file", file=sys.stderr)
                sys.exit(2)


def run_cli(main: Callable[[], Any]) -> None:
    """Entry point of every `python -m ecg_experiments.<tool>`: the user's config files are
    checked, then the Hydra main runs."""
    check_config_files(sys.argv[1:])
    main()


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
