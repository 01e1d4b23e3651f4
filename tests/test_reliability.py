"""Determinism, crash and resume, Ctrl-C, and concurrent runs against one SQLite store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from ecg_experiments.config import PROJECT_ROOT
from ecg_experiments.tasks.train import train
from tests.conftest import FAST, all_runs
from tests.conftest import test_metrics_of_the_run as _test_metrics

# five real records (11k beats, every class), short epochs, deterministic on CPU
MITBIH = ["data.records=[100,105,119,208,217]", "data.download=false", "trainer=cpu",
          "trainer.deterministic=true", "trainer.max_epochs=3", "trainer.limit_train_batches=60",
          "data.batch_size=32", "report.log_model=false", "report.bootstrap_rounds=0",
          "report.attribution_per_group=0", "callbacks.early_stopping.patience=10"]


def _default_sigint() -> None:
    """In the child: Ctrl-C's default action, also when the suite was started from a shell
    that ignores SIGINT for background jobs (Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], outputs: Path, run_dir: Path, mitdb: Path,
           own_group: bool = False) -> subprocess.Popen:
    """The train command in a child process (in a process group of its own with
    `own_group`, as a scheduler's job is)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ecg_experiments.train", *args, f"paths.mitdb_dir={mitdb}",
         f"paths.outputs_dir={outputs}", f"hydra.run.dir={run_dir}"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{outputs / 'mlflow.db'}",
             "PYTHONWARNINGS": "ignore"},
        preexec_fn=_default_sigint, start_new_session=own_group,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"training ended before {path} appeared: {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def _finish(process: subprocess.Popen, timeout: float = 400) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_same_seed_same_metrics(compose_train, small_csv) -> None:
    args = ["data=beats_csv", f"data.train_file={small_csv}", *FAST, "logger=none",
            "trainer.deterministic=true", "report.bootstrap_rounds=100"]
    first = train(compose_train(args))
    second = train(compose_train(args))
    assert first == second
    assert len(first) > 26


@pytest.mark.slow  # ~60 s: three training processes; `make test-all` runs it
def test_killed_run_resumes_in_the_same_mlflow_run_with_the_same_result(tmp_path) -> None:
    from tests.conftest import shared_path

    mitdb = shared_path("mitdb")
    # the uninterrupted reference runs beside the one that will be killed (deterministic on
    # CPU: sharing the cores changes the timing, not the numbers)
    reference = _start(MITBIH, tmp_path / "ref", tmp_path / "ref" / "run", mitdb)
    outputs, run_dir = tmp_path / "crash", tmp_path / "crash" / "run"
    victim = _start(MITBIH, outputs, run_dir, mitdb)
    _wait_for(run_dir / "checkpoints" / "last.ckpt", victim)  # epoch 0 is done
    time.sleep(0.5)  # well inside epoch 1
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    [crashed] = all_runs(outputs)
    assert crashed.info.status == "RUNNING"  # nobody could close it
    code, _, err = _finish(reference)
    assert code == 0, err[-3000:]

    resumed = _start([*MITBIH, "resume=true"], outputs, run_dir, mitdb)
    code, _, err = _finish(resumed)
    assert code == 0, err[-3000:]
    [run] = all_runs(outputs)  # no duplicate run
    assert run.info.run_id == crashed.info.run_id and run.info.status == "FINISHED"
    client = mlflow.MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    epochs = [m.value for m in client.get_metric_history(run.info.run_id, "epoch")
              if m.key == "epoch"]
    val_steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert len(set(val_steps)) == 3 and val_steps == sorted(val_steps), (val_steps, epochs)
    assert _test_metrics(outputs) == _test_metrics(tmp_path / "ref")


def test_ctrl_c_marks_the_run_killed_keeps_the_checkpoint_and_says_how_to_resume(
    tmp_path,
) -> None:
    """Ctrl-C stops wherever Python is (mid-step, unlike SIGTERM): the last checkpoint
    written before it (epoch 1's) stays as it was, to resume from (tests/test_recovery.py
    resumes every kind of stop)."""
    import torch

    from tests.conftest import shared_path

    outputs, run_dir = tmp_path / "out", tmp_path / "out" / "run"
    args = [*MITBIH, "+callbacks.pause._target_=tests.pause.PauseEachBatch",
            "+callbacks.pause.seconds=0.02"]
    process = _start(args, outputs, run_dir, shared_path("mitdb"))
    last = run_dir / "checkpoints" / "last.ckpt"
    _wait_for(last, process)
    time.sleep(0.5)  # inside epoch 2
    before = torch.load(last, weights_only=False, map_location="cpu")
    process.send_signal(signal.SIGINT)
    code, _, err = _finish(process, timeout=120)
    assert code != 0, err[-2000:]
    [run] = all_runs(outputs)
    assert run.info.status == "KILLED"
    after = torch.load(last, weights_only=False, map_location="cpu")
    assert (after["epoch"], after["global_step"]) == (before["epoch"], before["global_step"])
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert f"hydra.run.dir={run_dir} resume=true" in err
    assert "Traceback" not in err


def test_resume_without_a_checkpoint_is_a_clear_error(compose_train, small_csv) -> None:
    from ecg_experiments.errors import ConfigError

    cfg = compose_train(["data=beats_csv", f"data.train_file={small_csv}", "resume=true"])
    with pytest.raises(ConfigError, match=r"resume=true: no checkpoint at .*last\.ckpt"):
        train(cfg)


@pytest.mark.slow
def test_four_trainings_at_once_against_one_sqlite_store(small_csv, tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "ecg_experiments.train", "data=beats_csv",
             f"data.train_file={small_csv}", *FAST, f"seed={i}",
             f"paths.outputs_dir={tmp_path / str(i)}"],
            cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": store},
        )
        for i in range(4)
    ]
    errors = [p.communicate(timeout=600)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, [e[-1500:] for e in errors]
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert not any("database is locked" in e for e in errors)


@pytest.mark.slow  # ~90 s: three training processes with loader workers
def test_sigterm_to_the_whole_job_saves_the_step_and_resume_finishes_the_same_run(
        tmp_path) -> None:
    """What `timeout`, Slurm or a preempting scheduler do: SIGTERM to every process of the
    job, loader workers included, in the middle of an epoch."""
    import torch

    from tests.conftest import shared_path

    mitdb = shared_path("mitdb")
    args = [*MITBIH, "data.num_workers=2",
            "+callbacks.pause._target_=tests.pause.PauseEachBatch",
            "+callbacks.pause.seconds=0.03"]
    reference = _start(args, tmp_path / "ref", tmp_path / "ref" / "run", mitdb)
    outputs, run_dir = tmp_path / "job", tmp_path / "job" / "run"
    job = _start(args, outputs, run_dir, mitdb, own_group=True)
    _wait_for(run_dir / "checkpoints" / "last.ckpt", job)  # epoch 1 of 3 is done
    time.sleep(0.8)  # about batch 20 of 60 of epoch 2
    os.killpg(job.pid, signal.SIGTERM)
    code, out, err = _finish(job, timeout=120)
    assert code == 143, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    assert f"hydra.run.dir={run_dir} resume=true" in err
    [stopped] = all_runs(outputs)
    assert stopped.info.status == "KILLED"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False,
                       map_location="cpu")
    assert saved["epoch"] == 1 and 60 < saved["global_step"] < 120  # inside the 2nd epoch
    code, _, err = _finish(reference)
    assert code == 0, err[-3000:]

    resumed = _start([*args, "resume=true"], outputs, run_dir, mitdb)
    code, _, err = _finish(resumed)
    assert code == 0, err[-3000:]
    [run] = all_runs(outputs)
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert _test_metrics(outputs) == _test_metrics(tmp_path / "ref")


def test_time_checkpoints_are_written_inside_an_epoch_with_the_loaders_position(
        compose_train, small_csv, tmp_path) -> None:
    """`callbacks.time_checkpoint` writes last.ckpt every train_time_interval inside an epoch,
    with the training loader's position (what a resume continues from)."""
    import json

    record = tmp_path / "checkpoints.jsonl"
    args = ["data=beats_csv", f"data.train_file={small_csv}", *FAST, "logger=none",
            "data.batch_size=16", "trainer.max_epochs=1",
            "callbacks.time_checkpoint.train_time_interval.minutes=0",
            "+callbacks.time_checkpoint.train_time_interval.seconds=0.25",
            "+callbacks.pause._target_=tests.pause.PauseEachBatch", "+callbacks.pause.seconds=0.1",
            "+callbacks.record._target_=tests.pause.RecordCheckpoints",
            f"+callbacks.record.path={record}"]
    cfg = compose_train(args)
    train(cfg)
    saves = [json.loads(line) for line in record.read_text().splitlines()]
    inside = [s for s in saves if s["drawn"] < s["batches"]]
    assert len(inside) >= 2, saves  # ~9 batches of 0.1 s, a save every 0.25 s
    assert all(s["loader_state"] for s in inside), saves
    assert (Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt").is_file()
    assert not list((Path(cfg.paths.run_dir) / "checkpoints").glob("last-v*.ckpt"))


@pytest.mark.slow  # ~60 s: a training process, stopped as Slurm would, and its requeued rerun
def test_slurm_warning_requeue_and_rerun_continue_the_same_run(small_csv, tmp_path) -> None:
    """Slurm's time-limit warning (SIGUSR1, `#SBATCH --signal=USR1@120`) makes Lightning
    save `hpc_ckpt_1.ckpt` and call `scontrol requeue <job>`; Slurm then sends SIGTERM to the
    job, and later starts the same command again with SLURM_RESTART_COUNT=1: it finds its run
    folder, resumes from the newest checkpoint and finishes the same MLflow run. `scontrol`
    is a script that records its arguments (there is no Slurm here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(0o755)
    outputs = tmp_path / "out"
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "ecg", "SLURM_NTASKS": "1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "localhost", "PATH": f"{bin_dir}:{os.environ['PATH']}",
             "MLFLOW_TRACKING_URI": f"sqlite:///{outputs / 'mlflow.db'}",
             "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, "-m", "ecg_experiments.train", "data=beats_csv",
            f"data.train_file={small_csv}", "data.batch_size=16", "data.num_workers=2",
            "trainer=cpu", "trainer.max_epochs=3", "report.log_model=false",
            "report.bootstrap_rounds=0", "report.attribution_per_group=0",
            "+callbacks.pause._target_=tests.pause.PauseEachBatch",
            "+callbacks.pause.seconds=0.2", f"paths.outputs_dir={outputs}"]

    def start(**extra: str) -> subprocess.Popen:
        return subprocess.Popen(args, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **slurm, **extra}, start_new_session=True)

    job = start()
    deadline = time.monotonic() + 300
    while not list(outputs.glob("runs/slurm-4242-*/checkpoints/last.ckpt")):
        assert job.poll() is None, job.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [run_dir] = outputs.glob("runs/slurm-4242-*")  # the job's folder, found again on requeue
    time.sleep(0.5)  # inside the second epoch
    os.killpg(job.pid, signal.SIGUSR1)  # the warning, to every process of the job
    while not (tmp_path / "scontrol.log").exists():
        assert job.poll() is None, job.stderr.read()[-3000:]
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGTERM)  # the requeue stops the job
    code, _, err = _finish(job, timeout=120)
    assert code == 143, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert (run_dir / "hpc_ckpt_1.ckpt").is_file()
    [stopped] = all_runs(outputs)
    assert stopped.info.status == "KILLED"

    rerun = start(SLURM_RESTART_COUNT="1")
    code, out, err = _finish(rerun)
    assert code == 0, err[-3000:]
    assert "Slurm requeued this job (restart 1): resuming from" in out + err
    assert list(outputs.glob("runs/*")) == [run_dir]
    [run] = all_runs(outputs)
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    client = mlflow.MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    val_steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert len(set(val_steps)) == 3 and val_steps == sorted(val_steps)


def test_run_folders_are_named_by_time_or_by_slurm_job_and_command(monkeypatch) -> None:
    import re

    from ecg_experiments.config import run_name

    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}", run_name("model=cnn1d"))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    first = run_name("model=cnn1d")
    assert re.fullmatch(r"slurm-4242-[0-9a-f]{8}", first)
    assert run_name("model=cnn1d") == first != run_name("model=cnn2d")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_name("model=cnn1d").startswith("slurm-4240_3-")


def test_training_order_is_seeded_by_epoch_and_shared_out_under_ddp(small_csv) -> None:
    """The training sampler gets its epoch (epochs processed) when the loader is made, which
    Lightning does before it calls set_epoch: a resumed run draws that epoch's order. Under
    DDP each process draws its own disjoint share (Lightning keeps a DistributedSampler)."""
    from types import SimpleNamespace

    from ecg_experiments.data.beats import BeatsDataModule

    def order(world: int, rank: int, processed: int) -> list[int]:
        dm = BeatsDataModule(str(small_csv), batch_size=8)
        dm.setup("fit")
        dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, fit_loop=SimpleNamespace(
            epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=processed))))
        return list(dm.train_dataloader().sampler)

    epoch_two = order(1, 0, 2)
    assert epoch_two == order(1, 0, 2) != order(1, 0, 0)
    shares = [order(2, rank, 2) for rank in (0, 1)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(epoch_two)
