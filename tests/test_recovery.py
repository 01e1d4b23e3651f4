"""Stopped and resumed as schedulers run jobs: output to a file, the job in a process group of
its own, every default callback on (issue 31).

The default suite runs the reported case (SIGTERM to the group inside an epoch, then the
printed resume command) and a cross-validation stopped in its second fold; the recovery
matrix (`-m slow`) crosses every way a job stops with both progress styles and both kinds
of data loading.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from ecg_experiments.config import PROJECT_ROOT
from tests.conftest import all_runs, shared_path
from tests.conftest import test_metrics_of_the_run as _test_metrics


def start_job(args: list[str], outputs: Path, log_file: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m ecg_experiments.train ARGS > log_file 2>&1` in a session (process group)
    of its own, as a batch scheduler starts a job; MLflow store and outputs under outputs."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ecg_experiments.train", *args,
             f"paths.outputs_dir={outputs}"],
            cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{outputs / 'mlflow.db'}",
                 **(env or {})},
            start_new_session=True)


def wait_for(path_glob: tuple[Path, str], job: subprocess.Popen, log_file: Path,
             timeout: float = 300) -> Path:
    """The first file matching `folder.glob(pattern)`, waiting while the job runs."""
    folder, pattern = path_glob
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        if job.poll() is not None:
            pytest.fail(f"the job ended before {folder / pattern} appeared:\n"
                        f"{log_file.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            job.kill()
            pytest.fail(f"{folder / pattern} did not appear within {timeout} s")
        time.sleep(0.05)


def finish(job: subprocess.Popen, log_file: Path, timeout: float = 400) -> tuple[int, str]:
    try:
        job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        raise
    return job.returncode, log_file.read_text()


def resume_command(log: str) -> list[str]:
    """The overrides of the resume command the stopped job printed."""
    [command] = re.findall(r"resume with:\n  python -m ecg_experiments\.train (.*)\n", log)
    return command.split()


# The reported case: seven records, loader workers, early stopping that will not stop
ISSUE_ARGS = ["data.records=[100,101,103,105,106,108,109]", "data.num_workers=2",
              "trainer.max_epochs=2", "callbacks.early_stopping.patience=100",
              "data.download=false", "trainer.limit_train_batches=30"]


def test_sigterm_to_the_job_inside_an_epoch_then_the_printed_resume_finishes_the_run(
        tmp_path: Path) -> None:
    """Issue 31's two commands, each with its output in a file: the stop is clean, the
    printed resume command finishes the same MLflow run without a traceback."""
    outputs, run_dir = tmp_path / "out", tmp_path / "out" / "run"
    args = [*ISSUE_ARGS, f"paths.mitdb_dir={shared_path('mitdb')}", f"hydra.run.dir={run_dir}",
            # batches that last a while, so that the signal lands inside an epoch
            "+callbacks.pause._target_=tests.pause.PauseEachBatch",
            "+callbacks.pause.seconds=0.02"]
    job = start_job(args, outputs, tmp_path / "a.log")
    wait_for((run_dir / "checkpoints", "last.ckpt"), job, tmp_path / "a.log")  # epoch 1 done
    time.sleep(1.0)
    killed_at = time.time()
    os.killpg(job.pid, signal.SIGTERM)  # kill -TERM -- -<pid>
    code, first = finish(job, tmp_path / "a.log", timeout=120)
    assert code == 143, first[-3000:]
    assert "Traceback" not in first, first[-3000:]
    [stopped] = all_runs(outputs)
    assert stopped.info.status == "KILLED"
    # the stop saved its own step (not only epoch 1's checkpoint is there)
    assert "SIGTERM: stopped after batch" in first, first[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime >= killed_at
    printed = resume_command(first)
    assert f"hydra.run.dir={run_dir}" in printed and "resume=true" in printed

    resumed = start_job(printed, outputs, tmp_path / "b.log")
    code, second = finish(resumed, tmp_path / "b.log")
    assert code == 0, second[-3000:]
    assert "Traceback" not in second and "site-packages" not in second, second[-3000:]
    [run] = all_runs(outputs)
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert re.search(r"epoch 2/2  train loss [\d.]+  val loss", second), second[-3000:]
    assert "test/acc" in run.data.metrics


# ---- the recovery matrix: stop x progress x data, each against an uninterrupted run ----

STOPS = ("sigterm", "boundary", "validation", "kill", "slurm", "time_checkpoint_kill")
PROGRESS = ("lines", "rich")
MATRIX_DATA = {
    # five real records (every class), loader workers
    "beats": ["data=mitbih", "data.records=[100,105,119,208,217]", "data.download=false",
              "data.num_workers=2", "data.batch_size=32", "trainer.limit_train_batches=12"],
    # beats drawn as images in the loader workers (random rotation: augmentation on)
    "images": ["data=beat_images", "model=cnn2d", "data.source.beats.download=false",
               "data.source.beats.records=[100,105,119,208,217]", "data.max_per_class=24",
               "data.batch_size=8", "data.num_workers=2"],
}
MATRIX_COMMON = ["trainer=cpu", "trainer.deterministic=true", "trainer.max_epochs=2",
                 "callbacks.early_stopping.patience=10", "scheduler=cosine"]
# what must come out as in the uninterrupted run, besides the test metrics: every epoch's
# training and validation figures and learning rate
HISTORIES = ("train/loss", "train/acc", "train/f1_macro", "val/loss", "val/f1_macro",
             "lr-AdamW")
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "ecg", "SLURM_NTASKS": "1",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
         "SLURM_NODELIST": "localhost"}


def fake_slurm(tmp_path: Path) -> dict[str, str]:
    """The environment of a Slurm job whose `scontrol` records the requeue it is asked for
    in `tmp_path/scontrol.log` (there is no Slurm here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(0o755)
    return {**SLURM, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _matrix_args(data: str, prepared: Path, run_dir: Path) -> list[str]:
    return [*MATRIX_DATA[data], *MATRIX_COMMON, f"paths.mitdb_dir={shared_path('mitdb')}",
            f"paths.data_dir={prepared}", f"hydra.run.dir={run_dir}"]


def _histories(outputs: Path) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} of the run (a step logged again after a resume, with the
    same value, counts once; another value would show)."""
    [run] = all_runs(outputs)
    client = mlflow.MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    result = {}
    for key in HISTORIES:
        values: dict[int, set[float]] = {}
        for m in client.get_metric_history(run.info.run_id, key):
            values.setdefault(m.step, set()).add(m.value)
        # a metric renamed or no longer logged must not compare as two empty histories
        assert values, f"{key} was not logged"
        result[key] = {step: min(v) if len(v) == 1 else sorted(v) for step, v in values.items()}
    return result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    """The test metrics of an uninterrupted run per kind of data (same seed, same options),
    and the prepared data every cell shares."""
    root = tmp_path_factory.mktemp("matrix")
    metrics = {}
    for data in MATRIX_DATA:
        outputs = root / data
        job = start_job(_matrix_args(data, root / "prepared", outputs / "run"), outputs,
                        outputs / "run.log")
        code, log = finish(job, outputs / "run.log")
        assert code == 0, log[-3000:]
        metrics[data] = _test_metrics(outputs)
        metrics[f"{data} histories"] = _histories(outputs)
    metrics["prepared"] = root / "prepared"
    return metrics


@pytest.mark.slow  # 24 cells of two training processes each (docs/reliability.md)
@pytest.mark.parametrize("data", list(MATRIX_DATA))
@pytest.mark.parametrize("progress", PROGRESS)
@pytest.mark.parametrize("stop", STOPS)
def test_recovery_matrix(stop: str, progress: str, data: str, uninterrupted: dict,
                         tmp_path: Path) -> None:
    """Stopped once, resumed as the user is told (or as Slurm requeues): the same MLflow run
    finishes with exit 0 and the test metrics of the uninterrupted run, to the last digit."""
    outputs, run_dir, marker = tmp_path / "out", tmp_path / "out" / "run", tmp_path / "stopped"
    args = [*_matrix_args(data, uninterrupted["prepared"], run_dir),
            f"callbacks.progress_bar.style={progress}",
            "+callbacks.stop._target_=tests.pause.StopOnce", f"+callbacks.stop.how={stop}",
            f"+callbacks.stop.marker={marker}"]
    env: dict[str, str] = {}
    if stop == "slurm":
        env = fake_slurm(tmp_path)
        args.append(f"+callbacks.stop.requeue_log={tmp_path / 'scontrol.log'}")
    if stop == "boundary":  # between the two epochs
        args.append("+callbacks.stop.epoch=0")
    if stop == "time_checkpoint_kill":  # a time checkpoint every 0.3 s, batches of 0.1 s
        args += ["callbacks.time_checkpoint.train_time_interval.minutes=0",
                 "+callbacks.time_checkpoint.train_time_interval.seconds=0.3",
                 "+callbacks.pause._target_=tests.pause.PauseEachBatch",
                 "+callbacks.pause.seconds=0.1"]
    job = start_job(args, outputs, tmp_path / "a.log", env)
    code, first = finish(job, tmp_path / "a.log")
    assert marker.is_file(), first[-3000:]  # it did stop where the cell says
    [stopped] = all_runs(outputs)
    if stop in ("kill", "time_checkpoint_kill"):
        assert code == -signal.SIGKILL
        assert stopped.info.status == "RUNNING"  # nobody could close it
        again = [*args, "resume=true"]  # what the user adds to the same command
    else:
        assert code == 143, first[-3000:]
        assert "Traceback" not in first, first[-3000:]
        assert stopped.info.status == "KILLED"
        again = resume_command(first)
    if stop == "slurm":  # Slurm starts the same command again
        assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
        again, env = args, {**env, "SLURM_RESTART_COUNT": "1"}
    if stop == "time_checkpoint_kill":
        saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False,
                           map_location="cpu")
        current = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
        assert saved["epoch"] == 1 and 0 < current["completed"] < 12  # inside epoch 2

    resumed = start_job(again, outputs, tmp_path / "b.log", env)
    code, second = finish(resumed, tmp_path / "b.log")
    assert code == 0, second[-3000:]
    assert "Traceback" not in second, second[-3000:]
    [run] = all_runs(outputs)
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    client = mlflow.MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    val_steps = {m.step for m in client.get_metric_history(run.info.run_id, "val/loss")}
    assert len(val_steps) == 2  # one validation per epoch, none lost or doubled
    assert _histories(outputs) == uninterrupted[f"{data} histories"]
    assert _test_metrics(outputs) == uninterrupted[data]


# ---- a cross-validation stopped in its second fold ----

CV_ARGS = ["data=mitbih", "data.download=false", "data.split=interpatient",
           "data.records=[101,106,108,100,103]", "cv.folds=3", "trainer.max_epochs=2",
           "trainer.limit_train_batches=4", "+callbacks.stop._target_=tests.pause.StopOnce",
           "+callbacks.stop.in_folder=fold1", "+callbacks.stop.batch=2"]


def _cv_runs(outputs: Path) -> tuple[object, list]:
    runs = all_runs(outputs)
    [parent] = [r for r in runs if "cv.fold" not in r.data.tags]
    folds = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId")
                    == parent.info.run_id), key=lambda r: r.data.tags["cv.fold"])
    assert len(runs) == 1 + len(folds)  # no run outside the parent
    return parent, folds


def _stopped_cv(tmp_path: Path, how: str, env: dict[str, str] | None = None,
                extra: tuple[str, ...] = ()) -> tuple[list[str], Path, Path, str]:
    outputs, run_dir = tmp_path / "out", tmp_path / "out" / "run"
    args = [*CV_ARGS, f"paths.mitdb_dir={shared_path('mitdb')}", f"hydra.run.dir={run_dir}",
            f"+callbacks.stop.how={how}", f"+callbacks.stop.marker={tmp_path / 'stopped'}",
            *extra]
    job = start_job(args, outputs, tmp_path / "a.log", env)
    code, first = finish(job, tmp_path / "a.log")
    assert code == 143, first[-3000:]
    assert "Traceback" not in first, first[-3000:]
    parent, folds = _cv_runs(outputs)
    assert parent.info.status == "KILLED"
    assert [(f.data.tags["cv.fold"], f.info.status) for f in folds] == [
        ("0", "FINISHED"), ("1", "KILLED")]
    return args, outputs, run_dir, first


def _check_resumed_cv(outputs: Path, run_dir: Path, before: tuple, log: str) -> None:
    parent, folds = _cv_runs(outputs)
    old_parent, old_folds = before
    assert parent.info.run_id == old_parent.info.run_id and parent.info.status == "FINISHED"
    assert [f.info.status for f in folds] == ["FINISHED"] * 3
    assert [f.info.run_id for f in folds[:2]] == [f.info.run_id for f in old_folds]
    assert "fold 1 of 3 finished before" in log  # fold 0 is not fitted again
    assert folds[0].data.metrics == old_folds[0].data.metrics
    import pandas as pd

    per_fold = pd.read_csv(run_dir / "cv_folds.csv")
    assert list(per_fold["run_id"]) == [f.info.run_id for f in folds]
    assert parent.data.metrics["cv/best/val/f1_macro_mean"] == pytest.approx(
        sum(f.data.metrics["best/val/f1_macro"] for f in folds) / 3)
    # what selects: the fold mean at cv/epochs, over all three folds' histories
    client = mlflow.MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    curves = [list(dict(sorted((m.step, m.value) for m in client.get_metric_history(
        f.info.run_id, "val/f1_macro"))).values()) for f in folds]  # one value per epoch
    mean = np.mean([c[:min(map(len, curves))] for c in curves], axis=0)
    assert parent.data.metrics["best/val/f1_macro"] == pytest.approx(mean.max())


@pytest.mark.slow  # two processes of a 3-fold cross-validation (~45 s)
def test_a_cross_validation_stopped_in_its_second_fold_resumes_with_the_printed_command(
        tmp_path: Path) -> None:
    args, outputs, run_dir, first = _stopped_cv(tmp_path, "sigterm")
    printed = resume_command(first)
    assert f"hydra.run.dir={run_dir}" in printed and "resume=true" in printed  # the CV's
    before = _cv_runs(outputs)
    # another configuration would mix two experiments' folds: refused before any work
    code, refused = finish(start_job([*printed, "trainer.max_epochs=3"], outputs,
                                     tmp_path / "refused.log"), tmp_path / "refused.log")
    assert code == 2 and "trainer.max_epochs (2 -> 3)" in refused, refused[-2000:]
    resumed = start_job(printed, outputs, tmp_path / "b.log")
    code, second = finish(resumed, tmp_path / "b.log")
    assert code == 0, second[-3000:]
    assert "Traceback" not in second, second[-3000:]
    _check_resumed_cv(outputs, run_dir, before, second)


@pytest.mark.slow  # a Slurm-requeued cross-validation (~1 min)
def test_a_requeued_cross_validation_continues_its_parent_run(tmp_path: Path) -> None:
    env = fake_slurm(tmp_path)
    args, outputs, run_dir, _ = _stopped_cv(
        tmp_path, "slurm", env, (f"+callbacks.stop.requeue_log={tmp_path / 'scontrol.log'}",))
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    before = _cv_runs(outputs)
    rerun = start_job(args, outputs, tmp_path / "b.log", {**env, "SLURM_RESTART_COUNT": "1"})
    code, second = finish(rerun, tmp_path / "b.log")
    assert code == 0, second[-3000:]
    _check_resumed_cv(outputs, run_dir, before, second)


@pytest.mark.slow  # three training processes (~70 s)
def test_a_resumed_run_keeps_the_learning_rate_schedule_and_the_epoch_metrics(
        small_csv: Path, tmp_path: Path) -> None:
    """A cosine schedule over 3 epochs, stopped by SIGTERM inside epoch 2: the resumed run
    steps its schedule at that epoch's end as the uninterrupted one does, and every epoch's
    training and validation metrics and the test metrics come out the same."""
    common = ["data=beats_csv", f"data.train_file={small_csv}", "data.batch_size=16",
              "trainer=cpu", "trainer.deterministic=true", "trainer.max_epochs=3",
              "scheduler=cosine", "report.bootstrap_rounds=50",
              "report.attribution_per_group=1"]
    histories = {}
    for name, extra in (("reference", []), ("stopped", [
            "+callbacks.stop._target_=tests.pause.StopOnce", "+callbacks.stop.how=sigterm",
            f"+callbacks.stop.marker={tmp_path / 'stop.marker'}", "+callbacks.stop.batch=2"])):
        outputs, run_dir = tmp_path / name, tmp_path / name / "run"
        args = [*common, *extra, f"hydra.run.dir={run_dir}"]
        code, log = finish(start_job(args, outputs, tmp_path / f"{name}.log"),
                           tmp_path / f"{name}.log")
        if name == "stopped":
            assert code == 143, log[-3000:]
            code, log = finish(start_job(resume_command(log), outputs, tmp_path / "b.log"),
                               tmp_path / "b.log")
        assert code == 0, log[-3000:]
        [run] = all_runs(outputs)
        client = mlflow.MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
        histories[name] = {
            key: [round(m.value, 7) for m in client.get_metric_history(run.info.run_id, key)]
            for key in ("lr-AdamW", "train/loss", "train/acc", "val/loss", "val/f1_macro")}
        histories[name]["test"] = _test_metrics(outputs)
    assert len(histories["reference"]["lr-AdamW"]) == 3
    assert histories["stopped"] == histories["reference"]


@pytest.mark.slow  # three training processes each (~50 s)
@pytest.mark.parametrize("case", ["early stopping decided", "while testing"])
def test_a_stop_right_after_early_stopping_or_inside_the_test_resumes_to_the_same_end(
        case: str, small_csv: Path, tmp_path: Path) -> None:
    """SIGTERM at the end of the epoch where early stopping decided to stop (the decision
    is kept in the checkpoint: no extra epoch after the resume), or during the test of the
    best checkpoint (last.ckpt keeps the fit's end; the resume tests again): the same
    epochs and test metrics as the uninterrupted run."""
    common = ["data=beats_csv", f"data.train_file={small_csv}", "data.batch_size=16",
              "data.eval_batch_size=8", "trainer=cpu", "trainer.deterministic=true",
              "trainer.max_epochs=4", "optimizer.lr=1e-12",
              "callbacks.early_stopping.patience=0", "report.bootstrap_rounds=50",
              "report.attribution_per_group=1"]
    stop = ["+callbacks.stop._target_=tests.pause.StopOnce",
            f"+callbacks.stop.marker={tmp_path / 'stop.marker'}",
            "+callbacks.stop.how=" + ("boundary" if case == "early stopping decided"
                                      else "test")]
    if case == "while testing":  # a best checkpoint (the highest loss: epoch 1) other than
        # the last, so that last.ckpt overwritten with the tested weights would show
        common += ["optimizer.lr=1e-3", "callbacks.early_stopping.patience=10",
                   "monitor.metric=val/loss", "monitor.mode=max"]
    results, last = {}, {}
    for name, extra in (("reference", []), ("stopped", stop)):
        outputs, run_dir = tmp_path / name, tmp_path / name / "run"
        args = [*common, *extra, f"hydra.run.dir={run_dir}"]
        code, log = finish(start_job(args, outputs, tmp_path / f"{name}.log"),
                           tmp_path / f"{name}.log")
        if name == "stopped":
            assert code == 143 and "Traceback" not in log, log[-3000:]
            [stopped] = all_runs(outputs)
            assert stopped.info.status == "KILLED"
            last[name] = torch.load(run_dir / "checkpoints" / "last.ckpt",
                                    weights_only=False)["state_dict"]
            code, log = finish(start_job(resume_command(log), outputs, tmp_path / "b.log"),
                               tmp_path / "b.log")
        else:
            last[name] = torch.load(run_dir / "checkpoints" / "last.ckpt",
                                    weights_only=False)["state_dict"]
        assert code == 0, log[-3000:]
        [run] = all_runs(outputs)
        assert run.info.status == "FINISHED"
        client = mlflow.MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
        results[name] = ({m.step for m in client.get_metric_history(run.info.run_id,
                                                                       "val/loss")},
                         _test_metrics(outputs))
    if case == "early stopping decided":  # it ended the run after epoch 2 of 4
        assert len(results["reference"][0]) == 2
    assert results["stopped"] == results["reference"]
    # the stopped run's last.ckpt holds the end of its fit, as the uninterrupted one's
    assert all(torch.equal(last["stopped"][k], v) for k, v in last["reference"].items())
