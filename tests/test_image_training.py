"""The image path end to end: beats rendered from the raw MIT-BIH records, image CNNs trained
with Lightning and tracked in a real MLflow store, predictions on image folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ecg_experiments.config import validate_train_config
from ecg_experiments.errors import ConfigError
from ecg_experiments.tasks.predict import predict
from ecg_experiments.tasks.train import train
from tests.conftest import FAST, all_runs, compose_config, run_cli, shared_path

IMAGE_MODELS = ["alexnet", "inception_v3", "cnn2d", "timm"]
IMAGE_DATA = ["spectrogram", "scalogram", "beat_images", "image_folder"]


@pytest.mark.parametrize("model", IMAGE_MODELS)
@pytest.mark.parametrize("data", IMAGE_DATA)
def test_image_configs_take_size_and_normalisation_from_the_model(compose_train, model,
                                                                   data) -> None:
    cfg = compose_train([f"model={model}", f"data={data}", "data.root=/somewhere"])
    validate_train_config(cfg)
    assert cfg.data.image_size == cfg.model.input_size == cfg.model.net.input_size
    assert list(cfg.data.mean) == list(cfg.model.mean)
    expected = {"alexnet": 227, "inception_v3": 299, "cnn2d": 64, "timm": 224}[model]
    assert cfg.data.image_size == expected
    if data != "image_folder":
        assert cfg.data.source.image_size == expected
        assert cfg.model.net.num_classes == 5


@pytest.mark.parametrize("model,data,kind", [
    ("alexnet", "beats_csv", "expects image input but data=beats_csv provides signal"),
    ("cnn1d", "spectrogram", "expects signal input but data=spectrogram provides image"),
    ("cnn2d", "physionet", "expects image input but data=physionet provides signal"),
    ("timm", "mitbih", "expects image input but data=mitbih provides signal"),
])
def test_signal_and_image_parts_do_not_mix(compose_train, model, data, kind) -> None:
    cfg = compose_train([f"model={model}", f"data={data}", "++data.train_file=x.csv"])
    with pytest.raises(ConfigError, match=f"model={model} {kind} input"):
        validate_train_config(cfg)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory):
    """cnn2d on 64x64 beat line images drawn from the shared raw records, 4 epochs."""
    mitdb = shared_path("mitdb")
    tmp = tmp_path_factory.mktemp("image_run")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = compose_config(tmp, [
            "model=cnn2d", "data=beat_images", f"paths.mitdb_dir={mitdb}",
            "data.source.beats.download=false", "data.max_per_class=60", "data.num_workers=0",
            "trainer.max_epochs=4", "report.bootstrap_rounds=100",
        ])
        metrics = train(cfg)
    run = all_runs(tmp)[0]
    return {"tmp": tmp, "uri": uri, "metrics": metrics, "run": run, "cfg": cfg}


def test_beat_image_run_is_tracked_with_its_file_list(image_run) -> None:
    run, metrics = image_run["run"], image_run["metrics"]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.net.name"] == "cnn2d"
    assert run.data.params["data.source.renderer._target_"].endswith("WaveformRenderer")
    assert int(run.data.params["model.params_trainable"]) == int(
        run.data.params["model.params_total"]) > 0
    assert run.data.tags["choice.data"] == "beat_images"
    assert run.data.tags["choice.data.source.renderer"] == "waveform"
    assert len(run.data.tags["data.images.sha256"]) == 64 and run.data.tags["data.images"] == "300"
    assert metrics["test/acc"] == run.data.metrics["test/acc"]
    assert metrics["test/acc"] > 0.35  # five balanced classes: chance is 0.2
    split = pd.read_csv(image_run["tmp"] / "run" / "split.csv")
    assert split.groupby("split").size().to_dict() == {"test": 45, "train": 210, "val": 45}
    assert split["path"].str.match(r"[NSVFQ]/mitdb-\d{3}_\d{7}\.png").all()
    assert split["record"].str.match(r"mitdb-\d{3}$").all()  # data.group_regex's capture
    client = mlflow.MlflowClient(image_run["uri"])
    assert "split.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_predict_on_an_image_folder_matches_the_test_metrics(image_run, tmp_path) -> None:
    """The run's images were drawn on the fly; its test images written as PNG files by the
    files path and copied into class folders: predict on them agrees with the test metrics
    (the same pixels, preprocessed as testing did)."""
    from hydra.utils import instantiate

    tmp = image_run["tmp"]
    assert image_run["cfg"].data.source.on_the_fly
    assert not (tmp / "outputs" / "data" / "images").exists()  # nothing written
    split = pd.read_csv(tmp / "run" / "split.csv")
    root = instantiate(image_run["cfg"].data.source, on_the_fly=False).ensure()
    for path in split.loc[split["split"] == "test", "path"]:
        target = tmp_path / "images" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / path, target)
    checkpoint = next((tmp / "run" / "checkpoints").glob("epoch_*.ckpt"))
    cfg = compose_config(tmp_path, [f"ckpt={checkpoint}", f"input={tmp_path / 'images'}",
                                    f"output={tmp_path / 'predictions.csv'}"], "predict")
    frame = predict(cfg)
    assert len(frame) == 45 and set(frame["true"]) == set("NSVFQ")
    agreement = float((frame["true"] == frame["predicted"]).mean())
    assert agreement == pytest.approx(image_run["metrics"]["test/acc"], abs=1e-6)
    probs = frame[[f"prob_{c}" for c in "NSVFQ"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    single = compose_config(tmp_path, [f"ckpt={checkpoint}", f"input={root / split['path'][0]}",
                                       f"output={tmp_path / 'one.csv'}"], "predict")
    assert len(predict(single)) == 1


def test_timm_backbone_frozen_on_an_image_folder(compose_train, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for k, name in enumerate(["low", "high"]):
        for i in range(20):  # two classes that differ in brightness
            level = 60 + 120 * k
            pixels = np.clip(rng.normal(level, 20, (40, 40)), 0, 255).astype(np.uint8)
            folder = tmp_path / "images" / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    cfg = compose_train([
        "model=timm", "model.name=resnet18", "model.input_size=32", "data=image_folder",
        f"data.root={tmp_path / 'images'}", "data.num_workers=0", "freeze=backbone",
        *FAST,
    ])
    metrics = train(cfg)
    run = all_runs(tmp_path)[0]
    assert run.info.status == "FINISHED"
    assert int(run.data.params["model.params_trainable"]) == 512 * 2 + 2
    assert run.data.params["data.class_names"] == "['high', 'low']"  # found in the folder
    assert "test/acc" in metrics


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["model=alexnet", "data=spectrogram"],
    ["model=inception_v3", "data=spectrogram"],
    ["model=cnn2d", "data=beat_images"],
    ["model=timm", "model.name=resnet18", "data=scalogram"],
])
def test_issue_commands_run_end_to_end_from_raw_records(args, tmp_path: Path) -> None:
    mitdb = shared_path("mitdb")
    run_cli([*args, "trainer.max_epochs=1", "data.max_per_class=40", f"paths.mitdb_dir={mitdb}",
             "report.bootstrap_rounds=100"], tmp_path, timeout=600)
    runs = all_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert {"test/acc", "test/f1_macro", "test/recall_S"} <= set(runs[0].data.metrics)


def test_evaluate_and_explore_draw_the_images_on_the_fly_again(image_run, monkeypatch,
                                                               tmp_path) -> None:
    """`evaluate run_id=` rebuilds the run's data (drawn on the fly) and reproduces its test
    metrics; `explore` shows drawn example images; neither writes image files."""
    from ecg_experiments.tasks.evaluate import evaluate
    from ecg_experiments.tasks.explore import explore

    tmp = image_run["tmp"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", image_run["uri"])
    cfg = compose_config(tmp / "eval", [f"run_id={image_run['run'].info.run_id}",
                                        "report.bootstrap_rounds=0"], "eval")
    metrics = evaluate(cfg)
    for key in ("test/acc", "test/f1_macro", "test/recall_V"):
        assert metrics[key] == image_run["metrics"][key], key
    mitdb = shared_path("mitdb")
    explored = explore(compose_config(tmp_path, [
        "data=beat_images", f"paths.mitdb_dir={mitdb}", "data.source.beats.download=false",
        "data.max_per_class=10"], "explore"))
    picture = np.asarray(Image.open(explored["example_images"]))
    assert picture.std() > 0
    assert (tmp_path / "outputs" / "data").is_dir()  # the prepared beats
    assert not (tmp_path / "outputs" / "data" / "images").exists()
