"""Shared fixtures: where the shared real data lives, and composing run configs in a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from ecg_experiments.config import CONFIG_DIR, PROJECT_ROOT

SHARED_DATA = Path(os.environ.get("ECG_SHARED_DATA", PROJECT_ROOT / ".." / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under the shared data folder; skip the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"shared data not found at {path}: set ECG_SHARED_DATA to the folder holding "
            "mitdb/, kachuee_samples/ and nstdb/"
        )
    return path


@pytest.fixture
def kachuee_mitbih_csv() -> Path:
    return shared_path("kachuee_samples", "mitbih_train_sample.csv")


def compose_config(
    tmp_path: Path, overrides: Sequence[str] = (), config_name: str = "train"
) -> DictConfig:
    """Compose a config as its CLI would, with outputs under tmp_path.

    The caller points MLFLOW_TRACKING_URI at a store of its own.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            overrides=[
                f"paths.outputs_dir={tmp_path / 'outputs'}",
                f"hydra.run.dir={tmp_path / 'run'}",
                *overrides,
            ],
            return_hydra_config=True,
        )
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig.instance().set_config(cfg)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]  # as in a real run: the task sees no `hydra` node
    return cfg


@pytest.fixture
def compose_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., DictConfig]]:
    """Compose conf/<name>.yaml with overrides, all outputs and tracking under tmp_path."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def _compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
        return compose_config(tmp_path, overrides, config_name)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def mitdb_dir() -> Path:
    return shared_path("mitdb")


@pytest.fixture(scope="session")
def kachuee_prepared(mitdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kachuee recipe run once on all 48 shared records (about 4 s)."""
    from ecg_experiments.data.beat_table import prepare_mitbih
    from ecg_experiments.data.segment import KachueeRecipe

    root = tmp_path_factory.mktemp("prepared")
    return prepare_mitbih(mitdb_dir, root, KachueeRecipe(), missing_lead="first", download=False,
                          progress=False)


# Fast training settings for tests that train: every callback and report part a user gets
# stays on (progress lines, early stopping, checkpoints, the logged model, intervals,
# attributions); speed comes from few epochs and small amounts, not from turning parts off
FAST = ["trainer.max_epochs=2", "report.bootstrap_rounds=50", "report.attribution_per_group=1",
        "report.attribution_steps=4"]


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 real public rows (40 per class) from the shared sample."""
    from ecg_experiments.data.beats import read_beats_csv, write_beats_csv

    x, y = read_beats_csv(shared_path("kachuee_samples", "mitbih_train_sample.csv"))
    keep = np.concatenate([np.flatnonzero(y == k)[:40] for k in range(5)])
    path = tmp_path_factory.mktemp("csv") / "small.csv"
    write_beats_csv(path, x[keep], y[keep])
    return path


@pytest.fixture(scope="session")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Valid inputs that reader tests spoil (beats CSV, PNG, record 100, weights file) and
    two small trained checkpoints (a beat model and an image model)."""
    import shutil
    import tempfile

    import torch
    from PIL import Image

    from ecg_experiments.data.beats import read_beats_csv, write_beats_csv
    from ecg_experiments.tasks.train import train

    root = Path(tempfile.mkdtemp(prefix="ecg-bad-readers-"))  # world-readable for `nobody`
    os.chmod(root, 0o755)
    x, y = read_beats_csv(shared_path("kachuee_samples", "mitbih_train_sample.csv"))
    keep = np.concatenate([np.flatnonzero(y == k)[:20] for k in range(5)])
    write_beats_csv(root / "beats.csv", x[keep], y[keep])
    rng = np.random.default_rng(0)
    for name in ("N", "V"):
        (root / "images" / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                root / "images" / name / f"{i}.png")
    mitdb = shared_path("mitdb")
    for ext in ("hea", "dat", "atr"):
        shutil.copy(mitdb / f"100.{ext}", root / f"100.{ext}")
    files = {"csv": root / "beats.csv", "images": root / "images", "root": root,
             "png": root / "images" / "N" / "0.png", "hea": root / "100.hea"}
    for kind, args in (("signal", ["data=beats_csv", f"data.train_file={files['csv']}"]),
                       ("image", ["model=cnn2d", "data=image_folder", "data.num_workers=0",
                                  f"data.root={files['images']}"])):
        run = root / f"train-{kind}"
        # checkpoints to spoil for the reader tests: no report needed
        train(compose_config(run, [*args, "trainer.max_epochs=1", "logger=none",
                                   "report.enabled=false"]))
        files[f"{kind}_ckpt"] = next((run / "run" / "checkpoints").glob("epoch_*.ckpt"))
    state = torch.load(files["signal_ckpt"], map_location="cpu", weights_only=True)
    torch.save({k.removeprefix("net."): v for k, v in state["state_dict"].items()},
               root / "weights.pth")
    files["pth"] = root / "weights.pth"
    os.system(f"chmod -R a+rX {root}")
    yield files
    shutil.rmtree(root, ignore_errors=True)


def run_cli(args: list[str], tmp: Path, timeout: int = 400,
            check: bool = True) -> subprocess.CompletedProcess:
    """`python -m ecg_experiments.train ARGS` with outputs and the MLflow store under tmp
    (check: it must exit 0)."""
    result = subprocess.run(
        [sys.executable, "-m", "ecg_experiments.train", *args, f"paths.outputs_dir={tmp}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
             "PYTHONWARNINGS": "ignore"},
    )
    if check:
        assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return result


def test_metrics_of_the_run(outputs: Path) -> dict[str, float]:
    """The `test/...` metrics of the one run in the MLflow store under `outputs`."""
    [run] = all_runs(outputs)
    return {k: v for k, v in run.data.metrics.items() if k.startswith("test/")}


def all_runs(tmp: Path) -> list:
    """Every run in the MLflow store under tmp."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def assert_export_matches_checkpoint(exported: Path, fmt: str, checkpoint: Path,
                                     n: int = 5, tolerance: float = 1e-4) -> None:
    """Load the written ONNX / TorchScript file by itself and compare its outputs with the
    checkpoint's network on inputs of the stored shape (another batch size and other
    values than export's own check used)."""
    import torch

    from ecg_experiments.models.checkpoint import load_trained_model

    model = load_trained_model(Path(checkpoint))
    x = torch.rand(n, *model.input.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():
        expected = model.net.eval()(x).numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    else:
        with torch.no_grad():
            got = torch.jit.load(str(exported))(x).numpy()
    assert got.shape == expected.shape == (n, len(model.class_names))
    assert np.abs(got - expected).max() <= tolerance
