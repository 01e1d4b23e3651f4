"""Where a run stands in a Hydra multirun: its sweep's tags and its default run name."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from ecg_experiments.sweepers.parent_run import parent_run_file
from ecg_experiments.tracking import choice_tags, sweep_id


def in_sweep() -> bool:
    """Whether this is one job of a multirun (a composed sweep config alone is not)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    return OmegaConf.select(HydraConfig.get(), "job.num", default=None) is not None


def sweep_tags() -> dict[str, str]:
    """In a multirun: the sweep's id, this job's number and the parent run to nest under."""
    if not in_sweep():
        return {}
    hydra_cfg = HydraConfig.get()
    tags = {"sweep.id": sweep_id(hydra_cfg.sweep.dir), "sweep.job": str(hydra_cfg.job.num)}
    parent = parent_run_file(hydra_cfg.sweep.dir)
    if parent.is_file():
        tags["mlflow.parentRunId"] = parent.read_text().strip()
    return tags


def default_run_name() -> str | None:
    """`<model>-<data>` from the config choices, plus `-job<n>` in a multirun."""
    choices = choice_tags()
    if not choices:
        return None
    name = f"{choices.get('choice.model', 'model')}-{choices.get('choice.data', 'data')}"
    if in_sweep():
        name += f"-job{HydraConfig.get().job.num}"
    return name
