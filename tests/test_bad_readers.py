"""Bad input for every reader: each file a user hands the framework (beats CSV, image, WFDB
record, checkpoint, weights file) given random bytes, an empty file, a truncated file, UTF-16,
NaN / infinite values, a folder where the file belongs and a file it may not read.

Each case runs the entry point's function under the CLI's error handling: one line on stderr
naming the path and what was expected, exit status 2, no traceback, no output written, no
FINISHED MLflow run. (tests/test_bad_input.py runs the command-line processes themselves.)
When the suite runs as root, which reads any file, the no-permission cases run in one child
process without root's file-permission override (util-linux `setpriv`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from ecg_experiments.cli import exit_on_user_error
from ecg_experiments.config import PROJECT_ROOT
from ecg_experiments.data.beats import read_beats_csv, write_beats_csv
from tests.conftest import compose_config, shared_path

CORRUPTIONS = ("random_bytes", "empty", "truncated", "utf16", "nonfinite", "folder",
               "unreadable")
# reader: (suffix of its file, how the file is handed over, the entry point)
READERS = {
    "beats CSV (train)": (".csv", ["data=beats_csv", "data.train_file={bad}"], "train"),
    "beats CSV (predict)": (".csv", ["ckpt={signal_ckpt}", "input={bad}"], "predict"),
    "image (predict)": (".png", ["ckpt={image_ckpt}", "input={bad}"], "predict"),
    "WFDB header (predict)": (".hea", ["ckpt={signal_ckpt}", "input={bad}"], "predict"),
    "checkpoint (evaluate)": (".ckpt", ["ckpt={bad}", "logger=none"], "evaluate"),
    "checkpoint (init_from)": (".ckpt", ["data=beats_csv", "data.train_file={csv}",
                                         "model.init_from={bad}"], "train"),
    "weights file (pretrained)": (".pth", ["model=cnn2d", "data=image_folder",
                                           "data.root={images}", "data.num_workers=0",
                                           "model.pretrained={bad}"], "train"),
}
CONFIG = {"train": "train", "predict": "predict", "evaluate": "eval"}
NOT_APPLICABLE = {("image (predict)", "nonfinite"), ("WFDB header (predict)", "nonfinite")}
# UTF-16 text is a CSV too: read as such (tests/test_feature_meetings.py checks the values)
ACCEPTED = {("beats CSV (train)", "utf16"), ("beats CSV (predict)", "utf16")}


def _entry(name: str) -> Callable:
    from ecg_experiments.tasks.evaluate import evaluate
    from ecg_experiments.tasks.predict import predict
    from ecg_experiments.tasks.train import train

    return {"train": train, "predict": predict, "evaluate": evaluate}[name]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Valid inputs (the corruptions start from them) and two small trained checkpoints."""
    root = Path(tempfile.mkdtemp(prefix="ecg-bad-readers-"))  # world-readable for `nobody`
    os.chmod(root, 0o755)
    x, y = read_beats_csv(shared_path("kachuee_samples", "mitbih_train_sample.csv"))
    keep = np.concatenate([np.flatnonzero(y == k)[:20] for k in range(5)])
    write_beats_csv(root / "beats.csv", x[keep], y[keep])
    from PIL import Image

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
        _entry("train")(compose_config(run, [*args, "trainer.max_epochs=1", "logger=none",
                                             "report.enabled=false"]))
        files[f"{kind}_ckpt"] = next((run / "run" / "checkpoints").glob("epoch_*.ckpt"))
    state = torch.load(files["signal_ckpt"], map_location="cpu", weights_only=True)
    torch.save({k.removeprefix("net."): v for k, v in state["state_dict"].items()},
               root / "weights.pth")
    files["pth"] = root / "weights.pth"
    os.system(f"chmod -R a+rX {root}")
    yield files
    shutil.rmtree(root, ignore_errors=True)


def make_bad(corruption: str, suffix: str, good: dict[str, Path], folder: Path) -> Path:
    """The file (or folder) of one corruption, named like the reader expects."""
    path = folder / f"bad{suffix}"
    source = {".csv": good["csv"], ".png": good["png"], ".hea": good["hea"],
              ".ckpt": good["signal_ckpt"], ".pth": good["pth"]}[suffix]
    data = source.read_bytes()
    if corruption == "random_bytes":
        path.write_bytes(np.random.default_rng(1).bytes(20_000))
    elif corruption == "empty":
        path.write_bytes(b"")
    elif corruption == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif corruption == "utf16":
        path.write_bytes(data.decode("latin-1").encode("utf-16"))
    elif corruption == "nonfinite":
        if suffix == ".csv":
            text = data.decode().splitlines()
            text[3] = "nan," + text[3].split(",", 1)[1]
            text[5] = "inf," + text[5].split(",", 1)[1]
            path.write_text("\n".join(text) + "\n")
        else:
            state = torch.load(source, map_location="cpu", weights_only=True)
            tensors = state["state_dict"] if "state_dict" in state else state
            first = next(k for k, v in tensors.items() if v.is_floating_point())
            tensors[first] = tensors[first].clone().fill_(float("nan"))
            torch.save(state, path)
    elif corruption == "folder":
        path.mkdir()
    elif corruption == "unreadable":
        path.write_bytes(data)
        path.chmod(0)
    if suffix == ".hea" and corruption not in ("folder", "truncated"):
        shutil.copy(good["root"] / "100.dat", folder / "bad.dat")
    if suffix == ".hea" and corruption == "truncated":  # the signal file cut short
        path.write_bytes(data.replace(b"100.dat", b"bad.dat"))
        dat = (good["root"] / "100.dat").read_bytes()
        (folder / "bad.dat").write_bytes(dat[: len(dat) // 2])
    return path


def run_case(reader: str, corruption: str, good: dict[str, Path], work: Path) -> dict:
    """Run one case in this process; return its exit code, stderr and what it left behind."""
    import contextlib
    import io

    suffix, args, entry = READERS[reader]
    folder = work / "inputs"
    folder.mkdir(parents=True)
    bad = make_bad(corruption, suffix, good, folder)
    names = {**{k: str(v) for k, v in good.items()}, "bad": str(bad)}
    outputs = work / "outputs"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{outputs / 'mlflow.db'}"
    overrides = [a.format(**names) for a in args] + ["report.bootstrap_rounds=0"] * (
        entry != "predict") + ["trainer.max_epochs=1"] * (entry == "train")
    if entry == "train" and corruption not in ("random_bytes", "unreadable"):
        overrides.append("logger=none")  # the tracked cases check that no run FINISHED
    cfg = compose_config(work, overrides, CONFIG[entry])
    stderr, code = io.StringIO(), 0
    with contextlib.redirect_stderr(stderr):
        try:
            with exit_on_user_error():
                _entry(entry)(cfg)
        except SystemExit as err:
            code = int(err.code)
        except Exception as err:  # a traceback: the case fails
            code, text = -1, f"Traceback {type(err).__name__}: {err}"
            stderr.write(text)
    left = [str(p) for p in outputs.rglob("*.ckpt")] + [str(p) for p in work.rglob(
        "predictions.csv")]
    store = outputs / "mlflow.db"
    if store.exists():
        client = mlflow.MlflowClient(f"sqlite:///{store}")
        left += [r.info.run_id for r in client.search_runs(
            [e.experiment_id for e in client.search_experiments()])
            if r.info.status == "FINISHED"]
    return {"code": code, "stderr": stderr.getvalue(), "left": left, "bad": str(bad)}


def check(result: dict) -> None:
    """Exit 2; one error line (after any log lines), naming the input and what was expected."""
    assert result["code"] == 2, result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"]
    errors = [line for line in result["stderr"].splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result["stderr"].strip().endswith(errors[0]), result["stderr"]
    assert str(Path(result["bad"]).parent) in errors[0], errors[0]
    assert "expected" in errors[0], errors[0]
    assert result["left"] == []


CASES = [(r, c) for r in READERS for c in CORRUPTIONS if (r, c) not in NOT_APPLICABLE]


# the second entry point of the same reader (CSV through predict, a checkpoint through
# init_from) runs with `make test-all`; the default suite takes one entry per reader
SECOND_ENTRY = {"beats CSV (predict)", "checkpoint (init_from)"}


@pytest.mark.parametrize("reader,corruption", [
    pytest.param(r, c, id=f"{r}-{c}", marks=[pytest.mark.slow] * (r in SECOND_ENTRY))
    for r, c in CASES if c != "unreadable"])
def test_bad_file(reader: str, corruption: str, good, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    result = run_case(reader, corruption, good, tmp_path)
    if (reader, corruption) in ACCEPTED:
        assert result["code"] == 0 and "error" not in result["stderr"], result["stderr"]
    else:
        check(result)


def test_files_without_read_permission(good) -> None:
    """Every reader, its file mode 000, in one child process (without root's override)."""
    readers = [r for r, c in CASES if c == "unreadable"]
    work = Path(tempfile.mkdtemp(prefix="ecg-unreadable-", dir=good["root"]))
    os.chmod(work, 0o777)
    code = ("import json, sys; from pathlib import Path; from tests.test_bad_readers import "
            "run_case; good = {k: Path(v) for k, v in json.loads(sys.argv[1]).items()}; "
            "print(json.dumps({r: run_case(r, 'unreadable', good, Path(sys.argv[2]) / str(i))"
            " for i, r in enumerate(json.loads(sys.argv[3]))}))")
    env = {**os.environ, "HOME": str(work), "PYTHONWARNINGS": "ignore",
           "MPLCONFIGDIR": str(work / "mpl")}
    # root reads any file: its child drops the capabilities that let it (util-linux setpriv)
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without util-linux's setpriv to drop the "
                        "file-permission override")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    process = subprocess.run(
        [*prefix, sys.executable, "-c", code, json.dumps({k: str(v) for k, v in good.items()}),
         str(work), json.dumps(readers)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(process.stdout.strip().splitlines()[-1])
    assert sorted(results) == sorted(readers)
    for reader, result in results.items():
        print(reader, result["stderr"].strip())
        check(result)
        assert "cannot be read (Permission denied)" in result["stderr"], reader


@pytest.mark.parametrize("content", [np.random.default_rng(2).bytes(2000),
                                     "optimizer:\n  lr: 0.001\n".encode("utf-16"),
                                     b"defaults:\n  - override /model: [cnn1d\n"],
                         ids=["random_bytes", "utf16", "broken_yaml"])
def test_a_users_config_file_that_is_not_yaml(content: bytes, tmp_path: Path, capsys) -> None:
    """Hydra would end in a traceback for a config file whose bytes do not decode."""
    from ecg_experiments.cli import check_config_files

    (tmp_path / "experiment").mkdir()
    bad = tmp_path / "experiment" / "mine.yaml"
    bad.write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        check_config_files(["--config-dir", str(tmp_path), "experiment=mine"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {bad}: not a readable config file") and "expected" in line
    bad.write_text("optimizer:\n  lr: 0.001\n")
    check_config_files(["--config-dir", str(tmp_path)])  # a good file passes
