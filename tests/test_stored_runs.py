"""Runs stored by an older version keep evaluating and predicting after modules move.

The fixtures (tests/fixtures/stored_runs/<date>/, made by scripts/stored_run_fixture.py from
the code of that date) hold each run's `config.yaml` and its checkpoint's metadata: the
`_target_` paths and checkpoint keys of that version. The weights are not stored; the test
fills the stored tensor names and shapes with seeded random values, which is enough to show
that the old run's config, data and network still load and score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import get_object
from omegaconf import OmegaConf
from PIL import Image

from ecg_experiments.models.checkpoint import load_trained_model
from ecg_experiments.tasks.evaluate import evaluate
from ecg_experiments.tasks.predict import predict
from scripts.stored_run_fixture import from_json, replaced, write_images
from tests.conftest import compose_config, shared_path

FIXTURES = Path(__file__).parent / "fixtures" / "stored_runs"
STORED = sorted(p for p in FIXTURES.glob("*/*") if (p / "config.yaml").is_file())


def _restore(stored: Path, run: Path) -> Path:
    """The stored run laid out in `run` as that version wrote it: config.yaml and a
    checkpoint (stored metadata, seeded weights of the stored shapes)."""
    places = {"__SHARED__": str(shared_path()), "__RUN__": str(run)}  # the fixture's marks
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(replaced((stored / "config.yaml").read_text(), places))
    skeleton = from_json(json.loads((stored / "checkpoint.json").read_text()))
    checkpoint = replaced(skeleton, places)
    generator = torch.Generator().manual_seed(0)
    checkpoint["state_dict"] = {name: torch.randn(shape, generator=generator) * 0.05
                                for name, shape in skeleton["state_dict"].items()}
    path = run / "checkpoints" / "epoch_000.ckpt"
    path.parent.mkdir()
    torch.save(checkpoint, path)
    if stored.name == "image":
        write_images(run / "images")
    return path


def test_fixtures_hold_a_beat_run_and_an_image_run() -> None:
    assert {p.name for p in STORED} >= {"signal", "image"}


@pytest.mark.parametrize("stored", STORED, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_every_stored_target_still_resolves(stored: Path) -> None:
    config = OmegaConf.load(stored / "config.yaml")
    targets = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            targets.extend([node["_target_"]] if "_target_" in node else [])
            for value in node.values():
                walk(value)

    walk(OmegaConf.to_container(config))
    assert any(t.startswith("ecg_experiments.data.") for t in targets)
    for target in targets:
        assert callable(get_object(target)), target


@pytest.mark.parametrize("stored", STORED, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_a_stored_run_evaluates_and_predicts(stored: Path, tmp_path: Path) -> None:
    checkpoint = _restore(stored, tmp_path / "run")
    model = load_trained_model(checkpoint)
    assert model.class_names and model.input.kind == ("image" if stored.name == "image"
                                                      else "signal")
    # evaluate on the stored run's own data and split
    cfg = compose_config(tmp_path / "eval", [f"ckpt={checkpoint}", "logger=none",
                                             "report.bootstrap_rounds=20",
                                             "report.noise_snr_db=null",
                                             "report.attribution_per_group=1"], "eval")
    metrics = evaluate(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert (Path(cfg.paths.run_dir) / "report" / "predictions.csv").is_file()
    # predict new input: a raw record, or an image the run never saw
    if stored.name == "image":
        new = tmp_path / "new"
        new.mkdir()
        Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(new / "new.png")
        given, expected_rows = new, 1
    else:
        given, expected_rows = shared_path("mitdb", "100.hea"), 2273  # record 100's beats
    cfg = compose_config(tmp_path / "predict", [f"ckpt={checkpoint}", f"input={given}",
                                                "strip.duration=0"], "predict")
    frame = predict(cfg)
    assert len(frame) == expected_rows
    assert set(frame["predicted"]) <= set(model.class_names)


def test_a_driver_started_before_the_move_resumes_with_its_old_targets(tmp_path: Path) -> None:
    """A cross-validation or seed repeat saved its configuration with the old `_target_`
    paths; resumed by today's code (new paths, same classes) it is the same configuration,
    while a target naming another class still differs."""
    from ecg_experiments.errors import ConfigError
    from ecg_experiments.runs.fits import keep_configuration

    saved = OmegaConf.load(STORED[-1].parent / "signal" / "config.yaml")
    assert saved.data._target_ == "ecg_experiments.data.mitbih.PhysionetDataModule"
    keep_configuration(saved, tmp_path, resuming=False)
    now = OmegaConf.create(OmegaConf.to_container(saved))
    now.data._target_ = "ecg_experiments.data.physionet_datamodule.PhysionetDataModule"
    keep_configuration(now, tmp_path, resuming=True)
    now.data._target_ = "ecg_experiments.data.beats.BeatsDataModule"
    with pytest.raises(ConfigError, match="data._target_"):
        keep_configuration(now, tmp_path, resuming=True)
