"""Everyday use (issue 17): progress that reads in a log, a CLI that answers from the config
before the heavy libraries load, and third-party noise hidden in one place."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import RichProgressBar

from ecg_experiments.config import CONFIG_DIR, DATA_INPUT_KINDS, PROJECT_ROOT
from ecg_experiments.epoch_lines import EpochLines, progress_bar
from ecg_experiments.errors import ConfigError
from ecg_experiments.progress import StageProgress, track
from tests.conftest import SHARED_DATA as SHARED
from tests.conftest import all_runs

HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "torchvision", "timm", "mlflow",
         "sklearn", "scipy", "optuna", "matplotlib", "pandas", "captum", "wfdb")
EPOCH_LINE = re.compile(r"epoch (\d+)/4  train loss [\d.]+  val loss [\d.]+  val acc [\d.]+  "
                        r"val f1_macro [\d.]+  [\d.]+ s/epoch(.*)")


def _train(args: list[str], tmp: Path, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    """The train command as a user runs it with its output going to a file (not a terminal),
    with no PYTHONWARNINGS of the test environment."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONWARNINGS", "ECG_ALL_WARNINGS", "TTY_COMPATIBLE",
                                "FORCE_COLOR")}
    environment.update({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "ecg_experiments.train", *args, f"paths.outputs_dir={tmp}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=400, env=environment)


def test_a_run_into_a_log_writes_a_line_per_epoch_and_no_third_party_warnings(
        small_csv: Path, tmp_path: Path) -> None:
    # a learning rate too small to improve anything and patience 0: early stopping ends
    # the run after its second of four epochs, and that epoch's line says so
    result = _train(["data=beats_csv", f"data.train_file={small_csv}", "trainer.max_epochs=4",
                     "optimizer.lr=1e-12", "callbacks.early_stopping.patience=0",
                     "report.bootstrap_rounds=50", "report.attribution_per_group=2",
                     # the estimate after 2 batches, with the CPU note for any length
                     "callbacks.time_estimate.after_batches=2",
                     "callbacks.time_estimate.many_hours=0"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    [estimate] = re.findall(r"time estimate: ([\d.]+) s/batch x (\d+) batches = .* for 4 epochs"
                            r".*On this CPU.*trainer=gpu", output)
    assert float(estimate[0]) > 0 and int(estimate[1]) >= 1
    [run] = all_runs(tmp_path)
    # the same measurement (the line rounds to 0.01 s)
    assert float(run.data.tags["estimate.s_per_batch"]) == pytest.approx(float(estimate[0]),
                                                                        abs=0.006)
    lines = list(EPOCH_LINE.finditer(output))
    assert [int(m.group(1)) for m in lines] == [1, 2], output[-3000:]
    assert re.fullmatch(r"  ~\d+ s left at most", lines[0].group(2))  # time left
    assert lines[1].group(2) == "  stopped early"
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2
    assert re.search(r"test: \d+ batches in \d+ s", output)
    assert "Test metrics per class" in result.stdout  # the final table stays
    assert run.info.status == "FINISHED" and "test/f1_macro" in run.data.metrics
    assert list((tmp_path / "runs").glob("*/*/checkpoints/last.ckpt"))  # runs/DATE/TIME
    # no third-party warning: no line pointing into an installed package, no tip
    third_party = [line for line in output.splitlines()
                   if "site-packages" in line or "Warning:" in line or "Tip:" in line]
    assert third_party == []
    # no Rich bar frame dumped into the file (`Epoch 1/1 ━━━ 30/30 0:00:02 • 10.41it/s`)
    assert not re.search(r"it/s|(Epoch \d+/\d+|Testing) +━", output)


@pytest.mark.slow  # two CLI processes (30 s); a training into a log is checked above
def test_evaluate_and_also_test_write_lines_into_a_log(tmp_path: Path) -> None:
    """The scoring after training on another database (also_test) and a later evaluate, each
    with its output in a file: a line per test pass, no progress bar frames."""
    mitdb, svdb = SHARED / "mitdb", SHARED / "svdb"
    if not (mitdb.is_dir() and svdb.is_dir()):
        pytest.skip(f"shared data not found at {SHARED}: set ECG_SHARED_DATA")
    trained = _train(["data.records=[100,119]", "data.download=false",
                      f"paths.mitdb_dir={mitdb}", "trainer.max_epochs=1",
                      "trainer.limit_train_batches=3", "report.bootstrap_rounds=50",
                      "report.attribution_per_group=1", "+also_test.svdb.database=svdb",
                      f"+also_test.svdb.dir={svdb}", "+also_test.svdb.records=[800]",
                      "+also_test.svdb.download=false"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    [run] = [r for r in all_runs(tmp_path) if "mlflow.parentRunId" not in r.data.tags]
    environment = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE",
                                                                    "FORCE_COLOR")}
    evaluated = subprocess.run(
        [sys.executable, "-m", "ecg_experiments.evaluate", f"run_id={run.info.run_id}",
         f"paths.outputs_dir={tmp_path}", "report.bootstrap_rounds=50"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=400,
        env={**environment, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    for output, passes in ((trained.stdout + trained.stderr, 2),
                           (evaluated.stdout + evaluated.stderr, 1)):
        assert len(re.findall(r"test: [\d,]+ batches in \d+ s", output)) == passes, output[-3000:]
        assert not re.search(r"it/s|Testing DataLoader|(Epoch \d+/\d+|Testing) +━", output)


@pytest.mark.slow  # a CLI process for the switch; the quiet default is checked above
def test_all_warnings_come_back_with_the_switch(small_csv: Path, tmp_path: Path) -> None:
    result = _train(["data=beats_csv", f"data.train_file={small_csv}", "trainer.fast_dev_run=1",
                     "report.log_model=false", "report.bootstrap_rounds=0",
                     "report.attribution_per_group=0"], tmp_path, {"ECG_ALL_WARNINGS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Tip:" in result.stdout + result.stderr


def test_config_only_commands_load_no_heavy_library(tmp_path: Path) -> None:
    """--cfg, --help, a mistyped option and a model/data mismatch answer without importing
    torch, Lightning, MLflow and the rest (what makes them answer in about a second,
    scripts/benchmark.py --cli-only)."""
    cases = {
        ("--cfg", "job"): (0, "seed: 42"),
        ("--help",): (0, "model: alexnet, cnn1d, cnn2d"),
        ("model=alexnett",): (1, "Could not find 'model/alexnett'"),
        ("model=alexnet",): (2, "error: model=alexnet expects image input but data=mitbih"),
    }
    for args, (code, expected) in cases.items():
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "ecg_experiments.train", *args,
             f"paths.outputs_dir={tmp_path}"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == code, (args, result.stderr[-2000:])
        assert expected in result.stdout + result.stderr, args
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:")}
        assert imported, "python -X importtime printed nothing"
        assert sorted(imported & set(HEAVY)) == [], args


def test_help_lists_every_option_of_the_config_folders_and_the_composed_config() -> None:
    result = subprocess.run([sys.executable, "-m", "ecg_experiments.evaluate", "--help",
                             "holdout=all"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    models = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
    assert f"model: {', '.join(models)}" in result.stdout
    assert "hydra/" not in result.stdout.split("== Config ==")[0]
    assert "holdout: all" in result.stdout  # the overrides apply to the config shown
    assert result.stdout.startswith("Evaluate a saved model")


def test_the_fast_kind_table_agrees_with_every_data_class() -> None:
    for target, kind in DATA_INPUT_KINDS.items():
        assert get_class(target).input_kind == kind, target
    for path in (CONFIG_DIR / "data").glob("*.yaml"):
        target = OmegaConf.load(path).get("_target_")
        assert target is None or target in DATA_INPUT_KINDS, path.name


def test_the_progress_style_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    assert isinstance(progress_bar("auto"), RichProgressBar)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    assert isinstance(progress_bar("auto"), EpochLines)
    assert isinstance(progress_bar("rich"), RichProgressBar)
    with pytest.raises(ConfigError, match="callbacks.progress_bar.style='bars'"):
        progress_bar("bars")


def test_stage_progress_lines_give_counts_rate_and_total(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    caplog.set_level(logging.INFO, logger="ecg_experiments.progress")
    with StageProgress("rendering", 300, "images", interval_s=0, terminal=False) as progress:
        for _ in range(3):
            progress.advance(100)
    lines = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"rendering: 100/300 images \(33%\), [\d.]+ images/s, ~\d+ s left",
                        lines[0])
    assert re.fullmatch(r"rendering: 300 images in \d+ s \([\d.]+ images/s\)", lines[-1])
    caplog.clear()
    assert list(track(range(4), "preparing mitdb", 4, "records")) == [0, 1, 2, 3]
    assert re.match(r"preparing mitdb: 4 records in", caplog.records[-1].getMessage())
