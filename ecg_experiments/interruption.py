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
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnTerminate(pl.Callback):
    """Save `<checkpoint_dir>/last.ckpt` when Lightning stops the run on SIGTERM: where it
    raises SIGTERMException the step is complete, whichever hook the signal came during."""

    def __init__(self, checkpoint_dir: str | Path) -> None:
        self.checkpoint = Path(checkpoint_dir) / "last.ckpt"

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
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

