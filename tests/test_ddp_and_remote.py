"""Two-process DDP training on CPU, and tracking to a real `mlflow server` over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from ecg_experiments.config import PROJECT_ROOT
from ecg_experiments.errors import ConfigError
from ecg_experiments.tasks.train import train
from tests.conftest import FAST, all_runs, run_cli


@pytest.mark.slow  # ~60 s of two DDP processes; `make test-all` runs it
def test_ddp_two_cpu_processes_log_once_and_match_one_process(small_csv, tmp_path) -> None:
    # a learning rate so small that the weights stay put: both runs then test the same
    # model on the same 30 test beats (15 per process), so metrics must agree to float
    # rounding; the tolerance allows one beat of difference (the sampler pads odd splits)
    common = ["data=beats_csv", f"data.train_file={small_csv}", *FAST, "optimizer.lr=1e-12",
              "report.bootstrap_rounds=50"]
    run_cli([*common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
             "data.batch_size=16"], tmp_path / "ddp", timeout=500)
    run_cli([*common, "trainer=cpu", "data.batch_size=32"], tmp_path / "single")
    [ddp] = all_runs(tmp_path / "ddp")  # one run, not one per process
    [single] = all_runs(tmp_path / "single")
    assert ddp.info.status == "FINISHED"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'ddp' / 'mlflow.db'}")
    history = client.get_metric_history(ddp.info.run_id, "val/loss")
    assert [m.step for m in history] == sorted({m.step for m in history})  # each epoch once
    assert len(history) == 2
    tolerance = 1 / 30 + 1e-6  # one padded duplicate among 30 test beats
    for key in ("test/acc", "test/f1_macro", "test/recall_N"):
        assert abs(ddp.data.metrics[key] - single.data.metrics[key]) <= tolerance, key
    assert abs(ddp.data.metrics["test/loss"] - single.data.metrics["test/loss"]) < 0.05
    # the report on rank 0 covers the whole test split gathered from both processes
    import pandas as pd

    table = pd.read_csv(next((tmp_path / "ddp" / "runs").glob("*/*/report/per_class.csv")))
    assert table.set_index("class").loc["macro avg", "support"] == 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()}")
            time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGTERM)
        pytest.fail("mlflow server did not answer within 90 s")
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    log.close()


@pytest.mark.slow  # ~45 s: an `mlflow server` process and a training process
def test_training_against_a_real_tracking_server(small_csv, tmp_path, mlflow_server) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ecg_experiments.train", "data=beats_csv",
         f"data.train_file={small_csv}", *FAST, f"paths.outputs_dir={tmp_path / 'out'}",
         f"logger.tracking_uri={mlflow_server}", "report.log_model=true"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(mlflow_server)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert "test/f1_macro" in run.data.metrics and "data.train_file" in run.data.params
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "report", "checkpoints"} <= artifacts
    assert not (tmp_path / "out" / "mlflow.db").exists()  # nothing went to the local store


def test_unreachable_server_fails_fast_before_any_work(compose_train, small_csv, tmp_path):
    port = _free_port()  # nothing listens there
    cfg = compose_train(["data=beats_csv", f"data.train_file={small_csv}",
                         f"logger.tracking_uri=http://127.0.0.1:{port}"])
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"no MLflow server answers at http://127.0.0.1:{port}"):
        train(cfg)
    assert time.monotonic() - start < 10
    assert not (tmp_path / "run").exists()  # no run dir, no checkpoint
