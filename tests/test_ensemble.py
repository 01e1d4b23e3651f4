"""Ensembles are models (issue 28): the five seeds of a `repeat.seeds` run become one model
that the ensemble command scores and logs, and that evaluate, predict (a raw record),
explain, export and also_test read like any model; its outputs are the mean of the members'
class probabilities, matched by class name; members that disagree on classes or input are
refused; a repeated cross-validation's seeds give the ensemble's CV estimate beside the mean
single model's, from the same checkpoints and the same validation records."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ecg_experiments.errors import ConfigError
from ecg_experiments.evaluation.seen import SeenSamples
from ecg_experiments.inputs import InputSpec
from ecg_experiments.models.checkpoint import TrainedModel, init_from, load_trained_model
from ecg_experiments.models.ensemble import EnsembleNet, all_seen, build_ensemble, check_members
from ecg_experiments.tasks.ensemble import ensemble
from ecg_experiments.tasks.evaluate import evaluate
from ecg_experiments.tasks.explain import explain
from ecg_experiments.tasks.export import export_model
from ecg_experiments.tasks.predict import load_inputs, predict, predict_probabilities
from ecg_experiments.tasks.train import train
from tests.conftest import assert_export_matches_checkpoint, compose_config, shared_path

# two records' beats (kachuee recipe, random split), one short epoch per seed; every report
# part a user gets stays on
DATA = ["data=mitbih", "data.records=[100,106]", "data.download=false", "data.batch_size=32"]
REPORT = ["report.bootstrap_rounds=50", "report.attribution_per_group=1",
          "report.attribution_steps=4"]
FAST = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", *REPORT]


def _store(root: Path) -> list[str]:
    return [f"paths.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"paths.data_dir={root / 'prepared'}"]


def _runs(root: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Five seeds of cnn1d on mitdb records 100 and 106, each logging its model (not tested)."""
    root = tmp_path_factory.mktemp("seeds")
    mitdb = shared_path("mitdb")
    args = [*DATA, f"paths.mitdb_dir={mitdb}", *_store(root), *FAST]
    # test=false: the members' own test scores are not this file's subject (train's is)
    cfg = compose_config(root / "train", [*args, "repeat.seeds=5", "test=false"])
    train(cfg)
    runs = _runs(root)
    [parent] = [r for r in runs if "repeat.seed" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 5
    return {"root": root, "args": args, "parent": parent.info.run_id, "mitdb": mitdb,
            "folder": Path(cfg.paths.run_dir), "children": [r.info.run_id for r in children]}


def _compose(seeds: dict, name: str, overrides: list[str], config: str):
    return compose_config(seeds["root"] / name, [*_store(seeds["root"]), *overrides], config)


def test_five_seeds_are_one_model_through_every_step(seeds: dict) -> None:
    root = seeds["root"]
    # the parent run of repeat.seeds names its five children's models; test=true scores the
    # ensemble's own test split and also_test data (record 101: never trained on)
    metrics = ensemble(_compose(seeds, "ens", [
        f"members=[{seeds['parent']}]", "test=true", *REPORT,
        "+also_test.other.records=[101]"], "ensemble"))
    [run] = [r for r in _runs(root) if r.data.tags.get("ensemble.size")]
    assert run.info.status == "FINISHED" and run.data.tags["ensemble.size"] == "5"
    assert run.data.tags["model.checkpoint"] == "checkpoints/ensemble.ckpt"
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert 0.0 < metrics["also_test/other/acc"] <= 1.0
    ckpt = root / "ens" / "run" / "checkpoints" / "ensemble.ckpt"
    model = load_trained_model(ckpt)
    members = [load_trained_model(p) for p in model.config.ensemble.checkpoints]
    assert len(members) == 5 and model.class_names == list("NSVFQ")

    # its output is the mean of the members' probabilities (softmax of it gives it back)
    x = torch.rand(6, *model.input.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mean = torch.stack([m.net(x).softmax(-1) for m in members]).mean(0)
        assert torch.allclose(model.net(x).softmax(-1), mean, atol=1e-6)
        assert not torch.allclose(members[0].net(x), members[1].net(x))  # seeds differ

    # evaluate by run id: the same test numbers as the ensemble command's
    again = evaluate(_compose(seeds, "eval", [f"run_id={run.info.run_id}", "logger=none",
                                              *REPORT], "eval"))
    assert again["test/acc"] == pytest.approx(metrics["test/acc"])
    assert again["test/f1_macro"] == pytest.approx(metrics["test/f1_macro"])

    # predict a raw record the members never saw: the mean of the members' predictions
    record = seeds["mitdb"] / "101.hea"
    frame = predict(_compose(seeds, "p", [f"ckpt={ckpt}", f"input={record}"], "predict"))
    probs = frame[[f"prob_{c}" for c in model.class_names]].to_numpy()
    beats, _ = load_inputs(str(record), members[0])  # as predict reads them for a member
    expected = np.mean([predict_probabilities(m.net, beats, 512) for m in members], axis=0)
    assert len(frame) > 1500
    np.testing.assert_allclose(probs, expected, atol=1e-5)

    # explain: attributions of the ensemble's own decision
    table = explain(_compose(seeds, "why", [f"ckpt={ckpt}", f"input={record}", "limit=2",
                                            "steps=8"], "explain"))
    assert list(table["predicted"]) == list(frame["predicted"][:2])
    assert all(Path(f).stat().st_size > 5000 for f in table["figure"])

    # export: one ONNX graph holding the five members and their mean, parity-checked
    path, _ = export_model(_compose(seeds, "x", [f"ckpt={ckpt}", "format=onnx",
                                                 "parity_inputs=8"], "export"))
    assert_export_matches_checkpoint(path, "onnx", ckpt)

    # init_from takes one network, not five
    with pytest.raises(ConfigError, match="is an ensemble of 5 models"):
        init_from(members[0].net, str(ckpt), f"sqlite:///{root / 'mlflow.db'}")


def test_members_by_folder_or_file_are_the_same_ensemble(seeds: dict) -> None:
    by_folder = ensemble(_compose(seeds, "f", [f"members=[{seeds['folder']}]", "logger=none"],
                                  "ensemble"))
    assert by_folder == {}  # built and saved, not scored (test=false)
    files = sorted(seeds["folder"].glob("seed*/checkpoints/epoch_*.ckpt"))
    assert len(files) == 5
    ensemble(_compose(seeds, "c", [f"members=[{','.join(map(str, files))}]", "logger=none"],
                      "ensemble"))
    a = load_trained_model(seeds["root"] / "f" / "run" / "checkpoints" / "ensemble.ckpt")
    b = load_trained_model(seeds["root"] / "c" / "run" / "checkpoints" / "ensemble.ckpt")
    x = torch.rand(4, *a.input.shape)
    with torch.no_grad():
        assert torch.allclose(a.net(x), b.net(x))
    # the ensemble has seen what every member saw: its own training data stays refused
    with pytest.raises(ConfigError, match="were seen by the model"):
        evaluate(_compose(seeds, "e", [f"ckpt={a.checkpoint}", "holdout=all",
                                       "logger=none"], "eval"))
    # the same model named twice, by its run id (a download) and its file: refused by its
    # weights
    with pytest.raises(ConfigError, match="the same model more than once"):
        ensemble(_compose(seeds, "twice", [f"members=[{seeds['children'][0]},{files[0]}]",
                                           "logger=none"], "ensemble"))
    # an ensemble is no member: its models would count unevenly
    with pytest.raises(ConfigError, match="is itself an ensemble"):
        ensemble(_compose(seeds, "nested", [f"members=[{a.checkpoint},{files[0]}]",
                                            "logger=none"], "ensemble"))

    # a member whose outputs are in another class order (Q, F, V, S, N) is matched by name
    # through saving, loading and predict: the same ensemble as before
    reordered = _reverse_classes(files[0], seeds["root"] / "reversed.ckpt")
    # (second: the ensemble's classes are in its first member's order)
    others = ",".join(map(str, files[2:]))
    ensemble(_compose(seeds, "r", [f"members=[{files[1]},{reordered},{others}]",
                                   "logger=none"], "ensemble"))
    r = load_trained_model(seeds["root"] / "r" / "run" / "checkpoints" / "ensemble.ckpt")
    assert r.net.permuted and r.class_names == a.class_names
    with torch.no_grad():
        assert torch.allclose(r.net(x), a.net(x), atol=1e-6)
    record = seeds["mitdb"] / "101.hea"
    frame = predict(_compose(seeds, "pr", [f"ckpt={r.checkpoint}", f"input={record}",
                                           "strip.duration=0"], "predict"))
    beats, _ = load_inputs(str(record), a)
    np.testing.assert_allclose(frame[[f"prob_{c}" for c in a.class_names]],
                               predict_probabilities(a.net, beats, 512), atol=1e-5)


def _reverse_classes(source: Path, target: Path) -> Path:
    """A copy of a checkpoint whose output rows and class names are in reverse order: the
    same model, its classes in another order."""
    from ecg_experiments.models.heads import output_prefixes

    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    net = load_trained_model(source).net
    prefixes = tuple(f"net.{p}" for p in output_prefixes(net))
    for key, value in checkpoint["state_dict"].items():
        if key.startswith(prefixes):
            checkpoint["state_dict"][key] = value.flip(0)
    names = list(reversed(checkpoint["ecg_class_names"]))
    checkpoint["ecg_class_names"] = names
    checkpoint["ecg_input"]["class_names"] = names
    checkpoint["ecg_config"]["data"]["class_names"] = names
    torch.save(checkpoint, target)
    return target


class _Fixed(nn.Module):
    """A 'network' giving fixed logits per class, whatever the input."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def _member(names: str, logits: list[float], length: int = 187,
            data: dict | None = None) -> TrainedModel:
    spec = InputSpec("signal", tuple(names), signal_length=length, rate=125.0)
    config = OmegaConf.create({"data": data}) if data is not None else None
    return TrainedModel(_Fixed(logits), config, list(names), Path(f"{names}-{length}.ckpt"),
                        [], spec)


def test_members_meet_by_class_name_not_position() -> None:
    a = _member("NSV", [2.0, 0.0, -1.0])
    b = _member("VNS", [3.0, 1.0, 0.0])  # V, N, S: another order
    index = check_members([a, b])
    assert index == [[0, 1, 2], [1, 2, 0]]
    net = EnsembleNet([a.net, b.net], index)
    got = net(torch.zeros(1, 1, 187)).softmax(-1)[0]
    pa = torch.tensor([2.0, 0.0, -1.0]).softmax(-1)  # N, S, V
    pb = torch.tensor([3.0, 1.0, 0.0]).softmax(-1)[[1, 2, 0]]  # V,N,S -> N,S,V
    assert torch.allclose(got, (pa + pb) / 2)
    with pytest.raises(ConfigError, match=r"classes \[N, S, F\].*same classes"):
        check_members([a, _member("NSF", [0.0, 0.0, 0.0])])
    with pytest.raises(ConfigError, match="differ in signal_length"):
        check_members([a, _member("NSV", [0.0, 0.0, 0.0], length=252)])
    with pytest.raises(ConfigError, match="the same model more than once"):
        check_members([a, _member("NSV", [2.0, 0.0, -1.0])])  # another file, same weights
    # the same length and rate, but beats cut otherwise (relative to the record's median
    # beat): one input cannot feed both
    plain = {"recipe": {"_target_": "centered", "subtract_template": False}, "split": "random"}
    relative = {"recipe": {"_target_": "centered", "subtract_template": True}, "split": "records"}
    assert check_members([_member("NSV", [0.0] * 3, data=plain),
                          _member("NSV", [1.0] * 3, data={**plain, "split": "records"})])
    with pytest.raises(ConfigError, match=r"inputs made otherwise .*data.recipe differ"):
        check_members([_member("NSV", [0.0] * 3, data=plain),
                       _member("NSV", [1.0] * 3, data=relative)])
    # a lead given to one member only: the other took the database's default lead
    with pytest.raises(ConfigError, match=r"data.leads differ"):
        check_members([_member("NSV", [0.0] * 3, data=plain),
                       _member("NSV", [1.0] * 3, data={**plain, "leads": ["V1"]})])
    with pytest.raises(ConfigError, match="at least two members"):
        build_ensemble([a], ["a"], Path("e.ckpt"))


def test_the_ensemble_has_seen_what_any_member_saw() -> None:
    frame = pd.DataFrame({"sample_id": ["mitdb/100:1", "mitdb/100:2", "mitdb/101:1"],
                          "record": ["mitdb/100", "mitdb/100", "mitdb/101"]})
    a, b = _member("NSV", [0.0] * 3), _member("NSV", [1.0] * 3)
    a.seen = SeenSamples.from_frame(frame.iloc[:2])
    b.seen = SeenSamples.from_frame(frame.iloc[2:])
    seen = all_seen([a, b])
    assert seen.seen(frame).tolist() == [True, True, True]
    assert seen.records == {"mitdb/100": 2, "mitdb/101": 1}
    b.seen = None  # a member that records nothing would hide its training data
    with pytest.raises(ConfigError, match="record no seen samples"):
        all_seen([a, b])


def test_a_repeated_cross_validation_gives_the_ensembles_cv_estimate(
        tmp_path: Path) -> None:
    mitdb = shared_path("mitdb")
    args = ["data=mitbih", "data.records=[100,106,119,208]", "data.split=records",
            "data.download=false", "data.batch_size=32", f"paths.mitdb_dir={mitdb}",
            *_store(tmp_path), *FAST, "trainer.max_epochs=2", "report.log_model=false",
            "cv.folds=2", "repeat.seeds=2"]
    cfg = compose_config(tmp_path / "cv", args)
    train(cfg)
    folder = Path(cfg.paths.run_dir)
    with pytest.raises(ConfigError, match="never on a test split"):
        ensemble(compose_config(tmp_path / "t", [*_store(tmp_path), f"members=[{folder}]",
                                                 "test=true"], "ensemble"))
    # one folder, named without brackets
    summary = ensemble(compose_config(tmp_path / "ens", [*_store(tmp_path),
                                                         f"members={folder}"], "ensemble"))
    table = pd.read_csv(tmp_path / "ens" / "run" / "cv_ensemble.csv")
    # fold by fold: each seed's fold model, then their ensemble
    assert list(table["model"]) == ["seed42/fold0", "seed43/fold0", "ensemble",
                                    "seed42/fold1", "seed43/fold1", "ensemble"]
    # a member's score is its fold fit's own validation score at its kept checkpoint (the
    # better of two epochs): the same model on the same validation records
    fold_runs = [r for r in _runs(tmp_path) if r.data.params.get("data.fold") in ("0", "1")]
    assert len(fold_runs) == 4
    logged = {(r.data.params["seed"], r.data.params["data.fold"]):
              r.data.metrics["best/val/f1_macro"] for r in fold_runs}
    members = table[table["model"] != "ensemble"]
    scores = {(m.split("/")[0].removeprefix("seed"), m.split("fold")[1]): v
              for m, v in zip(members["model"], members["val/f1_macro"], strict=True)}
    assert scores == pytest.approx(logged, abs=1e-6)
    # the summary: the ensemble's fold mean, the mean single model (seed means) and the gain
    ens = table[table["model"] == "ensemble"]["val/f1_macro"]
    assert summary["cv_ensemble/val/f1_macro_mean"] == pytest.approx(ens.mean())
    per_seed = members.assign(seed=members["model"].str.split("/").str[0]).groupby("seed")[
        "val/f1_macro"].mean()
    assert summary["cv_members/val/f1_macro_mean"] == pytest.approx(per_seed.mean())
    assert summary["cv_ensemble/gain/val/f1_macro"] == pytest.approx(
        ens.mean() - per_seed.mean())
    [logged] = [r for r in _runs(tmp_path) if r.data.tags.get("ensemble.cross_validation")]
    assert logged.data.metrics["cv_ensemble/val/f1_macro_mean"] == pytest.approx(ens.mean())
    # the data changed since the fits (here: a fold's saved split): refused, not scored on
    # samples a member may have trained on
    saved = folder / "seed43" / "fold0" / "split.csv"
    split = pd.read_csv(saved)
    split.loc[split.index[split["split"] == "val"][:1], "split"] = "train"
    split.to_csv(saved, index=False)
    with pytest.raises(ConfigError, match="are not those"):
        ensemble(compose_config(tmp_path / "changed", [*_store(tmp_path),
                                                       f"members={folder}"], "ensemble"))


def test_grad_cam_of_an_image_ensemble_reads_every_members_feature_map() -> None:
    from ecg_experiments.evaluation.attribution import grad_cam
    from ecg_experiments.models.cnn2d import SmallCNN2d

    torch.manual_seed(0)
    members = [SmallCNN2d(3, 3, 32).eval(), SmallCNN2d(3, 3, 32).eval()]
    net = EnsembleNet(members).eval()
    x = torch.rand(2, 3, 32, 32)
    targets = torch.tensor([0, 2])
    maps = grad_cam(net, x, targets)
    assert maps.shape == (2, 32, 32) and maps.max() == pytest.approx(1.0)
    # the sum of the ensemble output's Grad-CAM at each member's own last feature map
    from captum.attr import LayerAttribution, LayerGradCam

    from ecg_experiments.evaluation.attribution import feature_map_layer

    total = 0
    for member in members:
        layer = feature_map_layer(member, x)
        cam = LayerGradCam(net, layer).attribute(x.clone().requires_grad_(True),
                                                 target=targets.tolist(), relu_attributions=True)
        total = total + LayerAttribution.interpolate(cam, (32, 32), "bilinear").detach()[:, 0]
    total = total.numpy() / total.numpy().reshape(2, -1).max(axis=1)[:, None, None]
    np.testing.assert_allclose(maps, total, atol=1e-5)
    # ... which is not the last member's map alone (where a plain forward hook looks)
    only_last = LayerGradCam(net, feature_map_layer(net, x)).attribute(
        x.clone().requires_grad_(True), target=targets.tolist(), relu_attributions=True)
    only_last = LayerAttribution.interpolate(only_last, (32, 32), "bilinear").detach()[:, 0]
    only_last = only_last.numpy() / only_last.numpy().reshape(2, -1).max(axis=1)[:, None, None]
    assert not np.allclose(maps, only_last, atol=1e-3)


def test_beats_drawn_as_images_are_drawn_as_the_model_was_trained() -> None:
    # a scalogram model evaluated on data=beat_images: the images' size matches, their
    # drawing would not; evaluate draws them with the model's renderer
    from ecg_experiments.tasks.evaluate import draw_as_trained

    renderer = {"_target_": "ecg_experiments.data.render.ScalogramRenderer", "wavelet": "morl"}
    trained = _member("NSV", [0.0] * 3, data={"source": {"renderer": renderer}})
    data = OmegaConf.create({"source": {"renderer": {
        "_target_": "ecg_experiments.data.render.WaveformRenderer"}, "on_the_fly": True}})
    draw_as_trained(data, trained)
    assert OmegaConf.to_container(data.source.renderer) == renderer
    assert data.source.on_the_fly is True
