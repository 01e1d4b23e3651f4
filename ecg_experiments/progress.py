"""Progress that reads on a terminal and in a log file.

On a terminal, Rich bars (Lightning's RichProgressBar for training). Anywhere else (`> log`,
nohup, a batch scheduler) a bar draws nothing until it ends, so there each stage writes
plain lines instead: one per training epoch (losses, validation accuracy and macro-F1,
seconds per epoch, time left), a line every `interval_s` inside a long epoch, and counts with
a rate for the preparation and rendering stages.

Written here because Lightning's bars are terminal-only and its `log_every_n_steps` feeds
loggers, not the console.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger("ecg_experiments.progress")
T = TypeVar("T")


def on_terminal() -> bool:
    """Whether standard output, where the Rich bars draw, is an interactive terminal (Rich's
    own test, so TTY_COMPATIBLE=0/1 and FORCE_COLOR behave as Rich documents)."""
    from rich.console import Console

    return Console().is_terminal


def duration(seconds: float) -> str:
    """`42 s`, `12.5 min` or `3.1 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class StageProgress:
    """Counts for one stage of work (`with StageProgress("rendering", 1000, "images") as p:
    p.advance(64)`): a Rich bar on a terminal, else a log line every `interval_s` and one at
    the end with the total and the rate."""

    def __init__(self, description: str, total: int, unit: str = "items",
                 interval_s: float = 10.0, terminal: bool | None = None) -> None:
        self.description, self.total, self.unit = description, int(total), unit
        self.interval_s = interval_s
        self.terminal = on_terminal() if terminal is None else terminal
        self.done = 0
        self._bar: Any = None

    def __enter__(self) -> StageProgress:
        self._start = self._last = time.perf_counter()
        if self.terminal:
            from rich.progress import Progress

            self._bar = Progress(*Progress.get_default_columns(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        now = time.perf_counter()
        if now - self._last >= self.interval_s and self.done < self.total:
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            left = (self.total - self.done) / max(rate, 1e-9)
            log.info("%s: %s/%s %s (%.0f%%), %.1f %s/s, ~%s left", self.description,
                     f"{self.done:,}", f"{self.total:,}", self.unit,
                     100 * self.done / max(self.total, 1), rate, self.unit, duration(left))

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            return
        if error is None:
            elapsed = time.perf_counter() - self._start
            log.info("%s: %s %s in %s (%.1f %s/s)", self.description, f"{self.done:,}",
                     self.unit, duration(elapsed), self.done / max(elapsed, 1e-9), self.unit)


def track(items: Iterable[T], description: str, total: int, unit: str = "items") -> Iterator[T]:
    """`items` one by one, counted by a StageProgress."""
    with StageProgress(description, total, unit) as progress:
        for item in items:
            yield item
            progress.advance()
