"""One line, early in training, with what the run will cost: seconds per batch, minutes per
epoch and hours for all epochs, and a note when that is many hours on a CPU.

Written here because Lightning's progress bars show a rate only while they draw, and say
nothing of a run's total length or whether the machine suits it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import MLFlowLogger

from ecg_experiments.progress import duration

log = logging.getLogger("ecg_experiments.progress")


class TimeEstimate(pl.Callback):
    """Measure the first training batches (the first one, which warms caches and workers up,
    left out) and log the estimate once: after `after_batches` batches or `after_s` seconds,
    whichever comes first. Logged to MLflow as tags `estimate.*` too. On a CPU, a run of more
    than `many_hours` hours gets a note naming the sane alternatives."""

    def __init__(self, after_batches: int = 20, after_s: float = 30.0,
                 many_hours: float = 3.0) -> None:
        self.after_batches = int(after_batches)
        self.after_s = float(after_s)
        self.many_hours = float(many_hours)
        self._started: float | None = None
        self._batches = 0
        self._done = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._done or trainer.sanity_checking:
            return
        if self._started is None:  # the end of the warm-up batch starts the clock
            self._started = time.perf_counter()
            return
        self._batches += 1
        elapsed = time.perf_counter() - self._started
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        if self._batches >= self.after_batches or elapsed >= self.after_s or last_batch:
            self._done = True
            self.report(trainer, elapsed / self._batches)

    def report(self, trainer: pl.Trainer, seconds_per_batch: float) -> str:
        """Log (and return) the estimate for `seconds_per_batch`."""
        batches = trainer.num_training_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1
        epochs_left = max(epochs - trainer.current_epoch, 1)
        per_epoch = seconds_per_batch * batches
        total = per_epoch * epochs_left
        line = (f"time estimate: {seconds_per_batch:.2f} s/batch x {batches:,} batches = "
                f"{duration(per_epoch)} per epoch of training (validation extra), "
                f"~{duration(total)} for {epochs_left} epoch{'s' * (epochs_left > 1)}"
                " (early stopping may end sooner)")
        on_cpu = trainer.strategy.root_device.type == "cpu"
        if on_cpu and total > self.many_hours * 3600:
            line += (". On this CPU that is many hours: a GPU (trainer=gpu), fewer training "
                     "examples (data.max_per_class=... on image data, "
                     "trainer.limit_train_batches=0.1) or fewer epochs (trainer.max_epochs) "
                     "would be the sane choice for a first run")
        log.info(line)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger) and trainer.is_global_zero:
                for key, value in (("estimate.s_per_batch", f"{seconds_per_batch:.3f}"),
                                   ("estimate.epoch_minutes", f"{per_epoch / 60:.1f}"),
                                   ("estimate.total_hours", f"{total / 3600:.2f}")):
                    logger.experiment.set_tag(logger.run_id, key, value)
        return line
