"""Bad input through the real command-line tools: each case must exit non-zero with one clear
message naming the file, row or option, print no traceback, and leave no partial output
(no checkpoint, no prepared data, no MLflow run marked FINISHED).

Every case starts a Python process (about 10 s of imports), so the suite is marked slow:
`make test-all` runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from ecg_experiments.config import PROJECT_ROOT
from ecg_experiments.data.beats import read_beats_csv, write_beats_csv
from tests.conftest import shared_path

pytestmark = pytest.mark.slow


def _csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Broken inputs made from real rows, plus a real 5-class checkpoint."""
    root = tmp_path_factory.mktemp("bad")
    x, y = read_beats_csv(shared_path("kachuee_samples", "mitbih_train_sample.csv"))
    rows = [",".join(f"{v:.6f}" for v in row) + f",{label}" for row, label in zip(x[:50], y[:50],
                                                                                 strict=True)]
    files = {
        "empty": _csv(root / "empty.csv", []),
        "short": _csv(root / "short.csv", [r.rsplit(",", 1)[0] for r in rows]),
        "nan": _csv(root / "nan.csv", rows[:3] + ["nan," + rows[3].split(",", 1)[1]] + rows[4:]),
        "text": _csv(root / "text.csv", rows[:5] + ["abc," + rows[5].split(",", 1)[1]]),
        "label7": _csv(root / "label7.csv", rows[:6] + [rows[6].rsplit(",", 1)[0] + ",7"]),
        "label_float": _csv(root / "float.csv", rows[:2] + [rows[2].rsplit(",", 1)[0] + ",2.5"]),
        "not_ckpt": _csv(root / "model.ckpt", ["this is not a checkpoint"]),
    }
    one_f = np.concatenate([np.flatnonzero(y != 3)[:60], np.flatnonzero(y == 3)[:1]])
    write_beats_csv(root / "one_f.csv", x[one_f], y[one_f])
    files["one_f"] = root / "one_f.csv"
    ptb = shared_path("kachuee_samples", "ptbdb_normal_sample.csv")
    files["ptb"] = ptb
    mitdb = root / "mitdb_no_atr"
    mitdb.mkdir()
    for ext in ("hea", "dat"):
        shutil.copy(shared_path("mitdb") / f"100.{ext}", mitdb / f"100.{ext}")
    shutil.copy(shared_path("mitdb") / "101.atr", mitdb / "101.atr")
    for ext in ("hea", "dat"):
        shutil.copy(shared_path("mitdb") / f"101.{ext}", mitdb / f"101.{ext}")
    files["mitdb_no_atr"] = mitdb
    (root / "empty_dir").mkdir()
    files["empty_dir"] = root / "empty_dir"
    files.update(_image_folders(root))
    # a real checkpoint of a 5-class model
    out = root / "trained"
    subprocess.run(
        [sys.executable, "-m", "ecg_experiments.train", "data=beats_csv",
         f"data.train_file={shared_path('kachuee_samples', 'mitbih_train_sample.csv')}",
         "trainer.max_epochs=1", "logger=none", f"paths.outputs_dir={out}",
         # only a checkpoint is needed here, as input for the bad-input cases
         f"hydra.run.dir={out / 'run'}", "report.enabled=false"],
        cwd=PROJECT_ROOT, check=True, capture_output=True, timeout=300,
    )
    files["ckpt"] = next((out / "run" / "checkpoints").glob("epoch_*.ckpt"))
    return files


def _image_folders(root: Path) -> dict[str, Path]:
    """Good class folders of PNGs, one with an empty class, one with a truncated PNG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    good = root / "images"
    for name in ("N", "V"):
        (good / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(good / name / f"100_{i:07d}.png")
    no_images = root / "no_images"
    shutil.copytree(good, no_images)
    (no_images / "S").mkdir()
    (no_images / "S" / "README.txt").write_text("images go here")
    corrupt = root / "corrupt"
    shutil.copytree(good, corrupt)
    data = (good / "N" / "100_0000000.png").read_bytes()
    (corrupt / "V" / "broken.png").write_bytes(data[: len(data) // 2])
    return {"images": good, "no_images": no_images, "corrupt": corrupt}


CSV = "data=beats_csv"
IMAGES = ["model=cnn2d", "data=image_folder", "data.num_workers=0"]
# (tool, args, what the single error message must contain); {name} is a path from `inputs`
CASES = {
    "missing data path": ("train", [CSV, "data.train_file=/no/such/beats.csv"],
                          "/no/such/beats.csv: no such file"),
    "empty CSV": ("train", [CSV, "data.train_file={empty}"], "empty.csv: the file is empty"),
    "empty record folder": ("prepare", ["paths.mitdb_dir={empty_dir}", "data.download=false",
                                        "data.records=[100]"], "record 100: 100.hea"),
    "CSV with 187 columns": ("train", [CSV, "data.train_file={short}"],
                             "short.csv, line 1: 187 columns, expected 188"),
    "CSV with NaN": ("train", [CSV, "data.train_file={nan}"], "nan.csv, line 4, column 1"),
    "text in a value": ("train", [CSV, "data.train_file={text}"],
                        "text.csv, line 6, column 1: 'abc'"),
    "label out of range": ("train", [CSV, "data.train_file={label7}"],
                           "label7.csv, line 7: label 7 is outside the classes 0..4"),
    "non-integer label": ("train", [CSV, "data.train_file={label_float}"],
                          "float.csv, line 3: label 2.5 is not an integer"),
    "unknown model": ("train", ["model=nope"], "Could not find 'model/nope'"),
    "unknown data": ("train", ["data=nope"], "Could not find 'data/nope'"),
    "unknown optimizer": ("train", ["optimizer=nope"], "Could not find 'optimizer/nope'"),
    "model/data kind mismatch": ("train", [CSV, "data.train_file={one_f}",
                                           "model.input_kind=image"],
                                 "model=cnn1d expects image input but data=beats_csv"),
    "lr <= 0": ("train", [CSV, "data.train_file={one_f}", "optimizer.lr=0"],
                "optimizer.lr=0: the learning rate must be > 0"),
    "batch size 0": ("train", [CSV, "data.train_file={one_f}", "data.batch_size=0"],
                     "data.batch_size=0"),
    "split ratios not summing to 1": ("train", [CSV, "data.train_file={one_f}",
                                                "data.val_fraction=0.5",
                                                "data.test_fraction=0.6"],
                                      "must be >= 0 and sum to 1"),
    "too few samples to stratify": ("train", [CSV, "data.train_file={one_f}"],
                                    "class F has only 1 sample"),
    "checkpoint of another class count": (
        "evaluate", ["ckpt={ckpt}", CSV, "data.train_file={ptb}",
                     "data.class_names=[normal,abnormal]"],
        "has classes the model does not know: normal, abnormal. Model classes: "
        "[N, S, V, F, Q]"),
    "not a checkpoint": ("evaluate", ["ckpt={not_ckpt}"], "model.ckpt: not a loadable PyTorch"),
    "MLflow server unreachable": ("train", [CSV, "data.train_file={one_f}",
                                            "logger.tracking_uri=http://127.0.0.1:9"],
                                  "no MLflow server answers at http://127.0.0.1:9/health"),
    "output path not writable": ("train", [CSV, "data.train_file={one_f}",
                                           "paths.outputs_dir={not_ckpt}/sub"],
                                 "cannot create the output folder there"),
    "record missing its .atr": ("prepare", ["paths.mitdb_dir={mitdb_no_atr}",
                                            "data.download=false", "data.records=[100,101]"],
                                "record 100: 100.atr"),
    "unknown record name": ("prepare", ["data.download=false", "data.records=[100,999]"],
                            "data.records: '999' is not a record name of mitdb"),
    "trainer=gpu without a GPU": ("train", [CSV, "data.train_file={one_f}", "trainer=gpu"],
                                  "needs a CUDA GPU"),
    "resume without a checkpoint": ("train", [CSV, "data.train_file={one_f}", "resume=true"],
                                    "resume=true: no checkpoint at"),
    "predict on a file that is neither": ("predict", ["ckpt={ckpt}", "input=/no/such.txt"],
                                          "expected a Kaggle-format .csv file or a WFDB record"),
    "missing image folder": ("train", [*IMAGES, "data.root=/no/such/images"],
                             "data.root=/no/such/images: no such folder"),
    "class folder with no images": ("train", [*IMAGES, "data.root={no_images}"],
                                    "no_images/S: class 'S' has no images"),
    "corrupt PNG": ("train", [*IMAGES, "data.root={corrupt}"],
                    "broken.png: not a readable image"),
    "image too small for the backbone": (
        "train", [*IMAGES, "model=inception_v3", "model.input_size=32", "data.root={images}"],
        "model.input_size=32: images of 32x32 are too small for inception_v3"),
    "pretrained=imagenet offline, nothing cached": (
        "train", [*IMAGES, "model=alexnet", "model.pretrained=imagenet", "data.root={images}"],
        "model.pretrained=imagenet: the alexnet ImageNet weights are not in"),
    "timm weights offline, nothing cached": (
        "train", [*IMAGES, "model=timm", "model.name=resnet18", "model.pretrained=imagenet",
                  "data.root={images}"],
        "model.pretrained=imagenet: the resnet18 weights (timm/resnet18.a1_in1k) are not in"),
    "unknown colour map": ("prepare", ["render=spectrogram", "render.cmap=nope",
                                       "data.download=false"],
                           "render.cmap='nope': not a matplotlib colour map"),
}


def _leftovers(outputs: Path) -> list[str]:
    """Checkpoints, finished runs and anything prepared (beat tables `<db>-<recipe>-<hash>`,
    their splits, rendered images, temporary folders of a write that did not finish)."""
    found = [str(p) for p in outputs.rglob("*.ckpt")]
    found += [str(p) for p in (outputs / "data").rglob("*")]
    store = outputs / "mlflow.db"
    if store.exists():
        client = mlflow.MlflowClient(f"sqlite:///{store}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        found += [f"run {r.info.run_id} {r.info.status}" for r in runs
                  if r.info.status == "FINISHED"]
    return found


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    tool, args, expected = CASES[case]
    args = [a.format(**inputs) for a in args]
    outputs = tmp_path / "outputs"
    if not any(a.startswith("paths.outputs_dir=") for a in args):
        args.append(f"paths.outputs_dir={outputs}")
    if tool == "prepare" and not any(a.startswith("paths.mitdb_dir=") for a in args):
        args.append(f"paths.mitdb_dir={shared_path('mitdb')}")
    result = subprocess.run(
        [sys.executable, "-m", f"ecg_experiments.{tool}", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        # empty weight caches, and downloads routed to a closed port: offline on any machine
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{outputs / 'mlflow.db'}",
             "PYTHONWARNINGS": "ignore", "TORCH_HOME": str(tmp_path / "torch"),
             "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9",
             "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"},
    )
    message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    print(f"[{case}] exit {result.returncode}: {result.stderr.strip()[-600:]}")
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert message, "no message"
    assert _leftovers(outputs) == []
