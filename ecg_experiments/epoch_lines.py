"""Training progress for logs: one line per epoch (`callbacks.progress_bar.style`).

`progress_bar(style="auto")` gives Lightning's RichProgressBar on a terminal and `EpochLines`
elsewhere; `EpochLines` is a Lightning ProgressBar (so Lightning adds no bar of its own) that
writes plain lines through logging, which Hydra also copies into the run's log file.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

from ecg_experiments.progress import duration, on_terminal

log = logging.getLogger("ecg_experiments.progress")

SHOWN = (("train/loss", "train loss"), ("val/loss", "val loss"), ("val/acc", "val acc"),
         ("val/f1_macro", "val f1_macro"))


class EpochLines(ProgressBar):
    """A line per epoch (`epoch 3/20  train loss 0.312  val loss 0.287  val acc 0.912
    val f1_macro 0.701  41 s/epoch  ~12 min left`), a line every `interval_s` inside a long
    epoch, and one per test or prediction pass."""

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = float(interval_s)
        self._enabled = True
        self._reported: set[int] = set()
        self._epoch_seconds: list[float] = []
        # every attribute valid from construction: Lightning skips on_train_epoch_start when
        # it resumes inside an epoch, and a test pass may come without any training
        self._epoch_started: float | None = None  # no epoch line before training starts
        self._last_line = self._stage_started = time.perf_counter()
        self._first_batch: int | None = None
        self._resumed = False

    def _start_clock(self, resumed: bool) -> None:
        """The epoch's clock: its start, the last progress line, the first batch it saw."""
        self._epoch_started = self._last_line = time.perf_counter()
        self._first_batch = None
        self._resumed = resumed

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _epochs(self, trainer: pl.Trainer) -> str:
        return str(trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else "?"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the previous epoch's line: its train metrics are logged by the LightningModule's
        # on_train_epoch_end, which runs after the callbacks' hook of that name
        self._report(trainer, trainer.current_epoch - 1)
        self._start_clock(resumed=False)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # every fit passes here, also one resumed inside an epoch (whose
        # on_train_epoch_start Lightning skips): that epoch's line is timed from here
        self._start_clock(resumed=trainer.fit_loop.epoch_loop.batch_progress.current.ready > 0)
        # a resumed run's finished epochs had their lines before it stopped
        self._reported.update(range(trainer.current_epoch))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, trainer.current_epoch - 1)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._first_batch is None:  # the clock started before this batch
            self._first_batch = batch_idx
        now = time.perf_counter()
        if not self._enabled or now - self._last_line < self.interval_s:
            return
        self._last_line = now
        done, total = batch_idx + 1, self.total_train_batches
        rate = (done - self._first_batch) / max(now - (self._epoch_started or now), 1e-9)
        left = ""
        if isinstance(total, int) and total > 0:
            left = f", epoch ends in ~{duration((total - done) / max(rate, 1e-9))}"
        log.info("epoch %d/%s: batch %s/%s (%.2f batches/s%s)", trainer.current_epoch + 1,
                 self._epochs(trainer), f"{done:,}",
                 f"{total:,}" if isinstance(total, int) else "?", rate, left)

    def _report(self, trainer: pl.Trainer, epoch: int) -> None:
        if (not self._enabled or epoch < 0 or epoch in self._reported
                or self._epoch_started is None or trainer.sanity_checking):
            return
        self._reported.add(epoch)
        seconds = time.perf_counter() - self._epoch_started
        if not self._resumed:  # part of an epoch says little of a whole one's length
            self._epoch_seconds.append(seconds)
        metrics = trainer.callback_metrics
        parts = [f"epoch {epoch + 1}/{self._epochs(trainer)}"]
        parts += [f"{label} {float(metrics[name]):.4f}" for name, label in SHOWN
                  if name in metrics]
        parts.append(f"{seconds:.1f} s/epoch" + (" since the resume" if self._resumed else ""))
        remaining = (trainer.max_epochs - (epoch + 1)) if trainer.max_epochs else 0
        if remaining > 0 and trainer.should_stop:  # early stopping or a pruned trial
            parts.append("stopped early")
        elif remaining > 0 and self._epoch_seconds:
            mean = sum(self._epoch_seconds) / len(self._epoch_seconds)
            parts.append(f"~{duration(remaining * mean)} left at most")
        log.info("  ".join(parts))

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stage_started = time.perf_counter()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled:
            batches = sum(int(n) for n in trainer.num_test_batches)
            log.info("test: %s batches in %s", f"{batches:,}",
                     duration(time.perf_counter() - self._stage_started))


def progress_bar(style: str = "auto", refresh_rate: int = 4,
                 interval_s: float = 60.0) -> ProgressBar:
    """The training progress callback: `rich` (a bar), `lines` (EpochLines) or `auto`
    (rich on a terminal, lines otherwise)."""
    if style not in ("auto", "rich", "lines"):
        from ecg_experiments.errors import ConfigError

        raise ConfigError(f"callbacks.progress_bar.style={style!r}: expected auto, rich or "
                          "lines")
    if style == "rich" or (style == "auto" and on_terminal()):
        return RichProgressBar(refresh_rate=refresh_rate)
    return EpochLines(interval_s=interval_s)
