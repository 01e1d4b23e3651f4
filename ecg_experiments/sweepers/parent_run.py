"""The parent MLflow run of a multirun (a Hydra callback).

Hydra builds its callbacks for every run, before the config reaches the task, so this
module stays light: MLflow is imported when a multirun starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def parent_run_file(sweep_dir: str | Path) -> Path:
    """Where a sweep keeps the id of its parent run (read by every job)."""
    return Path(sweep_dir) / "mlflow_parent_run_id"


class MlflowSweepCallback(Callback):
    """Groups the runs of one multirun under a parent MLflow run (Hydra callback).

    Before the jobs start, the parent run is created and its id written to the sweep dir,
    where every job finds it (also jobs in other processes); at the end the parent gets the
    best child's value and run id, and the sweeper's results file when there is one.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("logger"):
            return
        import mlflow

        from ecg_experiments.tracking import (
            check_server,
            get_or_create_experiment,
            is_remote,
            prepare_sqlite_store,
            sweep_id,
        )

        uri = str(config.logger.tracking_uri)
        if is_remote(uri):
            check_server(uri)
        elif uri.startswith("sqlite:///"):
            prepare_sqlite_store(uri, str(config.experiment_name),
                                 config.logger.get("artifact_dir"))
        client = mlflow.MlflowClient(uri)
        experiment = get_or_create_experiment(client, str(config.experiment_name),
                                              config.logger.get("artifact_dir"))
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = " ".join(config.hydra.overrides.task)
        run = client.create_run(experiment, run_name=f"sweep {sweep_dir.name}", tags={
            "sweep.id": sweep_id(sweep_dir), "sweep.dir": str(sweep_dir),
            "sweep.overrides": overrides[:5000], "sweep.parent": "true",
        })
        sweep_dir.mkdir(parents=True, exist_ok=True)
        parent_run_file(sweep_dir).write_text(run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = parent_run_file(config.hydra.sweep.dir)
        if not config.get("logger") or not path.is_file():
            return
        import mlflow

        client = mlflow.MlflowClient(str(config.logger.tracking_uri))
        parent = client.get_run(path.read_text().strip())
        children = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            max_results=10_000,
        )
        # each child logs best/<metric> (its best epoch's value; a CV's fold mean at
        # cv/epochs; a seed repeat's seed mean): the same number `train` returned to the
        # sweeper, so the parent and the sweeper name the same winner
        key = f"best/{config.optimized_metric}"
        scored = [c for c in children if key in c.data.metrics]
        if scored:
            mode = str(config.get("optimized_mode") or config.monitor.mode)
            pick = max if mode == "max" else min
            best = pick(scored, key=lambda c: c.data.metrics[key])
            client.log_metric(parent.info.run_id, key, best.data.metrics[key])
            client.set_tag(parent.info.run_id, "sweep.best_run_id", best.info.run_id)
        client.set_tag(parent.info.run_id, "sweep.jobs", str(len(children)))
        from ecg_experiments.tracked_data import log_children_datasets

        log_children_datasets(client, parent.info.run_id, [c.info.run_id for c in children])
        results = Path(config.hydra.sweep.dir) / "optimization_results.yaml"
        if results.is_file():
            client.log_artifact(parent.info.run_id, str(results))
        client.set_terminated(parent.info.run_id)
