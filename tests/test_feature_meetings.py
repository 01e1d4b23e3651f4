"""Where two features meet: each test here failed on main before the fix it names (issue 14).
The contract matrix (test_contract.py) covers the rest: export of image and R-R models,
evaluate with an explicit image data option, and image classes met by name."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchmetrics.classification import MulticlassF1Score

from ecg_experiments.data.augment import SignalAugment
from ecg_experiments.data.beats import read_beats_csv
from ecg_experiments.data.images import ImageDataModule
from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.evaluation.report import bootstrap_ci
from ecg_experiments.evaluation.robustness import noise_robustness
from ecg_experiments.inputs import RemapLabels, match_classes, on_signal
from ecg_experiments.models.backbones import build_backbone
from ecg_experiments.models.freezing import FreezeAllButLastN, FreezeBackbone, GradualUnfreezing
from ecg_experiments.sweepers.parent_run import MlflowSweepCallback, parent_run_file
from ecg_experiments.tasks.train import train
from tests.conftest import compose_config, shared_path


# 1. classes meet by name
def test_same_classes_in_another_order_are_matched_by_name() -> None:
    model, folders = ["N", "S", "V", "F", "Q"], ["F", "N", "Q", "S", "V"]  # sorted folders
    lookup = match_classes(model, folders)
    assert [model[k] for k in lookup] == folders
    remap = RemapLabels(lookup)
    x, y = remap([(torch.zeros(1), torch.tensor(k)) for k in range(5)])
    assert [model[k] for k in y.tolist()] == folders  # folder label 0 (F) -> model's F
    assert match_classes(model, ["N", "V"]) == [0, 2]  # a subset of the model's classes


def test_different_class_names_stop_with_both_lists_unless_mapped() -> None:
    with pytest.raises(ConfigError, match=r"abnormal.*Model classes: \[N, S, V, F, Q\].*"
                                          r"data classes: \[normal, abnormal\]"):
        match_classes(list("NSVFQ"), ["normal", "abnormal"], data_option="data=beats_csv")
    assert match_classes(list("NSVFQ"), ["normal", "abnormal"],
                         {"normal": "N", "abnormal": "V"}) == [0, 2]
    with pytest.raises(ConfigError, match="class_map names X"):
        match_classes(list("NSV"), ["N"], {"X": "N"})


# 3. random bytes, a BOM and UTF-16 in a CSV
def test_csv_of_random_bytes_is_a_data_error_and_boms_are_not_headers(tmp_path: Path) -> None:
    noise = tmp_path / "noise.csv"
    noise.write_bytes(np.random.default_rng(0).bytes(20_000))
    with pytest.raises(DataError, match="noise.csv: not a text CSV"):
        read_beats_csv(noise)
    sample = shared_path("kachuee_samples", "mitbih_train_sample.csv")
    x, y = read_beats_csv(sample)
    text = sample.read_text()
    for name, data in (("bom.csv", b"\xef\xbb\xbf" + text.encode()),
                       ("utf16.csv", text.encode("utf-16"))):
        (tmp_path / name).write_bytes(data)
        x2, y2 = read_beats_csv(tmp_path / name)
        assert len(x2) == 500  # the first row is data, not a header
        np.testing.assert_array_equal(x2, x)
        np.testing.assert_array_equal(y2, y)


# 4. R-R features are not signal
def test_augmentation_never_touches_the_appended_features() -> None:
    beats = torch.randn(64, 1, 90)
    features = torch.rand(64, 7) + 0.5
    x = torch.cat([beats, features.unsqueeze(1)], dim=-1)
    augment = SignalAugment(gaussian_p=1.0, gaussian_snr_db=[0, 0], shift_p=1.0, max_shift=5,
                            scale_p=1.0, seed=0)
    out = on_signal(x, 7, augment)
    assert torch.equal(out[:, 0, -7:], features)
    assert not torch.allclose(out[..., :90], beats)


def test_robustness_adds_noise_to_the_beat_only() -> None:
    """A model that reads only the R-R features is not hurt by noise on the beat."""

    class ReadsFeatures(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            early = x[:, 0, -1] < 1.0
            return torch.stack([(~early).float(), early.float()], dim=1) * 10

    rng = torch.Generator().manual_seed(0)
    beats = torch.randn(200, 1, 100, generator=rng)
    ratio = torch.where(torch.arange(200) % 2 == 0, 0.7, 1.3)
    x = torch.cat([beats, ratio.view(-1, 1, 1)], dim=-1)
    labels = (ratio < 1.0).long()
    table = noise_robustness(ReadsFeatures(), x, labels, ["N", "S"], [24, 6, 0, -6],
                             num_features=1)
    assert table["acc"].tolist() == [1.0] * 5
    without = noise_robustness(ReadsFeatures(), x, labels, ["N", "S"], [-6], num_features=0)
    assert without["acc"].iloc[1] < 1.0  # treated as signal, the feature was corrupted


# 5 and 6. one "best": the best epoch of any validation metric, everywhere
def test_train_returns_and_logs_the_best_epoch_of_the_optimised_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    csv = shared_path("kachuee_samples", "mitbih_train_sample.csv")
    cfg = compose_config(tmp_path, [
        "data=beats_csv", f"data.train_file={csv}", "trainer.max_epochs=3",
        "report.log_model=false", "report.bootstrap_rounds=0", "report.attribution_per_group=0",
        "optimized_metric=val/loss", "optimized_mode=min", "optimizer.lr=0.03"])
    metrics = train(cfg)
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "val/loss")]
    f1s = [m.value for m in client.get_metric_history(run.info.run_id, "val/f1_macro")]
    assert len(losses) == 3
    assert metrics["val/loss"] == pytest.approx(min(losses))
    assert metrics["val/f1_macro"] == pytest.approx(max(f1s))
    assert run.data.metrics["best/val/loss"] == pytest.approx(min(losses))
    assert run.data.metrics["best/val/f1_macro"] == pytest.approx(max(f1s))


def test_an_unknown_optimised_metric_stops_before_training(tmp_path: Path,
                                                           monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    csv = shared_path("kachuee_samples", "mitbih_train_sample.csv")
    cfg = compose_config(tmp_path, ["data=beats_csv", f"data.train_file={csv}",
                                    "optimized_metric=val/f1"])
    with pytest.raises(ConfigError, match="optimized_metric='val/f1': not a validation metric"
                                          ".*val/f1_macro"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sweep_parent_names_the_child_with_the_best_epoch_not_the_last(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("sweep", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(experiment, run_name="sweep")
    parent_run_file(tmp_path).write_text(parent.info.run_id)
    children = {}
    # "early": its best epoch (0.9) came before early stopping, its last epoch scored 0.2
    for name, best, last in (("early", 0.9, 0.2), ("steady", 0.7, 0.7)):
        run = client.create_run(experiment, run_name=name,
                                tags={"mlflow.parentRunId": parent.info.run_id})
        client.log_metric(run.info.run_id, "best/val/f1_macro", best)
        client.log_metric(run.info.run_id, "val/f1_macro", last)
        client.set_terminated(run.info.run_id)
        children[name] = run.info.run_id
    config = OmegaConf.create({
        "logger": {"tracking_uri": uri}, "optimized_metric": "val/f1_macro",
        "optimized_mode": "max", "monitor": {"mode": "max"},
        "hydra": {"sweep": {"dir": str(tmp_path)}}})
    MlflowSweepCallback().on_multirun_end(config)
    done = client.get_run(parent.info.run_id)
    assert done.data.tags["sweep.best_run_id"] == children["early"]
    assert done.data.metrics["best/val/f1_macro"] == 0.9


# 7. duplicates across given splits
def test_copies_of_training_images_are_left_out_of_given_test_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 4)):
        for name in ("A", "B"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    copy = (tmp_path / "train" / "A" / "0.png").read_bytes()
    (tmp_path / "test" / "A" / "copy.png").write_bytes(copy)
    module = ImageDataModule(root=str(tmp_path), image_size=12, mean=[0.5] * 3, std=[0.5] * 3,
                             batch_size=4, seed=0)
    module.setup("fit")
    test_files = {str(p.relative_to(tmp_path)) for p in module.paths("test")}
    assert "test/A/copy.png" not in test_files and len(test_files) == 8
    assert module.fingerprint()["cross_split_duplicates_left_out"] == "1"


# 9. Inception v3's auxiliary head trains under every freezing policy
@pytest.mark.parametrize("policy", [FreezeBackbone(), FreezeAllButLastN(1),
                                    GradualUnfreezing()], ids=["backbone", "last_n", "gradual"])
def test_frozen_inception_keeps_its_auxiliary_head_trainable(policy) -> None:
    net = build_backbone("inception_v3", 3, input_size=299)
    policy.apply(net)
    assert all(p.requires_grad for p in net.AuxLogits.fc.parameters())
    assert all(p.requires_grad for p in net.fc.parameters())
    assert not net.Conv2d_1a_3x3.conv.weight.requires_grad


# 10. one macro-F1: a class in neither targets nor predictions does not count
def test_bootstrap_macro_f1_leaves_out_absent_classes_as_torchmetrics() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 1] * 20)
    y_pred = np.array([0, 0, 1, 1, 1, 1] * 20)
    live = float(MulticlassF1Score(3, average="macro")(torch.as_tensor(y_pred),
                                                      torch.as_tensor(y_true)))
    ci = bootstrap_ci(y_true, y_pred, ["N", "S", "V"], rounds=200, seed=0)
    low, high = ci["f1_macro"]
    assert low <= live <= high
    assert low > 0.7  # with class V counted as 0 the whole interval sat near 2/3 x 0.83


def test_a_folder_where_a_file_belongs_is_named(tmp_path: Path) -> None:
    from ecg_experiments.io import readable_file

    folder = tmp_path / "beats.csv"
    folder.mkdir()
    with pytest.raises(DataError, match="beats.csv: is a folder; expected a CSV"):
        readable_file(folder, "a CSV")


# issue 15: another database meets a trained model's recipe
def test_another_database_is_cut_with_the_recipe_the_model_was_trained_with(tmp_path) -> None:
    """`evaluate run_id=... data=physionet data.database=svdb`: the data option's default
    recipe (kachuee, 125 Hz) gives way to the model's (centered, 120 Hz, R-R features),
    and holdout=all evaluates every beat (split=all) instead of drawing a split."""
    from types import SimpleNamespace

    from ecg_experiments.inputs import InputSpec
    from ecg_experiments.tasks.evaluate import data_for_model

    trained = compose_config(tmp_path, ["data=mitbih", "data/recipe=centered",
                                        "data.recipe.rate=120", "data.rr_features=true",
                                        "model=resnet1d"])
    spec = InputSpec("signal", tuple("NSVFQ"), signal_length=84, rate=120.0,
                     features=("a",) * 7)
    model = SimpleNamespace(config=trained, input=spec)
    cfg = compose_config(tmp_path / "eval", ["run_id=x", "data=physionet",
                                             "data.database=svdb", "holdout=all"], "eval")
    data = data_for_model(cfg, model)
    assert data.recipe.rate == 120.0 and data.recipe._target_.endswith("CenteredRecipe")
    assert data.rr_features is True and data.split == "all" and data.database == "svdb"
    assert OmegaConf.to_container(data, resolve=True)["signal_length"] == 84


def test_beats_relative_to_their_record_are_never_read_from_a_csv(tmp_path: Path) -> None:
    """A model trained with data.recipe.subtract_template=true needs each beat's record (its
    median beat): a beats CSV is refused by predict and by evaluate, naming the option,
    instead of feeding it absolute beats silently."""
    from ecg_experiments.inputs import InputSpec
    from ecg_experiments.models.checkpoint import TrainedModel
    from ecg_experiments.tasks.evaluate import data_for_model
    from ecg_experiments.tasks.predict import load_inputs

    trained = compose_config(tmp_path, ["data=mitbih", "data/recipe=centered",
                                        "data.recipe.rate=120",
                                        "data.recipe.subtract_template=true",
                                        "model=resnet1d"])
    spec = InputSpec("signal", tuple("NSVFQ"), signal_length=84, rate=120.0)
    model = TrainedModel(net=torch.nn.Identity(), config=trained, class_names=list("NSVFQ"),
                         checkpoint=tmp_path / "x.ckpt", history=[], input=spec)
    csv = tmp_path / "beats.csv"
    np.savetxt(csv, np.zeros((3, 84)), delimiter=",")
    with pytest.raises(DataError, match=r"beats.csv: a beats CSV cannot feed this model: .*"
                                        r"subtract_template=true"):
        load_inputs(csv, model)
    cfg = compose_config(tmp_path / "eval", ["run_id=x", "data=beats_csv",
                                             f"data.train_file={csv}"], "eval")
    with pytest.raises(ConfigError, match=r"ready-cut beats, but .*subtract_template=true"):
        data_for_model(cfg, model)
    # the same model without the option reads the CSV
    plain = compose_config(tmp_path / "plain", ["data=mitbih", "data/recipe=centered",
                                                "data.recipe.rate=120", "model=resnet1d"])
    model.config = plain
    assert len(load_inputs(csv, model)[0]) == 3
