"""Reading and writing Kaggle-format beat CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecg_experiments.data.beats import read_beats_csv, write_beats_csv
from ecg_experiments.errors import DataError

LENGTH = 187


def _rows(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    signals = rng.random((n, LENGTH)).astype(np.float32)
    labels = np.arange(n) % 5
    return signals, labels


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _plain_lines(signals: np.ndarray, labels: np.ndarray, fmt: str = "{:.9f}") -> list[str]:
    return [
        ",".join([fmt.format(v) for v in row] + [fmt.format(float(label))])
        for row, label in zip(signals, labels, strict=True)
    ]


def test_plain_file(tmp_path: Path) -> None:
    signals, labels = _rows()
    path = _write(tmp_path / "plain.csv", _plain_lines(signals, labels))
    x, y = read_beats_csv(path)
    assert x.shape == (6, LENGTH) and x.dtype == np.float32
    np.testing.assert_allclose(x, signals, atol=1e-7)
    np.testing.assert_array_equal(y, labels)


def test_e_notation_as_in_the_public_files(tmp_path: Path) -> None:
    signals, labels = _rows()
    path = _write(tmp_path / "e.csv", _plain_lines(signals, labels, "{:.18e}"))
    x, y = read_beats_csv(path)
    np.testing.assert_allclose(x, signals, atol=1e-7)
    np.testing.assert_array_equal(y, labels)


def test_header_row_is_detected(tmp_path: Path) -> None:
    signals, labels = _rows()
    header = ",".join([f"s{i}" for i in range(LENGTH)] + ["label"])
    path = _write(tmp_path / "header.csv", [header, *_plain_lines(signals, labels)])
    x, y = read_beats_csv(path)
    assert x.shape == (6, LENGTH)
    np.testing.assert_array_equal(y, labels)


def test_index_column_is_detected(tmp_path: Path) -> None:
    signals, labels = _rows()
    lines = [f"{i}," + line for i, line in enumerate(_plain_lines(signals, labels))]
    x, y = read_beats_csv(_write(tmp_path / "index.csv", lines))
    np.testing.assert_allclose(x, signals, atol=1e-7)
    np.testing.assert_array_equal(y, labels)


def test_header_and_index_column_as_pandas_writes_them(tmp_path: Path) -> None:
    signals, labels = _rows()
    header = "," + ",".join([str(i) for i in range(LENGTH)] + ["187"])
    lines = [f"{i}," + line for i, line in enumerate(_plain_lines(signals, labels))]
    x, y = read_beats_csv(_write(tmp_path / "both.csv", [header, *lines]))
    np.testing.assert_allclose(x, signals, atol=1e-7)
    np.testing.assert_array_equal(y, labels)


def test_real_public_rows(kachuee_mitbih_csv: Path) -> None:
    x, y = read_beats_csv(kachuee_mitbih_csv)
    assert x.shape == (500, LENGTH)
    assert np.bincount(y).tolist() == [100] * 5
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    signals, labels = _rows()
    lines = [line.rsplit(",", 1)[0] for line in _plain_lines(signals, labels)]  # 187 columns
    path = _write(tmp_path / "short.csv", lines)
    with pytest.raises(DataError, match=r"short\.csv, line 1: 187 columns, expected 188"):
        read_beats_csv(path)


def test_one_short_row_names_its_line(tmp_path: Path) -> None:
    signals, labels = _rows()
    lines = _plain_lines(signals, labels)
    lines[3] = lines[3].split(",", 1)[1]  # row 4 loses its first value
    path = _write(tmp_path / "ragged.csv", lines)
    with pytest.raises(DataError, match=r"ragged\.csv, line 4.*missing value"):
        read_beats_csv(path)


def test_one_long_row_names_its_line(tmp_path: Path) -> None:
    signals, labels = _rows()
    lines = _plain_lines(signals, labels)
    lines[2] = "0.5," + lines[2]
    path = _write(tmp_path / "long.csv", lines)
    with pytest.raises(DataError, match=r"long\.csv.*line 3"):
        read_beats_csv(path)


def test_label_outside_classes_names_file_and_line(tmp_path: Path) -> None:
    signals, labels = _rows()
    labels[4] = 7
    path = _write(tmp_path / "label.csv", _plain_lines(signals, labels))
    expected = r"label\.csv, line 5: label 7 is outside the classes 0\.\.4"
    with pytest.raises(DataError, match=expected):
        read_beats_csv(path)


def test_non_integer_label(tmp_path: Path) -> None:
    signals, labels = _rows()
    lines = _plain_lines(signals, labels)
    lines[1] = lines[1].rsplit(",", 1)[0] + ",1.5"
    path = _write(tmp_path / "float.csv", lines)
    with pytest.raises(DataError, match=r"float\.csv, line 2: label 1\.5 is not an integer"):
        read_beats_csv(path)


def test_text_value_names_line_and_column(tmp_path: Path) -> None:
    signals, labels = _rows()
    lines = _plain_lines(signals, labels)
    values = lines[2].split(",")
    values[10] = "abc"
    lines[2] = ",".join(values)
    path = _write(tmp_path / "text.csv", lines)
    with pytest.raises(DataError, match=r"text\.csv, line 3, column 11: 'abc'"):
        read_beats_csv(path)


def test_nan_value_is_an_error(tmp_path: Path) -> None:
    signals, labels = _rows()
    signals[5, 0] = np.nan
    path = _write(tmp_path / "nan.csv", _plain_lines(signals, labels))
    with pytest.raises(DataError, match=r"nan\.csv, line 6, column 1"):
        read_beats_csv(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_beats_csv(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_beats_csv(tmp_path / "empty.csv")


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    signals, labels = _rows(20)
    path = tmp_path / "out" / "beats.csv"
    write_beats_csv(path, signals, labels)
    assert "," in path.read_text().splitlines()[0]
    assert not path.read_text().startswith("0,1,2")  # no header
    x, y = read_beats_csv(path)
    np.testing.assert_array_equal(x, signals)
    np.testing.assert_array_equal(y, labels)
    assert [p.name for p in path.parent.iterdir()] == ["beats.csv"]  # no temp file left



@pytest.mark.parametrize("balance", ["none", "undersample"])
def test_loader_fetches_whole_batches_in_the_epoch_seeded_order(balance: str) -> None:
    """BatchedTensors hands the DataLoader one indexed batch (no per-row stacking), through
    Subset (balancing) too, with exactly the rows the epoch-seeded sampler chose."""
    import torch

    from ecg_experiments.data.beats import BatchedTensors, BeatsDataModuleBase

    rng = np.random.default_rng(0)
    signals = rng.normal(size=(300, 187)).astype(np.float32)
    labels = np.repeat(np.arange(5), [100, 80, 60, 40, 20])

    class Arrays(BeatsDataModuleBase):
        def load_splits(self):
            return {"train": (signals, labels), "val": (signals[:20], labels[:20])}, None

    dm = Arrays(batch_size=32, seed=3, balance=balance)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    rows = np.asarray(getattr(dataset, "indices", range(len(dataset))))
    assert isinstance(getattr(dataset, "dataset", dataset), BatchedTensors)
    assert len(rows) == (300 if balance == "none" else 5 * 20)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    order = rows[list(loader.sampler)]
    batches = list(loader)
    assert [len(y) for _, y in batches] == [32] * (len(rows) // 32) + (
        [len(rows) % 32] if len(rows) % 32 else [])
    for k, (x, y) in enumerate(batches):
        chosen = order[32 * k: 32 * (k + 1)]
        assert torch.equal(x[:, 0], torch.from_numpy(signals[chosen]))
        assert torch.equal(y, torch.from_numpy(labels[chosen]))
    loader.sampler.set_epoch(3)
    assert not torch.equal(next(iter(loader))[1], batches[0][1])  # a new order each epoch
