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
CONFIG = {"train": "train", "predict": "predict", "evaluate": "eval", "prepare": "prepare"}
NOT_APPLICABLE = {("image (predict)", "nonfinite"), ("WFDB header (predict)", "nonfinite")}
# UTF-16 text is a CSV too: read as such (tests/test_feature_meetings.py checks the values)
ACCEPTED = {("beats CSV (train)", "utf16"), ("beats CSV (predict)", "utf16")}


def _entry(name: str) -> Callable:
    from ecg_experiments.tasks.evaluate import evaluate
    from ecg_experiments.tasks.predict import predict
    from ecg_experiments.tasks.prepare import prepare
    from ecg_experiments.tasks.train import train

    return {"train": train, "predict": predict, "evaluate": evaluate, "prepare": prepare}[name]


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
    suffix, args, entry = READERS[reader]
    folder = work / "inputs"
    folder.mkdir(parents=True)
    bad = make_bad(corruption, suffix, good, folder)
    names = {**{k: str(v) for k, v in good.items()}, "bad": str(bad)}
    overrides = [a.format(**names) for a in args]
    if entry == "train" and corruption not in ("random_bytes", "unreadable"):
        overrides.append("logger=none")  # the tracked cases check that no run FINISHED
    return run_entry(entry, overrides, work, bad)


def run_entry(entry: str, overrides: list[str], work: Path, bad: Path) -> dict:
    """Run an entry point in this process under the CLI's error handling; return its exit
    code, stderr and what it left behind (checkpoints, prediction files, beat tables, MLflow
    runs FINISHED or RUNNING)."""
    import contextlib
    import io

    outputs = work / "outputs"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{outputs / 'mlflow.db'}"
    overrides = overrides + ["report.bootstrap_rounds=0"] * (
        entry in ("train", "evaluate")) + ["trainer.max_epochs=1"] * (entry == "train")
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
        "predictions.csv")] + [str(p) for p in work.rglob("beats.npz")]
    store = outputs / "mlflow.db"
    if store.exists():
        client = mlflow.MlflowClient(f"sqlite:///{store}")
        left += [r.info.run_id for r in client.search_runs(
            [e.experiment_id for e in client.search_experiments()])
            if r.info.status in ("FINISHED", "RUNNING")]
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


@pytest.mark.slow  # a child process without root's override (16 s): `make test-all`
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


def _svdb_copy(folder: Path, records: tuple[str, ...] = ("800",)) -> Path:
    folder.mkdir(parents=True)
    for name in records:
        for ext in ("hea", "dat", "atr"):
            shutil.copy(shared_path("svdb") / f"{name}.{ext}", folder / f"{name}.{ext}")
    return folder


def _random_atr(folder: Path, name: str = "800") -> Path:
    (folder / f"{name}.atr").write_bytes(np.random.default_rng(3).bytes(5000))
    return folder / f"{name}.atr"


def _atr_cut_short(folder: Path, name: str = "100") -> Path:
    full = (shared_path("mitdb") / f"{name}.atr").read_bytes()
    (folder / f"{name}.atr").write_bytes(full[: len(full) // 2 + 1])
    return folder / f"{name}.atr"


def _sampling_frequency_zero(folder: Path, name: str = "800") -> Path:
    header = folder / f"{name}.hea"
    header.write_bytes(header.read_bytes().replace(b"800 2 128 230400", b"800 2 0 230400", 1))
    return header


# the cases: (record to copy, how it is spoiled, entry, words the error line holds)
SPOILED_RECORDS = {
    "annotations of random bytes (predict)": ("800", _random_atr, "predict",
                                              "annotation"),
    "annotations cut short (predict)": ("100", _atr_cut_short, "predict",
                                        "no end-of-annotations mark"),
    "sampling frequency 0 (predict)": ("800", _sampling_frequency_zero, "predict",
                                       "sampling frequency 0"),
    "sampling frequency 0 (evaluate data=physionet)": ("800", _sampling_frequency_zero,
                                                       "evaluate", "sampling frequency 0"),
}


@pytest.mark.parametrize("case", list(SPOILED_RECORDS))
def test_a_spoiled_part_of_a_record(case: str, good, tmp_path: Path, monkeypatch) -> None:
    """wfdb reads random bytes as annotations, reads an annotation file cut short as a
    shorter record and divides by a sampling frequency of 0: each is one error line."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    record, spoil, entry, words = SPOILED_RECORDS[case]
    folder = tmp_path / "inputs"
    if record == "100":
        folder.mkdir(parents=True)
        for ext in ("hea", "dat"):
            shutil.copy(good["root"] / f"100.{ext}", folder / f"100.{ext}")
    else:
        _svdb_copy(folder, (record,))
    bad = spoil(folder, record)
    if entry == "predict":
        overrides = [f"ckpt={good['signal_ckpt']}", f"input={folder / record}.hea"]
    else:
        overrides = [f"ckpt={good['signal_ckpt']}", "data=physionet", "data.database=svdb",
                     f"data.dir={folder}", f"data.records=[{record}]", "data.split=all",
                     "data.download=false", "holdout=all"]
    result = run_entry(entry, overrides, tmp_path, bad)
    check(result)
    error = result["stderr"].strip().splitlines()[-1]
    assert str(bad) in error and words in error, error


@pytest.mark.parametrize("entry", ["prepare", "train"])
def test_random_annotations_in_a_database_stop_before_any_beat_table(
        entry: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    folder = _svdb_copy(tmp_path / "svdb", ("800", "801"))
    bad = _random_atr(folder, "801")
    overrides = ["data=physionet", "data.database=svdb", f"data.dir={folder}",
                 "data.records=[800,801]", "data.download=false"]
    result = run_entry(entry, overrides, tmp_path, bad)
    check(result)
    assert "801.atr" in result["stderr"].strip().splitlines()[-1]
