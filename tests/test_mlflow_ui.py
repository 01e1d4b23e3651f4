"""Runs as a researcher compares them in the MLflow UI: the experiment marked as model
development, runs named for what they are, the data of every run logged as MLflow datasets
with a context; and (slow) the UI itself in a real Chromium driven by Playwright."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from ecg_experiments.config import PROJECT_ROOT
from ecg_experiments.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_DEVELOPMENT,
    get_or_create_experiment,
    ui_address,
)
from tests.conftest import FAST, compose_config, shared_path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, small_csv: Path) -> dict:
    """A real training run and an evaluation of it by run id, in a store of their own."""
    from ecg_experiments.tasks.evaluate import evaluate
    from ecg_experiments.tasks.train import train

    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root / 'outputs' / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        train(compose_config(root / "train", ["data=beats_csv", f"data.train_file={small_csv}",
                                              *FAST], "train"))
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name("ecg-experiments")
        [trained] = client.search_runs([experiment.experiment_id])
        evaluate(compose_config(root / "eval", [f"run_id={trained.info.run_id}",
                                                "report.bootstrap_rounds=0"], "eval"))
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    return {"root": root, "uri": uri, "experiment": experiment, "runs": runs,
            "client": client}


def test_runs_are_named_and_carry_their_data_as_datasets(store: dict) -> None:
    assert store["experiment"].tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT
    assert sorted(store["runs"]) == ["cnn1d-beats_csv", "eval-cnn1d-beats_csv-on-beats_csv"]
    inputs = {name: {(d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"]):
                     d.dataset for d in run.inputs.dataset_inputs}
              for name, run in store["runs"].items()}
    trained, evaluated = inputs["cnn1d-beats_csv"], inputs["eval-cnn1d-beats_csv-on-beats_csv"]
    assert sorted(trained) == [("beats_csv small.csv test", "testing"),
                               ("beats_csv small.csv train", "training"),
                               ("beats_csv small.csv val", "validation")]
    # the evaluation scored the model's own test split: the same dataset, by digest
    [(key, scored)] = evaluated.items()
    assert key == ("beats_csv small.csv test", "testing")
    assert scored.digest == trained[key].digest
    profile = json.loads(scored.profile)
    assert profile["samples"] == sum(profile["classes"].values()) > 0
    assert set(profile["classes"]) == {"N", "S", "V", "F", "Q"}
    assert len({d.digest for d in trained.values()}) == 3  # three parts, three digests


def test_an_experiment_kind_set_by_hand_is_kept(tmp_path: Path) -> None:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mine = client.create_experiment("mine", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert get_or_create_experiment(client, "mine", None) == mine
    assert client.get_experiment(mine).tags[EXPERIMENT_KIND_TAG] == "genai_development"
    older = client.create_experiment("older")  # made before the tag existed: marked now
    get_or_create_experiment(client, "older", None)
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT


def _test_dataset(tmp_path: Path, split: str, *more: str):
    from ecg_experiments.config import build
    from ecg_experiments.tracked_data import split_dataset

    cfg = compose_config(tmp_path, ["data=physionet", f"data.dir={shared_path('mitdb')}",
                                    "data.records=[100,101,103,105,106,118]",
                                    f"data.split={split}", "data.download=false", *more])
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return split_dataset(datamodule, "test", "physionet")


def test_dataset_digests_change_with_the_samples_and_only_with_them(tmp_path: Path) -> None:
    random = _test_dataset(tmp_path / "a", "random")
    again = _test_dataset(tmp_path / "b", "random")
    by_records = _test_dataset(tmp_path / "c", "records")
    assert random.name == "mitdb kachuee random test"
    assert by_records.name == "mitdb kachuee records test"
    assert random.digest == again.digest  # prepared in another folder: the same data
    assert random.digest != by_records.digest
    # the same beats filtered otherwise are other inputs for a model: another digest
    filtered = _test_dataset(tmp_path / "d", "random", "data.recipe.bandpass_hz=[0.5,40]")
    assert filtered.name == random.name and filtered.digest != random.digest
    assert str(shared_path("mitdb").resolve()) in random.source.to_json()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome"))), None)


@pytest.mark.slow
def test_the_ui_opens_on_training_runs_with_names_datasets_and_charts(store: dict,
                                                                     tmp_path: Path) -> None:
    """`make ui`'s address in a real Chromium (Playwright; screenshots in tmp_path)."""
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium found (Debian: apt install chromium) for the browser test")
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="the browser test needs `pip install playwright`")
    port = _free_port()
    server = subprocess.Popen(
        [str(PROJECT_ROOT / ".venv" / "bin" / "mlflow") if (PROJECT_ROOT / ".venv").is_dir()
         else "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", store["uri"],
         "--default-artifact-root", str(store["root"] / "outputs" / "mlartifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        address = ui_address(store["uri"], "ecg-experiments", port=port)
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.goto(address)
            page.get_by_text("cnn1d-beats_csv", exact=True).wait_for(timeout=60_000)
            assistant = page.locator("button[aria-label='Close']")
            if assistant.count():  # MLflow 3's assistant panel hides the run table's columns
                assistant.first.click()
            page.screenshot(path=str(tmp_path / "runs.png"))
            text = page.inner_text("body")
            # the training-runs view, not GenAI's traces overview
            assert "Run Name" in text and "Token Usage" not in text
            assert "eval-cnn1d-beats_csv-on-beats_csv" in text
            assert "beats_csv small.csv test" in text and "Dataset" in text
            # the view switch: table | chart | artifacts
            page.locator("label:has(input[name=runs-view-mode][value=CHART])").click()
            # a chart of its own (not only best/val/f1_macro), found as a user finds it
            page.get_by_placeholder("Search metric charts").fill("val/f1_macro")
            page.get_by_text("val/f1_macro", exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "charts.png"))
            browser.close()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
