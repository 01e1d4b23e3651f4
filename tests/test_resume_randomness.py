"""A run stopped by SIGTERM inside an epoch and resumed with the printed command ends as an
uninterrupted run of the same seed, to the last digit, with every random generator that
shapes training in use: signal augmentation (noise, scaling, shifts drawn from the augment
generator) and a class-balancing sampler (a weighted draw with replacement per epoch).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import all_runs, shared_path
from tests.test_recovery import _histories, finish, resume_command, start_job

ARGS = ["data=mitbih", "data.records=[100,101,103,105,106]", "data.download=false",
        "data/augment=noise", "data.balance=sampler", "data.batch_size=32",
        "trainer=cpu", "trainer.deterministic=true", "trainer.max_epochs=2",
        "trainer.limit_train_batches=8", "callbacks.early_stopping.patience=10",
        "report.bootstrap_rounds=50", "report.attribution_per_group=1",
        "report.attribution_steps=4"]
EPOCH_LINE = re.compile(r"epoch (\d+)/2  train loss ([\d.]+)  val loss ([\d.]+)")


def _args(prepared: Path, run_dir: Path) -> list[str]:
    return [*ARGS, f"paths.mitdb_dir={shared_path('mitdb')}", f"paths.data_dir={prepared}",
            f"hydra.run.dir={run_dir}"]


def _epoch_lines(log: str) -> dict[int, tuple[str, str]]:
    """{epoch: (train loss, val loss)} as the run's epoch lines print them."""
    return {int(e): (train, val) for e, train, val in EPOCH_LINE.findall(log)}


@pytest.mark.slow  # three training processes (~1 min alone on 2 cores, more when shared)
def test_a_resumed_run_with_augmentation_and_a_balancing_sampler_equals_an_uninterrupted_one(
        tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    whole = tmp_path / "whole"
    code, log = finish(start_job(_args(prepared, whole / "run"), whole, whole / "run.log"),
                       whole / "run.log")
    assert code == 0, log[-3000:]
    expected_lines = _epoch_lines(log)
    assert sorted(expected_lines) == [1, 2], log[-3000:]
    expected = _histories(whole)

    outputs, marker = tmp_path / "out", tmp_path / "stopped"
    args = [*_args(prepared, outputs / "run"), "+callbacks.stop._target_=tests.pause.StopOnce",
            "+callbacks.stop.how=sigterm", f"+callbacks.stop.marker={marker}",
            "+callbacks.stop.epoch=1", "+callbacks.stop.batch=3"]  # inside epoch 2 of 2
    code, first = finish(start_job(args, outputs, tmp_path / "a.log"), tmp_path / "a.log")
    assert code == 143 and marker.is_file(), first[-3000:]
    assert "SIGTERM: stopped after batch 3 of epoch 2" in first, first[-3000:]
    code, second = finish(start_job(resume_command(first), outputs, tmp_path / "b.log"),
                          tmp_path / "b.log")
    assert code == 0, second[-3000:]
    assert "Traceback" not in second, second[-3000:]
    [run] = all_runs(outputs)
    assert run.info.status == "FINISHED"
    # every epoch's figures as printed and as logged, to the last digit
    assert {**_epoch_lines(first), **_epoch_lines(second)} == expected_lines
    assert _histories(outputs) == expected
