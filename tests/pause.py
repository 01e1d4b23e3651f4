"""A callback for tests that need a training step to last a while (signals mid-epoch)."""

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

