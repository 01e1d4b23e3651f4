"""The old home of the PhysioNet DataModule, kept as aliases.

`data=mitbih` and `data=physionet` build `data.physionet_datamodule.PhysionetDataModule`.
Configs and checkpoints stored by older runs name `ecg_experiments.data.mitbih.
PhysionetDataModule` or `ecg_experiments.data.mitbih.MitbihDataModule` as their `_target_`,
and keep loading through these names (tests/test_stored_runs.py)."""

from __future__ import annotations

from ecg_experiments.data.beat_table import Recipe
from ecg_experiments.data.physionet_datamodule import PhysionetDataModule

__all__ = ["MitbihDataModule", "PhysionetDataModule"]


class MitbihDataModule(PhysionetDataModule):
    """The MIT-BIH preset with the options of runs made before `data=physionet` existed
    (`mitdb_dir`, `lead`); `data=mitbih` now builds PhysionetDataModule directly."""

    def __init__(self, mitdb_dir: str, prepared_dir: str, recipe: Recipe,
                 lead: str = "MLII", **options: object) -> None:
        super().__init__(prepared_dir, recipe, database="mitdb", dir=mitdb_dir,
                         leads=[lead], **options)
