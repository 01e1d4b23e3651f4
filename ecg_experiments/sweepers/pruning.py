"""Optuna pruning from inside a training job launched by the Optuna sweeper."""

from __future__ import annotations

import logging

import optuna
import pytorch_lightning as pl

log = logging.getLogger(__name__)


class OptunaPruning(pl.Callback):
    """Report the optimised validation metric to the job's trial each epoch; stop when pruned.

    Written here rather than taken from optuna-integration because that callback raises
    TrialPruned, which marks the tracked run FAILED and skips its test; stopping cleanly keeps
    a finished run and lets the sweeper record the trial as pruned (user attr "pruned").
    """

    def __init__(self, storage: str, study_name: str, trial_number: int, monitor: str,
                 pruner: optuna.pruners.BasePruner | None = None) -> None:
        # pruners are not stored with the study: the sweeper's config passes it here
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, trial_number
        )
        self.trial = optuna.Trial(study, trial_id)
        self.monitor = monitor

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            log.info("Optuna pruned trial %d at epoch %d (%s=%.4f)", self.trial.number, epoch,
                     self.monitor, float(value))
            self.trial.set_user_attr("pruned", True)
            self.trial.set_user_attr("pruned_epoch", epoch)
            trainer.should_stop = True
