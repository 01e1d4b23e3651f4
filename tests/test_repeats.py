"""Results over seeds (`repeat.seeds`): seeds as child runs with one split, the parent's seed
means and sds recomputed from the children in MLflow, CV x seeds, refusals and resume."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict

from ecg_experiments.errors import ConfigError
from ecg_experiments.runs.crossval import summarise
from ecg_experiments.runs.repeats import (
    check_repeats,
    pinned_data_seeds,
    seed_config,
    summarise_seeds,
)
from ecg_experiments.tasks.train import train
from tests.conftest import FAST, all_runs, shared_path


def _family(tmp: Path) -> tuple[object, list]:
    """The repeat's parent run and its seed children (by seed), no run outside them."""
    runs = all_runs(tmp)
    [parent] = [r for r in runs if "repeat.seeds" in r.data.tags
                and "repeat.seed" not in r.data.tags]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId")
                       == parent.info.run_id), key=lambda r: r.data.tags["repeat.seed"])
    return parent, children


def test_two_seeds_are_child_runs_of_one_split_and_the_parent_gets_their_mean_and_sd(
        compose_train, small_csv: Path, tmp_path: Path) -> None:
    # report.log_model=false: the logged model (~6 s a fit) is one fit's business, not the
    # repeat's; every other part of a fit stays on
    cfg = compose_train(["data=beats_csv", f"data.train_file={small_csv}", "data.batch_size=32",
                         *FAST, "report.log_model=false", "repeat.seeds=2", "seed=7"])
    result = train(cfg)
    parent, children = _family(tmp_path)
    assert len(all_runs(tmp_path)) == 3
    assert all(r.info.status == "FINISHED" for r in [parent, *children])
    # the count rule: `seed` and the next one; the split seed stays 7 for both
    assert [r.data.tags["repeat.seed"] for r in children] == ["7", "8"]
    assert [r.data.params["seed"] for r in children] == ["7", "8"]
    assert [r.data.params["data.seed"] for r in children] == ["7", "7"]
    assert parent.data.tags["repeat.seeds"] == "7,8"
    assert all(r.data.tags["repeat.seeds"] == "7,8" for r in children)
    run_dir = Path(cfg.paths.run_dir)
    splits = [pd.read_csv(run_dir / f"seed{s}" / "split.csv") for s in (7, 8)]
    pd.testing.assert_frame_equal(*splits)  # one split ...
    a, b = (r.data.metrics for r in children)
    assert a["test/loss"] != b["test/loss"]  # ... two different fits
    # the parent: mean and sd (ddof=1) of every test metric both children logged (one
    # without predictions of a class has no AAMI +P for it: no mean over one seed then)
    tested = [k for k in a if k.startswith("test/") and k in b]
    assert len(tested) > 30
    assert not {f"seeds/{k}_mean" for k in set(a) ^ set(b)} & set(parent.data.metrics)
    for key in tested:
        values = [a[key], b[key]]
        assert parent.data.metrics[f"seeds/{key}_mean"] == pytest.approx(np.mean(values))
        assert parent.data.metrics[f"seeds/{key}_std"] == pytest.approx(np.std(values, ddof=1))
        assert result[f"seeds/{key}_mean"] == pytest.approx(np.mean(values))
    # best/<optimized_metric>: the seed mean of each child's best epoch (what sweeps read)
    best = np.mean([r.data.metrics["best/val/f1_macro"] for r in children])
    assert parent.data.metrics["best/val/f1_macro"] == pytest.approx(best)
    assert result["val/f1_macro"] == pytest.approx(best)
    table = pd.read_csv(run_dir / "seeds.csv")
    assert list(table["seed"]) == [7, 8]
    assert list(table["run_id"]) == [r.info.run_id for r in children]
    assert list(table["test/acc"]) == pytest.approx([a["test/acc"], b["test/acc"]])
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    assert "seeds.csv" in {f.path for f in client.list_artifacts(parent.info.run_id)}
    # the parent lists the data its seeds were fit on: one split, so each part once
    datasets = [(d.dataset.name, d.dataset.digest) for d in
                client.get_run(parent.info.run_id).inputs.dataset_inputs]
    assert sorted(datasets) == sorted((d.dataset.name, d.dataset.digest)
                                      for d in children[0].inputs.dataset_inputs)
    assert len(datasets) == 3


def test_the_seed_rule_and_the_pinned_data_seeds(compose_train) -> None:
    cfg = compose_train(["data=beat_images", "model=cnn2d", "seed=5", "repeat.seeds=3",
                         "data/augment@data.source.beats.augment=noise"])
    assert check_repeats(cfg) == [5, 6, 7]
    with open_dict(cfg):
        cfg.repeat.seeds = [42, 1, 2]
    assert check_repeats(cfg) == [42, 1, 2]
    # the seeds that choose and split samples keep their value; augmentation follows `seed`
    pinned = pinned_data_seeds(cfg)
    assert pinned == {"data.seed": 5, "data.source.seed": 5, "data.source.beats.seed": 5}
    one = seed_config(cfg, 1, Path("/tmp/r"), "name", pinned)
    beats = one.data.source.beats
    assert (one.seed, one.data.seed, one.data.source.seed, beats.seed) == (1, 5, 5, 5)
    assert beats.augment.seed == 1
    assert one.paths.run_dir == "/tmp/r/seed1" and one.repeat.seeds is None
    assert one.logger.run_name == "name-seed1"


@pytest.mark.parametrize(("override", "message"), [
    ("repeat.seeds=0", r"repeat.seeds=0: expected a count >= 1"),
    ("repeat.seeds=-2", r"repeat.seeds=-2: expected a count >= 1"),
    ("repeat.seeds=[]", r"a non-empty list of distinct integer seeds"),
    ("repeat.seeds=[1,2,1]", r"a seed is repeated"),
    ("repeat.seeds=[1,2.5]", r"a non-empty list of distinct integer seeds"),
    ("repeat.seeds=true", r"repeat.seeds=True: expected a count"),
    ("repeat.seeds=five", r"repeat.seeds='five': expected a count"),
    ("repeat.seeds=[1,-1]", r"seeds \[-1\] are outside"),
    ("ckpt_path=some.ckpt", r"ckpt_path starts one fit from a checkpoint, not a repeat"),
    ("resume=true", r"resume=true: no repeat over seeds to resume in"),
    ("cv.folds=1", r"cv.folds=1: expected an integer >= 2"),
])
def test_what_cannot_be_repeated_is_refused_before_any_work(
        compose_train, small_csv: Path, tmp_path: Path, override: str, message: str) -> None:
    overrides = ["data=beats_csv", f"data.train_file={small_csv}", "repeat.seeds=2", override]
    with pytest.raises(ConfigError, match=message):
        train(compose_train(overrides))
    assert not list(tmp_path.glob("**/mlflow.db"))  # nothing was tracked
    assert not list(tmp_path.glob("**/seed*"))  # nor fitted


# three DS1 records and two DS2 records: folds of the DS1 pool (as in test_crossval)
CV = ["data=mitbih", "data.download=false", "data.split=interpatient",
      "data.records=[101,106,108,100,103]", "cv.folds=2", "trainer.max_epochs=2",
      "trainer.limit_train_batches=4", "report.bootstrap_rounds=0"]


@pytest.mark.slow  # two cross-validations of two folds (~2 min on 2 busy cores)
def test_seeds_of_a_cross_validation_average_its_criterion(compose_train,
                                                           tmp_path: Path) -> None:
    cfg = compose_train([*CV, f"data.dir={shared_path('mitdb')}", "repeat.seeds=[3,1]"])
    result = train(cfg)
    parent, seeds = _family(tmp_path)
    assert [r.data.tags["repeat.seed"] for r in seeds] == ["1", "3"]
    assert all(r.data.tags["cv.folds"] == "2" for r in seeds)  # each seed: a CV parent
    runs = all_runs(tmp_path)
    assert len(runs) == 1 + 2 + 4 and all(r.info.status == "FINISHED" for r in runs)
    for seed in seeds:
        folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == seed.info.run_id]
        assert sorted(r.data.tags["cv.fold"] for r in folds) == ["0", "1"]
    assert not any(k.startswith("test/") for r in runs for k in r.data.metrics)
    # the CV criterion (each seed's best/<metric>, what its CV returns) averaged over seeds
    cv_means = [r.data.metrics["best/val/f1_macro"] for r in seeds]
    assert parent.data.metrics["best/val/f1_macro"] == pytest.approx(np.mean(cv_means))
    assert result["val/f1_macro"] == pytest.approx(np.mean(cv_means))
    assert parent.data.metrics["seeds/val/f1_macro_std"] == pytest.approx(
        np.std(cv_means, ddof=1))
    for key in ("cv/val/acc_mean", "cv/best/val/f1_macro_std", "cv/epochs"):
        values = [r.data.metrics[key] for r in seeds]
        assert parent.data.metrics[f"seeds/{key}_mean"] == pytest.approx(np.mean(values))
    run_dir = Path(cfg.paths.run_dir)
    for fold in (0, 1):  # the same folds for both seeds
        pd.testing.assert_frame_equal(pd.read_csv(run_dir / "seed3" / f"fold{fold}" / "split.csv"),
                                      pd.read_csv(run_dir / "seed1" / f"fold{fold}" / "split.csv"))


@pytest.mark.slow  # three processes, two fits and a resumed one (~80 s on 2 busy cores)
def test_a_repeat_stopped_in_its_second_seed_resumes_with_the_printed_command(
        small_csv: Path, tmp_path: Path) -> None:
    from tests.test_recovery import finish, resume_command, start_job

    outputs, run_dir = tmp_path / "out", tmp_path / "out" / "run"
    args = ["data=beats_csv", f"data.train_file={small_csv}", "data.batch_size=32", *FAST,
            "report.log_model=false", "repeat.seeds=2", f"hydra.run.dir={run_dir}",
            "+callbacks.stop._target_=tests.pause.StopOnce", "+callbacks.stop.how=sigterm",
            "+callbacks.stop.in_folder=seed43", "+callbacks.stop.batch=2",
            f"+callbacks.stop.marker={tmp_path / 'stopped'}"]
    code, first = finish(start_job(args, outputs, tmp_path / "a.log"), tmp_path / "a.log")
    assert code == 143 and "Traceback" not in first, first[-3000:]
    parent, seeds = _family(outputs)
    assert parent.info.status == "KILLED"
    assert [(r.data.tags["repeat.seed"], r.info.status) for r in seeds] == [
        ("42", "FINISHED"), ("43", "KILLED")]
    printed = resume_command(first)
    assert f"hydra.run.dir={run_dir}" in printed and "resume=true" in printed
    # another configuration would mix two experiments' seeds: refused before any work
    code, refused = finish(start_job([*printed, "trainer.max_epochs=3"], outputs,
                                     tmp_path / "refused.log"), tmp_path / "refused.log")
    assert code == 2 and "trainer.max_epochs (2 -> 3)" in refused, refused[-2000:]
    code, second = finish(start_job(printed, outputs, tmp_path / "b.log"), tmp_path / "b.log")
    assert code == 0 and "Traceback" not in second, second[-3000:]
    assert "seed 42 (1 of 2) finished before" in second  # not fitted again
    resumed, again = _family(outputs)
    assert resumed.info.run_id == parent.info.run_id and resumed.info.status == "FINISHED"
    assert [r.info.run_id for r in again] == [r.info.run_id for r in seeds]  # seed 43 resumed
    assert all(r.info.status == "FINISHED" for r in again)
    assert again[0].data.metrics == seeds[0].data.metrics
    assert resumed.data.metrics["best/val/f1_macro"] == pytest.approx(
        np.mean([r.data.metrics["best/val/f1_macro"] for r in again]))
    assert list(pd.read_csv(run_dir / "seeds.csv")["run_id"]) == [r.info.run_id for r in again]


def test_a_metric_missing_in_a_seed_or_fold_says_over_how_many_it_is_averaged(caplog) -> None:
    per_seed = pd.DataFrame({"seed": [42, 1, 2], "run_id": ["a", "b", "c"],
                             "test/acc": [0.8, 0.9, 1.0],
                             "test/se_S": [0.5, np.nan, 0.7]})
    with caplog.at_level("WARNING"):
        summary = summarise_seeds(per_seed)
    assert summary["seeds/test/acc_mean"] == pytest.approx(0.9)
    assert summary["seeds/test/se_S_mean"] == pytest.approx(0.6)
    assert summary["seeds/test/se_S_n"] == 2  # not passed off as a mean over 3 seeds
    assert "seeds/test/acc_n" not in summary
    assert "test/se_S over 2" in caplog.text and "3 seeds" in caplog.text
    per_fold = per_seed.rename(columns={"seed": "fold"}).assign(epoch=3)
    summary = summarise(per_fold)
    assert summary["cv/test/se_S_n"] == 2
    assert summary["cv/test/se_S_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
