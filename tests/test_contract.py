"""The contract matrix: every model option, with a data option it accepts, on tiny real data,
through every step a trained model meets: train → evaluate (by MLflow run id, by checkpoint,
and on data given explicitly, image classes in another order) → predict → export (ONNX and
TorchScript, parity-checked) → init_from into a new run.

A new model or data option joins by adding one row to MODELS (the R-R rows read
`data=physionet` with two databases at once; `data=mitbih` is its preset). A signal model
with R-R features on two leads and cnn2d (bf16, channels-last) run in the default suite; the
other rows are `slow` (`make test-all`).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from ecg_experiments.data.beats import read_beats_csv, write_beats_csv
from ecg_experiments.data.render import WaveformRenderer, write_images
from ecg_experiments.errors import ConfigError, DataError
from ecg_experiments.models.checkpoint import checkpoint_from_run, load_trained_model
from ecg_experiments.tasks.evaluate import evaluate
from ecg_experiments.tasks.explain import explain
from ecg_experiments.tasks.export import export_model
from ecg_experiments.tasks.predict import predict
from ecg_experiments.tasks.train import train
from tests.conftest import assert_export_matches_checkpoint, compose_config, shared_path

STEPS = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
         "report.bootstrap_rounds=50", "report.attribution_per_group=4"]
IMAGE_ORDER = ["V", "N", "S"]  # the label order of training; the folders sort N, S, V


def _data(kind: str, inputs: dict[str, Path]) -> list[str]:
    """The data option of a kind; every step shares one prepared-data folder."""
    return [f"paths.data_dir={inputs['prepared']}", *_data_option(kind, inputs)]


def _data_option(kind: str, inputs: dict[str, Path]) -> list[str]:
    if kind == "csv":
        return ["data=beats_csv", f"data.train_file={inputs['csv']}", "data.batch_size=32"]
    if kind in ("rr", "rr2"):  # two databases at once (mitdb 360 Hz MLII, svdb 128 Hz
        # ECG1), with the R-R sequence, rhythm and template features (7 + 2 + 3 + 2 per beat),
        # beats relative to the record's median beat; rr2: two leads per beat (MLII and V1;
        # mitdb 100's V5 and svdb's ECG1 / ECG2 take their place where a record lacks them)
        leads = ["data.channels=[MLII,V1]"] if kind == "rr2" else []
        return ["data=physionet", *leads, "data/recipe=centered", "data.rr_features=true",
                "data.recipe.rr_context=1", "data.recipe.rhythm_beats=8",
                "data.recipe.template_features=true",
                "data.recipe.subtract_template=true",
                "data.databases=[mitdb,svdb]", "data.records=[100,106,svdb/801]",
                f"data.dirs.mitdb={inputs['mitdb']}", f"data.dirs.svdb={inputs['svdb']}",
                "data.download=false", "data.batch_size=32"]
    return ["data=image_folder", f"data.root={inputs['images']}", "data.num_workers=0",
            f"data.class_names=[{','.join(IMAGE_ORDER)}]", "data.batch_size=8",
            "data.eval_batch_size=16"]


# model option (+ overrides), data kind; `slow` marks the ImageNet-sized networks
MODELS = [
    # cnn1d's steps also run one by one in the default suite (test_report_and_tools.py)
    pytest.param("cnn1d", [], "csv", id="cnn1d", marks=pytest.mark.slow),
    pytest.param("resnet1d", ["model.net.widths=[16,32,64]"], "csv", id="resnet1d",
                 marks=pytest.mark.slow),
    pytest.param("inception1d", ["model.net.depth=3"], "csv", id="inception1d",
                 marks=pytest.mark.slow),
    pytest.param("resnet1d", ["model.net.widths=[16,32,64]"], "rr2", id="resnet1d+rr+2leads"),
    pytest.param("inception1d", ["model.net.depth=3"], "rr", id="inception1d+rr",
                 marks=pytest.mark.slow),
    # cnn2d in float32 is in `make test-all`; its bf16 + channels-last row below runs by default
    pytest.param("cnn2d", [], "image", id="cnn2d", marks=pytest.mark.slow),
    # mixed precision (bf16 on this CPU, float32 where it has none) and channels-last
    pytest.param("cnn2d", ["trainer.precision=bf16-mixed", "model.channels_last=true"],
                 "image", id="cnn2d+bf16+channels_last"),
    pytest.param("alexnet", [], "image", id="alexnet", marks=pytest.mark.slow),
    pytest.param("inception_v3", [], "image", id="inception_v3", marks=pytest.mark.slow),
    pytest.param("timm", ["model.name=test_efficientnet"], "image", id="timm",
                 marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real beats: 40 public rows per class as a CSV, and the first 12 N, S and V rows drawn
    as 64x64 line images in class folders."""
    root = tmp_path_factory.mktemp("contract")
    x, y = read_beats_csv(shared_path("kachuee_samples", "mitbih_train_sample.csv"))
    keep = np.concatenate([np.flatnonzero(y == k)[:40] for k in range(5)])
    write_beats_csv(root / "beats.csv", x[keep], y[keep])
    images = root / "images"
    for label, name in enumerate("NSV"):
        (images / name).mkdir(parents=True)
        rows = np.flatnonzero(y == label)[:12]
        write_images(WaveformRenderer(), x[rows], 125.0, 64,
                     [images / name / f"{100 + i}_{i:06d}.png" for i in range(len(rows))])
    return {"csv": root / "beats.csv", "images": images, "mitdb": shared_path("mitdb"),
            "svdb": shared_path("svdb"), "prepared": root / "prepared"}


def _store(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return mlflow.MlflowClient(uri)


def _runs(client: mlflow.MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              order_by=["attributes.start_time ASC"])


def _per_class(metrics: dict[str, float], names: list[str]) -> dict[str, float]:
    return {n: metrics[f"test/recall_{n}"] for n in names}


@pytest.mark.parametrize("model,model_args,kind", MODELS)
def test_every_step_a_trained_model_meets(model, model_args, kind, inputs, tmp_path,
                                          monkeypatch, capsys) -> None:
    client = _store(tmp_path, monkeypatch)
    data = _data(kind, inputs)
    args = [f"model={model}", *model_args, *data, *STEPS]
    # 1. train: a FINISHED run whose checkpoint carries the input description
    metrics = train(compose_config(tmp_path / "train", args))
    (run,) = _runs(client)
    assert run.info.status == "FINISHED" and "test/acc" in metrics
    ckpt = checkpoint_from_run(run.info.run_id, client.tracking_uri, str(tmp_path / "ckpt"))
    trained = load_trained_model(ckpt)
    spec = trained.input
    size = trained.config.model.get("input_size")
    expected_shape = {"csv": (1, 187), "rr": (1, 252 + 14), "rr2": (2, 252 + 14),
                      "image": (3, size, size)}[kind]
    assert spec.shape == expected_shape
    classes = list(IMAGE_ORDER) if kind == "image" else list("NSVFQ")
    assert trained.class_names == list(spec.class_names) == classes
    report = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "report")}
    # signal models: the mean attribution per class over the test beats (Captum)
    assert ("mean_attribution.png" in report) == (kind != "image")
    assert ("mean_attribution_V1.png" in report) == (kind == "rr2")  # a figure per lead

    # 2. evaluate by run id and by checkpoint: the same numbers as training's test
    evaluation = ["report.bootstrap_rounds=0", "logger=none"]
    by_run = evaluate(compose_config(tmp_path / "e1", [f"run_id={run.info.run_id}",
                                                       *evaluation], "eval"))
    by_ckpt = evaluate(compose_config(tmp_path / "e2", [f"ckpt={ckpt}", *evaluation], "eval"))
    for key in ("test/acc", "test/f1_macro"):
        assert by_run[key] == pytest.approx(metrics[key]) == pytest.approx(by_ckpt[key])

    # 3. evaluate on data given explicitly (composed against the stored model, not the
    # eval config's defaults); image folders without class_names sort their classes N, S, V
    # and are matched to the model's V, N, S by name
    explicit = [a for a in data if not a.startswith(("data.class_names", "data.rr_features"))]
    # every sample, training ones included: refused unless allowed (then marked)
    with pytest.raises(ConfigError, match="were seen by the model in training or validation"):
        evaluate(compose_config(tmp_path / "e3", [f"ckpt={ckpt}", "holdout=all",
                                                  *evaluation], "eval"))
    seen = [*evaluation, "allow_seen=true"]
    own = evaluate(compose_config(tmp_path / "e3", [f"ckpt={ckpt}", "holdout=all", *seen],
                                  "eval"))
    given = evaluate(compose_config(tmp_path / "e4", [f"ckpt={ckpt}", "holdout=all",
                                                      *explicit, *seen], "eval"))
    assert given["test/acc"] == pytest.approx(own["test/acc"])
    assert _per_class(given, classes) == pytest.approx(_per_class(own, classes))
    if kind == "rr2":  # beats are cut with the model's leads, whatever the data option says
        one_lead = evaluate(compose_config(tmp_path / "e5", [
            f"ckpt={ckpt}", "holdout=all", *explicit, "data.channels=null", *seen], "eval"))
        assert one_lead["test/acc"] == pytest.approx(own["test/acc"])

    # 4. predict: a CSV, a raw record of another database (R-R models) or an image folder
    source = {"csv": inputs["csv"], "rr": inputs["svdb"] / "800.hea",
              "rr2": inputs["svdb"] / "800.hea", "image": inputs["images"]}[kind]
    frame = predict(compose_config(tmp_path / "p", [f"ckpt={ckpt}", f"input={source}",
                                                    "allow_seen=true"], "predict"))
    if kind == "rr2":  # a CSV row holds one lead
        with pytest.raises(DataError, match="a beats CSV row holds one lead"):
            predict(compose_config(tmp_path / "p2", [f"ckpt={ckpt}", f"input={inputs['csv']}"],
                                   "predict"))
    probs = frame[[f"prob_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    if kind.startswith("rr"):
        assert len(frame) > 1500 and set(frame["true"]) <= {"N", "S", "V", "F"}
    else:  # the whole CSV / folder: agreement with the truth = evaluate's accuracy on it
        assert (frame["true"] == frame["predicted"]).mean() == pytest.approx(own["test/acc"])

    # 4b. explain the first inputs predict saw: integrated gradients on beats (R-R features
    # too), Grad-CAM on images; the same predicted classes as predict's
    table = explain(compose_config(tmp_path / "why", [f"ckpt={ckpt}", f"input={source}",
                                                      "limit=2", "steps=8"], "explain"))
    assert list(table["position"]) == [0, 1]
    assert list(table["predicted"]) == list(frame["predicted"][:2])
    assert all(Path(f).is_file() and Path(f).stat().st_size > 5000 for f in table["figure"])
    if kind == "rr2":  # each lead's share of the attribution
        shares = table[["attribution_share_MLII", "attribution_share_V1"]]
        np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-6)
        assert (shares > 0).all().all()

    # 5. export, both formats, parity-checked on inputs of the stored shape
    for fmt in ("onnx", "torchscript"):
        path, _ = export_model(compose_config(
            tmp_path / f"x-{fmt}", [f"ckpt={ckpt}", f"format={fmt}", "parity_inputs=8"],
            "export"))
        assert_export_matches_checkpoint(path, fmt, ckpt)  # the written file, read back
    # the R-R row's beats are relative to their record: the export says how to feed it
    assert ("subtract_template=true" in capsys.readouterr().out) == kind.startswith("rr")
    import onnxruntime  # the written file alone (no external data left behind) takes the input

    session = onnxruntime.InferenceSession(str(tmp_path / "x-onnx" / "run" / "model.onnx"))
    assert session.get_inputs()[0].shape[1:] == list(expected_shape)

    # 6. init_from: a new run starts from this one; every output row copied by class name
    train(compose_config(tmp_path / "tuned", [*args, f"model.init_from={run.info.run_id}"]))
    tuned = _runs(client)[-1]
    assert tuned.info.status == "FINISHED" and tuned.info.run_id != run.info.run_id
    assert int(tuned.data.tags["init_from.loaded_tensors"]) > 4
    assert tuned.data.tags["init_from.classes_by_name"] == ", ".join(classes)
    assert tuned.data.tags["init_from.reinitialised"] == "none"


# every data option and the matrix kind that runs its DataModule through all the steps;
# data=mitbih is the mitdb preset of data=physionet; the rendered-image options draw their
# images on the fly into the image DataModule (train, evaluate, explore and predict on their
# PNG files in test_image_training.py; export and init_from see only the model and its input
# spec, as for image folders); image models refuse signal data and the reverse before any
# work (test_image_training.py::test_signal_and_image_parts_do_not_mix)
DATA_KINDS = {"beats_csv": "csv", "physionet": "rr2", "mitbih": "rr", "image_folder": "image",
              "spectrogram": "image", "scalogram": "image", "beat_images": "image"}


def test_matrix_kinds_cover_every_data_option(compose_train) -> None:
    """Adding a data config without a kind here fails."""
    from ecg_experiments.config import CONFIG_DIR

    assert {p.stem for p in (CONFIG_DIR / "data").glob("*.yaml")} == set(DATA_KINDS)
    mitbih, physionet = (compose_train([f"data={name}"]).data for name in ("mitbih",
                                                                            "physionet"))
    assert mitbih._target_ == physionet._target_ and mitbih.database == "mitdb"


def test_matrix_rows_cover_every_model_option() -> None:
    """Adding a model config without a row here fails: the matrix is the contract."""
    from ecg_experiments.config import CONFIG_DIR

    options = {p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")}
    assert {p.values[0] for p in MODELS} == options
    kinds = pd.Series({p.id: p.values[2] for p in MODELS})
    assert set(kinds) == {"csv", "rr", "rr2", "image"}
