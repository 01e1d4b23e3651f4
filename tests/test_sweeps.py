"""Multiruns: grid sweeps grouped in MLflow, the Optuna sweeper, parallel jobs."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from ecg_experiments.errors import ConfigError
from ecg_experiments.sweepers.optuna import (
    CONFIGURATION_ATTR,
    OptunaSweeperBase,
    check_study_configuration,
    configuration_digest,
)
from ecg_experiments.tasks.train import train
from tests.conftest import FAST, all_runs, run_cli


@pytest.mark.slow  # a 4-job multirun of real trainings (24 s): `make test-all`
def test_grid_multirun_is_grouped_under_a_parent_run(small_csv: Path, tmp_path: Path) -> None:
    # the jobs are compared by their best epoch in the metric's direction: the highest
    # validation loss is an early epoch's, never the last one's
    run_cli(["-m", "data=beats_csv", f"data.train_file={small_csv}", "optimizer=adam,sgdm",
             "optimizer.lr=1e-3", *FAST, "optimized_metric=val/loss", "optimized_mode=max"],
            tmp_path)
    runs = all_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.data.tags["sweep.id"] for r in children} == {parent.data.tags["sweep.id"]}
    combos = {(r.data.tags["choice.optimizer"], r.data.params["optimizer.lr"]) for r in children}
    assert combos == {("adam", "0.001"), ("sgdm", "0.001")}
    # each job's value is its best epoch (best/val/loss, the highest here), not its last
    best = max(children, key=lambda r: r.data.metrics["best/val/loss"])
    assert best.data.metrics["best/val/loss"] > best.data.metrics["val/loss"]
    assert parent.data.tags["sweep.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/loss"] == best.data.metrics["best/val/loss"]


def _study(tmp: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp / 'optuna.db'}")


@pytest.mark.slow  # ~50 s of sweep processes; `make test-all` runs it
def test_optuna_search_persists_and_resumes(small_csv: Path, tmp_path: Path) -> None:
    args = ["hparams_search=optuna", "data=beats_csv", f"data.train_file={small_csv}", *FAST,
            "hydra.sweeper.study_name=resume", "hydra.sweeper.n_jobs=2"]
    run_cli([*args, "hydra.sweeper.n_trials=4"], tmp_path)
    assert len(_study(tmp_path, "resume").trials) == 4
    # another configuration (a fixed override here; a changed default alike) is refused
    other = run_cli([*args, "hydra.sweeper.n_trials=6", "optimizer=sgdm"], tmp_path, check=False)
    assert other.returncode != 0
    assert "ran another configuration" in other.stdout + other.stderr
    assert len(_study(tmp_path, "resume").trials) == 4
    second = run_cli([*args, "hydra.sweeper.n_trials=6"], tmp_path)
    study = _study(tmp_path, "resume")
    assert len(study.trials) == 6 and all(t.state.is_finished() for t in study.trials)
    assert "4 trial(s) done, 2 to run" in second.stdout + second.stderr
    results = sorted(tmp_path.glob("multiruns/*/*/optimization_results.yaml"))
    assert len(results) == 2
    text = results[-1].read_text()
    assert "best_params" in text and "optimizer.lr" in text and "data.batch_size" in text
    lrs = [t.params["optimizer.lr"] for t in study.trials]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 6
    parents = [r for r in all_runs(tmp_path) if r.data.tags.get("sweep.parent") == "true"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert any("optimization_results.yaml" in {a.path for a in client.list_artifacts(
        p.info.run_id)} for p in parents)


@pytest.mark.slow  # ~20 s; `make test-all` runs it
def test_poor_trials_are_pruned_and_their_runs_still_finish(small_csv, tmp_path) -> None:
    run_cli(["hparams_search=optuna", "data=beats_csv", f"data.train_file={small_csv}", *FAST,
             "trainer.max_epochs=4", "hydra.sweeper.study_name=prune", "hydra.sweeper.n_trials=2",
             # any validation macro-F1 below 0.99 is "poor": every trial stops after epoch 0
             "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
             "~hydra.sweeper.pruner.n_startup_trials", "~hydra.sweeper.pruner.n_warmup_steps",
             "+hydra.sweeper.pruner.lower=0.99"], tmp_path)
    study = _study(tmp_path, "prune")
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    children = [r for r in all_runs(tmp_path) if "mlflow.parentRunId" in r.data.tags]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run in children:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 1


def test_a_study_keeps_one_configuration(compose_train, tmp_path: Path, caplog) -> None:
    base = ["data=beats_csv", "data.train_file=x.csv"]
    digest = configuration_digest(compose_train(base), ["data.batch_size=64", "seed=1"])
    # Hydra's own settings (n_trials, the sweep folder) and the overrides' order do not count
    assert digest == configuration_digest(compose_train(base), [
        "seed=1", "hydra.sweeper.n_trials=30", "data.batch_size=64"])
    other_default = configuration_digest(compose_train([*base, "optimizer=adam"]),
                                         ["data.batch_size=64", "seed=1"])
    other_fixed = configuration_digest(compose_train(base), ["data.batch_size=32", "seed=1"])
    assert len({digest, other_default, other_fixed}) == 3
    # a swept key's default is replaced by every trial: another default is the same study
    assert configuration_digest(compose_train(base), [], ["optimizer.lr"]) == (
        configuration_digest(compose_train([*base, "optimizer.lr=0.5"]), [], ["optimizer.lr"]))
    assert configuration_digest(compose_train(base), []) != (
        configuration_digest(compose_train([*base, "optimizer.lr=0.5"]), []))

    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    check_study_configuration(study, digest, storage)  # a new study records its configuration
    assert study.user_attrs[CONFIGURATION_ATTR] == digest
    study.tell(study.ask({"lr": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    check_study_configuration(study, digest, storage)  # the same configuration continues
    with pytest.raises(ConfigError, match=r"study 's' .*1 trial\(s\) ran another configuration"):
        check_study_configuration(study, other_default, storage)
    # a study from before the record: continued with a warning, then held to this configuration
    old = optuna.create_study(study_name="old", storage=storage)
    old.tell(old.ask({"lr": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    check_study_configuration(old, digest, storage)
    assert "before studies recorded their configuration" in caplog.text
    with pytest.raises(ConfigError):
        check_study_configuration(old, other_fixed, storage)


def test_interrupted_trials_are_retried(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="x", storage=storage)
    done = study.ask({"lr": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(done, 0.5)
    stale = study.ask({"lr": optuna.distributions.FloatDistribution(0, 1)})  # never told
    sweeper = OptunaSweeperBase(None, None, "minimize", storage, "x", 4, 1, 0.0, {})
    assert sweeper._resume(study) == 1
    states = [t.state for t in study.trials]
    assert states[:2] == [TrialState.COMPLETE, TrialState.FAIL]
    assert states[2] == TrialState.WAITING  # re-enqueued with the interrupted parameters
    assert study.trials[2].params == {} and study.trials[2].system_attrs[
        "fixed_params"] == stale.params


@pytest.mark.slow  # 40 s of process start-up; `make test-all` runs it
def test_joblib_launcher_runs_four_jobs_on_two_workers(small_csv, tmp_path) -> None:
    run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "data=beats_csv",
             f"data.train_file={small_csv}", "optimizer=adam,sgdm", "optimizer.lr=1e-3,1e-4",
             *FAST], tmp_path)
    runs = all_runs(tmp_path)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert all("test/acc" in r.data.metrics for r in children)


def test_optimized_metric_must_be_a_validation_metric(compose_train) -> None:
    from ecg_experiments.config import validate_train_config
    from ecg_experiments.errors import ConfigError

    cfg = compose_train(["data=beats_csv", "data.train_file=x.csv",
                         "optimized_metric=test/f1_macro"])
    with pytest.raises(ConfigError, match="optimized_metric='test/f1_macro'"):
        validate_train_config(cfg)


def test_train_returns_the_best_validation_value(compose_train, small_csv,
                                                 tmp_path: Path) -> None:
    """The best epoch's value of the monitored and of the optimised metric in its own
    direction: the highest validation loss (optimized_mode=max, the first epochs') is not
    the last epoch's, so a run that returned its last value would fail here."""
    metrics = train(compose_train(["data=beats_csv", f"data.train_file={small_csv}", *FAST,
                                   "trainer.max_epochs=4", "optimized_metric=val/loss",
                                   "optimized_mode=max"]))
    [run] = all_runs(tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "val/loss")]
    scores = [m.value for m in client.get_metric_history(run.info.run_id, "val/f1_macro")]
    assert len(losses) == len(scores) == 4
    assert max(losses) != losses[-1]
    assert metrics["val/loss"] == pytest.approx(max(losses))
    assert metrics["val/f1_macro"] == pytest.approx(max(scores))
    assert run.data.metrics["best/val/loss"] == pytest.approx(max(losses))


def test_the_train_task_pickles_for_process_launchers() -> None:
    """joblib's loky launcher pickles the task by value (cloudpickle: `train` runs as
    __main__). A name in train() that is also a torch pseudo-module (`init.classes` and
    `torch.classes`) once made that fail; the joblib test is slow, this one is not."""
    import types

    import cloudpickle

    from ecg_experiments.config import PROJECT_ROOT

    source = (PROJECT_ROOT / "ecg_experiments" / "train.py").read_text()
    module = types.ModuleType("ecg_train_as_main")  # not importable: pickled by value
    exec(compile(source.replace('if __name__ == "__main__":', "if False:"), "train", "exec"),
         module.__dict__)
    assert len(cloudpickle.dumps(module.main)) > 1000
