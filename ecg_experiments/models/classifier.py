"""ClassifierModule: any backbone + cross-entropy + configured optimizer/scheduler + metrics."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ecg_experiments.evaluation.metrics import classification_metrics

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class ClassifierModule(pl.LightningModule):
    """Trains `net` (logits [batch, classes]) with cross-entropy.

    `optimizer` and `scheduler` are partials from the config (`_partial_: true`) that take
    the parameters / the optimizer. `config` (the resolved run config) is stored in every
    checkpoint under "ecg_config" so a checkpoint alone says how it was made.
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        monitor: str = "val/f1_macro",
        class_weights: Sequence[float] | torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.monitor = monitor
        self.config = config
        weight = None
        if class_weights is not None:
            weight = torch.as_tensor(class_weights, dtype=torch.float32)
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.train_metrics = classification_metrics(
            self.class_names, "train", per_class=False, auroc=False
        )
        self.val_metrics = classification_metrics(self.class_names, "val")
        self.test_metrics = classification_metrics(self.class_names, "test")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits.detach().softmax(dim=-1), y)
        self.log(
            f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
            batch_size=y.shape[0],
        )
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        with warnings.catch_warnings():
            # With compute groups, torchmetrics warns that the per-class metrics inside
            # ClasswiseWrapper were computed before update after a reset; their states are
            # shared with the group leader and the values are correct (tests/test_metrics.py).
            warnings.filterwarnings("ignore", message=".*was called before the ``update``")
            values = metrics.compute()
        shown = {f"{stage}/acc", f"{stage}/f1_macro"}
        self.log_dict({k: v for k, v in values.items() if k in shown}, prog_bar=True)
        self.log_dict({k: v for k, v in values.items() if k not in shown})
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ecg_config"] = self.config
        checkpoint["ecg_class_names"] = self.class_names
