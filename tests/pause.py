"""Callbacks for tests: a training step that lasts a while (signals mid-epoch), and a record
of the checkpoints saved."""

from __future__ import annotations

import time
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
