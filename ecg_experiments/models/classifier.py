"""ClassifierModule: any backbone + cross-entropy or focal loss + optimizer, scheduler, metrics."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric

from ecg_experiments.evaluation.metrics import classification_metrics
from ecg_experiments.evaluation.seen import SeenSamples
from ecg_experiments.inputs import InputSpec
from ecg_experiments.models.adversary import RecordAdversary
from ecg_experiments.models.losses import FocalLoss
from ecg_experiments.models.precision import channels_last_input, to_channels_last

AUX_LOSS_WEIGHT = 0.4  # Szegedy et al. 2016 (Inception v3)
OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class ClassifierModule(pl.LightningModule):
    """Trains `net` (logits [batch, classes]) with cross-entropy, or the focal loss with
    `focal_gamma` > 0.

    `optimizer` and `scheduler` are partials from the config (`_partial_: true`) that take
    the parameters / the optimizer. `config` (the resolved run config) is stored in every
    checkpoint under "ecg_config" so a checkpoint alone says how it was made, and
    `input_spec` (what the network takes, inputs.py) under "ecg_input", and `seen` (the
    samples it is fit and validated on, evaluation/seen.py) under "ecg_seen". It keeps a
    per-epoch `history` of the train loss, accuracy and macro-F1 and of every validation
    metric (also in checkpoints; `best()` reads it) and, after `test`, the test targets and
    probabilities in `test_targets` / `test_probs`. `channels_last` keeps a 2D network's
    weights and input batches channels-last (models/precision.py). Under mixed precision the
    loss, metrics and stored probabilities are computed in float32 from the logits.
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        monitor: str = "val/f1_macro",
        class_weights: Sequence[float] | torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        focal_gamma: float = 0.0,
        config: dict | None = None,
        input_spec: InputSpec | None = None,
        seen: SeenSamples | None = None,
        channels_last: bool = False,
        adversary: RecordAdversary | None = None,
    ) -> None:
        super().__init__()
        self.seen = seen
        self.channels_last = bool(channels_last)
        self.net = to_channels_last(net) if self.channels_last else net
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.monitor = monitor
        self.config = config
        self.input_spec = input_spec
        weight = None
        if class_weights is not None:
            weight = torch.as_tensor(class_weights, dtype=torch.float32)
        # focal_gamma > 0: the focal loss (models/losses.py), else plain cross-entropy
        self.criterion = (
            FocalLoss(focal_gamma, weight, label_smoothing) if focal_gamma
            else nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing))
        # one metric collection and one mean loss per stage ("train" cannot be a ModuleDict key:
        # it would shadow nn.Module.train)
        self.train_metrics = classification_metrics(
            self.class_names, "train", per_class=False, auroc=False
        )
        self.val_metrics = classification_metrics(self.class_names, "val")
        self.test_metrics = classification_metrics(self.class_names, "test")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        # the training epoch's running sums go into checkpoints: an epoch resumed from a
        # step inside it (or from its end, before its metrics were computed) reports the
        # whole epoch, as an uninterrupted run does
        self.train_metrics.persistent(True)
        self.train_loss.persistent(True)
        self.history: dict[int, dict[str, float]] = {}
        self._test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        # set by the fit when the frozen layers are computed once (models/feature_cache.py):
        # training and validation batches then hold their outputs while it is active
        self.feature_cache: Any = None
        self.test_targets: torch.Tensor | None = None
        self.test_probs: torch.Tensor | None = None
        # adversary=records (models/adversary.py): training batches carry record indices
        self.adversary = adversary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(channels_last_input(x) if self.channels_last else x)

    def frozen_prefix(self, x: torch.Tensor) -> Any:
        """The frozen layers' outputs for a raw batch (the feature cache's pass)."""
        return self.feature_cache.split.prefix(channels_last_input(x) if self.channels_last
                                               else x)

    def train(self, mode: bool = True) -> ClassifierModule:
        """As nn.Module.train, but batch-norm layers whose parameters are all frozen stay in
        eval mode: a frozen (pretrained) backbone keeps its running statistics."""
        super().train(mode)
        self._set_norm_modes()
        return self

    def on_train_epoch_start(self) -> None:
        """Lightning never calls `train()` during a fit: it restores each layer's own mode
        after validation (the sanity check leaves every layer training). So each epoch sets
        the batch-norm modes again, after the freezing callbacks unfroze what they unfreeze."""
        self._set_norm_modes()

    def _set_norm_modes(self) -> None:
        """In training, batch-norm layers whose parameters are all frozen evaluate (their
        running statistics stay as loaded) and the others train."""
        if not self.training:
            return
        for module in self.net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                params = list(module.parameters())
                module.train(not params or any(p.requires_grad for p in params))

    def _step(self, batch: tuple[torch.Tensor, ...], stage: str) -> torch.Tensor:
        x, y, *records = batch
        cache = self.feature_cache
        adversary_loss = None
        if stage == "train" and self.adversary is not None:
            features = self.net.forward_features(x)
            output = self.net.forward_head(features)
            adversary_loss, adversary_acc = self.adversary(features, records[0],
                                                           self._progress())
            self.log_dict({"train/adversary_loss": adversary_loss.detach(),
                           "train/adversary_acc": adversary_acc}, on_step=False,
                          on_epoch=True, batch_size=y.shape[0])
        elif stage != "test" and cache is not None and cache.active(self.current_epoch):
            output = cache.split.suffix(cache.head_input(x))  # the head on cached outputs
        else:
            output = self(x)
        if hasattr(output, "aux_logits"):  # Inception v3 in training: main + 0.4 x auxiliary
            logits = output.logits.float()
            loss = self.criterion(logits, y) + AUX_LOSS_WEIGHT * self.criterion(
                output.aux_logits.float(), y)
        else:
            logits = output.float()  # bf16/fp16 logits under mixed precision
            loss = self.criterion(logits, y)
        probs = logits.detach().softmax(dim=-1)
        getattr(self, f"{stage}_metrics").update(probs, y)
        getattr(self, f"{stage}_loss").update(loss.detach(), weight=y.shape[0])  # the class
        if stage == "test":  # loss alone: train/loss means the same with an adversary
            self._test_outputs.append((y.detach().cpu(), probs.cpu()))
        return loss if adversary_loss is None else loss + adversary_loss

    def _progress(self) -> float:
        """The share of training steps done (the adversary's schedule); 1 where the number
        of steps is not known in advance (a run bounded by time alone)."""
        total = float(self.trainer.estimated_stepping_batches)
        return self.global_step / total if math.isfinite(total) and total > 0 else 1.0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> dict[str, float]:
        with warnings.catch_warnings():
            # With compute groups, torchmetrics warns that the per-class metrics inside
            # ClasswiseWrapper were computed before update after a reset; their states are
            # shared with the group leader and the values are correct (tests/test_metrics.py).
            warnings.filterwarnings("ignore", message=".*was called before the ``update``")
            values = dict(getattr(self, f"{stage}_metrics").compute())
        values[f"{stage}/loss"] = getattr(self, f"{stage}_loss").compute()
        getattr(self, f"{stage}_metrics").reset()
        getattr(self, f"{stage}_loss").reset()
        shown = {f"{stage}/loss", f"{stage}/acc", f"{stage}/f1_macro"}
        # the values are already synchronised across processes by torchmetrics; sync_dist
        # only tells Lightning so (identical values, a no-op on one process)
        self.log_dict({k: v for k, v in values.items() if k in shown}, prog_bar=True,
                      sync_dist=True)
        self.log_dict({k: v for k, v in values.items() if k not in shown}, sync_dist=True)
        return {k: float(v) for k, v in values.items()}

    def _remember(self, stage: str, values: dict[str, float]) -> None:
        row = self.history.setdefault(self.current_epoch, {"epoch": self.current_epoch})
        if stage != "val":  # every validation metric is kept: any may be optimised
            values = {k: v for k, v in values.items() if k.endswith(("/loss", "/acc", "/f1_macro"))}
        row.update(values)

    def best(self, metric: str, mode: str) -> float | None:
        """The best value of a validation metric over the epochs so far (`mode` min|max)."""
        values = [row[metric] for row in self.history.values() if metric in row]
        if not values:
            return None
        return float(max(values) if mode == "max" else min(values))

    def on_train_epoch_end(self) -> None:
        self._remember("train", self._log_epoch_metrics("train"))

    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch_metrics("val")
        if not self.trainer.sanity_checking:
            self._remember("val", values)

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
        if self._test_outputs:
            targets, probs = zip(*self._test_outputs, strict=True)
            targets, probs = torch.cat(targets), torch.cat(probs)
            if self.trainer.world_size > 1:  # DDP: every rank saw a shard of the test set
                targets = self.all_gather(targets.to(self.device)).reshape(-1).cpu()
                probs = self.all_gather(probs.to(self.device)).reshape(-1, probs.shape[-1]).cpu()
            self.test_targets, self.test_probs = targets, probs
        self._test_outputs = []

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError("ClassifierModule was built without an optimizer: cannot train")
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
        checkpoint["ecg_history"] = [self.history[e] for e in sorted(self.history)]
        if self.input_spec is not None:
            checkpoint["ecg_input"] = self.input_spec.to_dict()
        if self.seen is not None:
            checkpoint["ecg_seen"] = self.seen.to_checkpoint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints written before the training sums were kept: resume with empty ones
        state = checkpoint.get("state_dict")
        if state is not None:
            for key, value in self.state_dict().items():
                if key.startswith(("train_metrics.", "train_loss.")):
                    state.setdefault(key, value)
        self.history = {int(row["epoch"]): dict(row) for row in checkpoint.get("ecg_history", [])}
