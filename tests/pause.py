"""Callbacks for tests: a training step that lasts a while (signals mid-epoch), a record
of the checkpoints saved, and a job that stops itself once as a scheduler would stop it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class PauseEachBatch(pl.Callback):
    """Sleep `seconds` after every training batch."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        time.sleep(self.seconds)


class RecordCheckpoints(pl.Callback):
    """Append, for every checkpoint saved, the batches drawn in its epoch and whether it holds
    the training loader's position, as a JSON line to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        import json

        fit_loop = checkpoint["loops"]["fit_loop"]
        row = {"epoch": trainer.current_epoch,
               "drawn": fit_loop["epoch_loop.batch_progress"]["current"]["ready"],
               "batches": trainer.num_training_batches,
               "loader_state": "combined_loader" in fit_loop["state_dict"]}
        with open(self.path, "a") as out:
            out.write(json.dumps(row) + "\n")


class StopOnce(pl.Callback):
    """Stop the job once, the way a scheduler, an operator or a crash does, at a chosen
    point; `marker` (a file written just before) keeps the resumed job from stopping again.

    `how`: `sigterm` (SIGTERM to the job's process group after training batch `batch` of
    epoch `epoch`), `boundary` (SIGTERM to the group at the end of epoch `epoch`, after its
    validation and checkpoint), `validation` (SIGTERM to the group when epoch `epoch`'s
    validation starts), `kill` (SIGKILL to the group after batch `batch` of epoch `epoch`),
    `slurm` (Slurm's time-limit warning SIGUSR1 to the group after that batch, then SIGTERM
    once the requeue was asked: `requeue_log` appears) and `time_checkpoint_kill` (SIGKILL to
    the group at the first batch end after a time checkpoint was written inside epoch
    `epoch`), `test` (SIGTERM to the group after the first test batch). Signals go to the
    whole group, loader workers included, as `kill -- -<pgid>`.
    With `in_folder`, only a fit whose run folder has that name stops (e.g. `fold1` of a
    cross-validation).
    """

    def __init__(self, how: str, marker: str, epoch: int = 1, batch: int = 3,
                 requeue_log: str | None = None, in_folder: str | None = None) -> None:
        self.how, self.marker, self.epoch, self.batch = how, marker, int(epoch), int(batch)
        self.requeue_log = requeue_log
        self.in_folder = in_folder
        self._armed = not os.path.exists(marker)
        self._warned = False
        self._time_checkpoint_at: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.in_folder is not None and Path(trainer.default_root_dir).name != self.in_folder:
            self._armed = False

    def _fire(self, sig: int) -> None:
        with open(self.marker, "w") as out:
            out.write(f"{self.how} {sig}\n")
            out.flush()
            os.fsync(out.fileno())
        self._armed = False
        os.killpg(os.getpgid(0), sig)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch != self.epoch:
            return
        if self.how == "slurm" and self._warned:
            if self.requeue_log and os.path.exists(self.requeue_log):
                self._fire(signal.SIGTERM)  # Slurm ends the requeued job
            return
        if not self._armed:
            return
        if self.how == "time_checkpoint_kill":
            if self._time_checkpoint_at is not None and batch_idx > self._time_checkpoint_at:
                self._fire(signal.SIGKILL)
            return
        if batch_idx + 1 != self.batch:
            return
        if self.how == "sigterm":
            self._fire(signal.SIGTERM)
        elif self.how == "kill":
            self._fire(signal.SIGKILL)
        elif self.how == "slurm":
            self._warned = True
            os.killpg(os.getpgid(0), signal.SIGUSR1)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if (self.how == "time_checkpoint_kill" and self._armed
                and trainer.current_epoch == self.epoch
                and 0 < progress.completed < trainer.num_training_batches):
            self._time_checkpoint_at = progress.completed - 1

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (self.how == "validation" and self._armed and not trainer.sanity_checking
                and trainer.current_epoch == self.epoch):
            self._fire(signal.SIGTERM)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.how == "boundary" and self._armed and trainer.current_epoch == self.epoch:
            self._fire(signal.SIGTERM)

    def on_test_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.how == "test" and self._armed:  # SIGTERM while the best checkpoint is tested
            self._fire(signal.SIGTERM)
