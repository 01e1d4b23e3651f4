"""Stopping a training run from outside and continuing it later where it stopped.

`CheckpointOnTerminate`: after SIGTERM (what `timeout`, Slurm at its time limit and
preempting schedulers send) Lightning stops the run with SIGTERMException at the end of the
batch in progress (or of the epoch, when the signal came during validation); this callback
then saves that step as `checkpoints/last.ckpt`, and `resume=true` continues with the next
batch (the training loader is a torchdata StatefulDataLoader, whose position Lightning keeps
in checkpoints). `RandomState` keeps the random number generators in checkpoints, so a
resumed seeded run draws what the uninterrupted one would. Written here because Lightning
saves nothing when it stops on SIGTERM (its OnExceptionCheckpoint deletes its file again at
teardown) and keeps no RNG state in its checkpoints.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnTerminate(pl.Callback):
    """Save `<checkpoint_dir>/last.ckpt` when Lightning stops the run on SIGTERM: where it
    raises SIGTERMException the step is complete, whichever hook the signal came during.

    A SIGTERM during a fit's validation stops the run at the end of that validation (the
    epoch's boundary, or the next training batch when validation runs inside an epoch):
    Lightning would stop after the validation batch in progress, and resume from there as
    if the validation had run (the epoch's validation metrics missing, early stopping and
    checkpointing then failing). Validation is short beside training.
    """

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.checkpoint = Path(checkpoint_dir) / "last.ckpt"
        self._deferred = False
        self._stop_on_resume = False
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    # Whether the run had decided to stop (early stopping, a pruned trial) when a checkpoint
    # was written: Lightning keeps no such flag in checkpoints, so a run stopped (or killed)
    # right after that decision would train on after its resume.
    def state_dict(self) -> dict[str, Any]:
        return {"should_stop": bool(self._trainer is not None and self._trainer.should_stop)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._stop_on_resume = bool(state_dict.get("should_stop", False))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stop_on_resume:
            log.info("the run had decided to stop before it was interrupted: no more epochs")
            trainer.should_stop = True

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        # runs before the evaluation loop's own SIGTERM check of this batch
        connector = trainer._signal_connector
        if trainer.state.fn == "fit" and connector.received_sigterm:
            connector.received_sigterm = False
            if not self._deferred:
                log.info("SIGTERM during validation: the run stops when the validation ends")
            self._deferred = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._deferred:
            self._deferred = False
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        # only a fit's state is worth resuming (a test has loaded the best weights)
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.checkpoint)
            log.info("SIGTERM: stopped after batch %d of epoch %d; checkpoint %s",
                     trainer.fit_loop.epoch_loop.batch_progress.current.completed,
                     trainer.current_epoch + 1, self.checkpoint)


class RandomState(pl.Callback):
    """The Python, NumPy and torch (CPU and CUDA) generators' states, saved with every
    checkpoint and restored when training resumes from one."""

    def state_dict(self) -> dict[str, Any]:
        # tensors, ints and tuples only: checkpoints are read with weights_only=True
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        state = {"python": random.getstate(),
                 "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position),
                           int(has_gauss), float(gauss)),
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])



# what a shell reports for a process ended by SIGTERM (128 + 15): schedulers read it as such
TERMINATED_EXIT_CODE = 143


class TrainingInterrupted(Exception):
    """Training was stopped from outside (SIGTERM, Ctrl-C) after its step was saved and its
    MLflow run marked KILLED. The command's entry prints how to resume the whole run (one
    fit, or every fold of a cross-validation) and exits with `exit_code`."""

    def __init__(self, what: str, exit_code: int) -> None:
        super().__init__(what)
        self.what, self.exit_code = what, exit_code


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir`: this command's overrides with
    `hydra.run.dir=<run_dir> resume=true`."""
    from hydra.core.hydra_config import HydraConfig

    overrides = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task
                     if not o.startswith(("hydra.run.dir=", "resume=", "ckpt_path="))]
    return " ".join(["python -m ecg_experiments.train", *overrides, f"hydra.run.dir={run_dir}",
                     "resume=true"])


def exit_interrupted(stop: TrainingInterrupted, run_dir: Path) -> NoReturn:
    """Say how to resume the run in `run_dir` and exit with the stop's status."""
    print(f"\n{stop.what}. The last checkpoint is in {run_dir}; resume with:\n"
          f"  {resume_command(run_dir)}", file=sys.stderr)
    sys.exit(stop.exit_code)


def slurm_restart_count() -> int:
    """How often Slurm has requeued this job (0 outside Slurm or on its first start)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
