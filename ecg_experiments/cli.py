"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ecg_experiments.errors import user_error_in

log = logging.getLogger("ecg_experiments")


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


# Known harmless third-party messages, hidden by default (one place for all of them; set
# ECG_ALL_WARNINGS=1, or run python with -W / PYTHONWARNINGS, to see everything):
QUIET_WARNINGS = (
    # Lightning's own pytree helper on torch >= 2.9, once per epoch; nothing for users to do
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    # torchmetrics, when a batch or the sanity check holds no example of a class: that
    # class's value is 0 by definition and our per-class tables show the support
    r"No positive samples in targets",
    r"No negative samples in targets",
    # small data sets: fewer batches than log_every_n_steps; the metrics are logged per epoch
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # torchdata's StatefulDataLoader calls torch.set_vital, deprecated in recent torch; each
    # time a training epoch's iterator is made
    r"'set_vital' is deprecated",
)
# Lightning's advertising tip and its restatement of limit_*_batches=1.0 (logging, not warnings)
QUIET_LOG_LINES = ("💡 Tip:", "was configured so 100% of the batches")


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in QUIET_LOG_LINES)


def quiet_third_party() -> None:
    """Hide the known harmless third-party warnings and log lines (idempotent), unless
    ECG_ALL_WARNINGS=1 or python's own -W / PYTHONWARNINGS choose the warnings to show."""
    if os.environ.get("ECG_ALL_WARNINGS") or sys.warnoptions:
        return
    from ecg_experiments.progress import on_terminal

    if not on_terminal():  # MLflow's download bars would be frames dumped into a log file
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # a logger's filters see the records made on that logger: Lightning's rank-zero helpers
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                 "lightning_utilities.core.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines())


@contextlib.contextmanager
def task() -> Iterator[None]:
    """The body of every command's Hydra main: third-party noise hidden, and user errors as
    one line with exit status 2. Import the heavy modules inside it, after composition."""
    quiet_third_party()
    with exit_on_user_error():
        yield


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

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it
    for folder in _config_dirs(argv):
        for path in sorted(folder.rglob("*.yaml")):
            if not path.is_file():
                continue
            try:
                content = yaml.load(path.read_bytes().decode("utf-8"), Loader=loader)
                if content is not None and not isinstance(content, dict):
                    raise ValueError(f"its top level is a {type(content).__name__}")
            except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as err:
                reason = (err.strerror if isinstance(err, OSError) else
                          (str(err).splitlines() or [type(err).__name__])[0])
                print(f"error: {path}: not a readable config file ({reason}); expected a "
                      "UTF-8 YAML file of `key: value` lines", file=sys.stderr)
                sys.exit(2)


def config_groups(argv: Sequence[str]) -> dict[str, list[str]]:
    """`{group: [options]}` of the config search path (Hydra's own groups left out), read
    from the folders: what Hydra's --help lists under "Configuration groups"."""
    groups: dict[str, set[str]] = {}
    for folder in _config_dirs(argv):
        for path in folder.rglob("*.yaml"):
            group = path.parent.relative_to(folder).as_posix()
            if group != "." and group.split("/")[0] != "hydra":
                groups.setdefault(group, set()).add(path.stem)
    return {group: sorted(options) for group, options in sorted(groups.items())}


def print_help(main: Callable[[], Any], argv: list[str]) -> None:
    """`--help`: the command, its config groups and options, then the composed config
    (`--cfg job`, with the same overrides).

    Hydra's own --help composes the config once for every group it lists (about 2 s
    here); the folders give the same list in milliseconds. `--hydra-help` stays Hydra's.
    """
    module = sys.modules.get(getattr(main, "__module__", ""), None)
    summary = ((module.__doc__ or "") if module else "").strip().split("\n\n")[0]
    print(f"{summary}\n\n== Configuration groups ==\nCompose your configuration from those "
          "groups (group=option)\n")
    for group, options in config_groups(argv).items():
        print(f"{group}: {', '.join(options)}")
    print("\n== Config ==\nOverride anything in the config (foo.bar=value); -m for a sweep, "
          "--hydra-help for Hydra's options\n", flush=True)
    sys.argv = [sys.argv[0], *[a for a in argv if a not in ("--help", "-h")], "--cfg", "job"]
    main()


def run_cli(main: Callable[[], Any]) -> None:
    """Entry point of every `python -m ecg_experiments.<tool>`: the user's config files are
    checked, then the Hydra main runs (`--help` is answered by print_help)."""
    argv = sys.argv[1:]
    check_config_files(argv)
    if "--help" in argv or "-h" in argv:
        print_help(main, argv)
        return
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
