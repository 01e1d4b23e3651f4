"""Rendering beats to images: what each renderer draws, and the cached class folders made
from the real MIT-BIH records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecg_experiments.data.render import (
    RenderedBeatImages,
    RenderedBeats,
    ScalogramRenderer,
    SpectrogramRenderer,
    WaveformRenderer,
    palette,
    write_images,
)
from ecg_experiments.errors import ConfigError

RATE = 125.0


def _sine(hz: float, n: int = 187) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(n) / RATE)[None, :]


def _peak_row(image: np.ndarray) -> float:
    """The row of highest mean level (time-averaged)."""
    return float(np.argmax(image.astype(float).mean(axis=1)))


@pytest.mark.parametrize("hz", [5.0, 20.0, 40.0])
def test_spectrogram_puts_a_sine_at_its_frequency_row(hz: float) -> None:
    size = 64
    image = SpectrogramRenderer().render(_sine(hz), RATE, size)[0]
    assert image.shape == (size, size) and image.dtype == np.uint8
    expected = (1 - hz / (RATE / 2)) * (size - 1)  # row 0 is the Nyquist frequency
    assert abs(_peak_row(image) - expected) <= 3, (_peak_row(image), expected)


def test_scalogram_orders_frequencies_top_high_bottom_low() -> None:
    renderer = ScalogramRenderer(min_hz=2.0, max_hz=40.0, n_scales=48)
    rows = {hz: _peak_row(renderer.render(_sine(hz), RATE, 64)[0]) for hz in (4.0, 10.0, 25.0)}
    assert rows[25.0] < rows[10.0] < rows[4.0]
    # log-spaced scales: 10 Hz sits where log(40/10) / log(40/2) of the height says
    expected = np.log(40 / 10) / np.log(40 / 2) * 63
    assert abs(rows[10.0] - expected) <= 4, (rows[10.0], expected)
    with pytest.raises(ConfigError, match="render.min_hz=50"):
        ScalogramRenderer(min_hz=50.0).render(_sine(5.0), RATE, 32)


def test_waveform_traces_the_beat_and_drops_the_zero_padding() -> None:
    size = 50
    ramp = np.concatenate([np.linspace(0.1, 1.0, 100), np.zeros(87)])[None, :]  # padded
    image = WaveformRenderer(line_width=1, margin=0.0).render(ramp, RATE, size)[0]
    assert set(np.unique(image)) == {0, 255}
    ink_rows = [np.flatnonzero(image[:, col] == 0) for col in range(size)]
    assert all(len(rows) > 0 for rows in ink_rows)  # connected line, no gaps
    # a rising ramp over the whole width (padding dropped): bottom-left to top-right
    assert ink_rows[0].max() == size - 1 and ink_rows[-1].min() == 0
    centres = [rows.mean() for rows in ink_rows]
    assert all(b <= a for a, b in zip(centres, centres[1:], strict=False))
    thick = WaveformRenderer(line_width=4, margin=0.0).render(ramp, RATE, size)[0]
    assert (thick == 0).sum() > 2 * (image == 0).sum()


def test_png_files_use_the_colour_map_or_grey(tmp_path: Path) -> None:
    beats = np.vstack([_sine(10.0), _sine(30.0)])
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    write_images(SpectrogramRenderer(cmap="magma"), beats, RATE, 40, paths)
    picture = Image.open(paths[0])
    assert picture.mode == "P" and picture.size == (40, 40)
    levels = SpectrogramRenderer(cmap="magma").render(beats[:1], RATE, 40)[0]
    colours = np.frombuffer(palette("magma"), dtype=np.uint8).reshape(256, 3)
    assert np.array_equal(np.asarray(picture.convert("RGB")), colours[levels])
    write_images(WaveformRenderer(), beats, RATE, 40, paths)
    assert Image.open(paths[1]).mode == "L"
    with pytest.raises(ConfigError, match="render.cmap='nope'"):
        palette("nope")


@pytest.fixture(scope="module")
def three_records(mitdb_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from ecg_experiments.data.mitbih import MitbihDataModule
    from ecg_experiments.data.segment import KachueeRecipe

    out = tmp_path_factory.mktemp("render")
    beats = MitbihDataModule(str(mitdb_dir), str(out / "prepared"), KachueeRecipe(),
                             records=["100", "207", "208"], download=False)
    return beats, out


def test_rendered_beats_class_folders_record_names_and_cache(three_records) -> None:
    beats, out = three_records
    rendered = RenderedBeats(beats=beats, renderer=SpectrogramRenderer(),
                             out_dir=str(out / "images"), image_size=32, max_per_class=6, seed=1)
    folder = rendered.ensure()
    manifest = json.loads((folder / "manifest.json").read_text())
    counts = {name: len(list((folder / name).glob("*.png"))) for name in "NSVFQ"}
    assert counts == manifest["images"]
    assert counts["N"] == counts["S"] == counts["V"] == 6  # capped
    assert 0 < counts["F"] <= 6  # records 207/208 hold only a few F beats
    from ecg_experiments.data.beat_table import BeatTable

    table = BeatTable.load(beats.prepared_path / "beats.npz")
    known = {f"{r.replace('/', '-')}_{s:07d}.png"
             for r, s in zip(table.records, table.beats.samples, strict=True)}
    for name in "NSVF":
        for png in (folder / name).glob("*.png"):
            assert png.name in known
            record, sample = png.stem.split("_")
            record = record.replace("-", "/")
            row = np.flatnonzero((table.records == record) & (table.beats.samples == int(sample)))
            assert "NSVFQ"[table.beats.labels[row[0]]] == name
            assert Image.open(png).size == (32, 32)
    # up to date: nothing is redrawn; other settings make another folder
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert rendered.ensure() == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp
    other = RenderedBeats(beats=beats, renderer=WaveformRenderer(), out_dir=str(out / "images"),
                          image_size=32, max_per_class=6, seed=1).ensure()
    assert other != folder and other.name.startswith("waveform-32px-")
    assert not [p for p in (out / "images").iterdir() if p.name.endswith(".tmp")]


def test_image_datamodule_renders_when_missing_and_splits_by_record(three_records) -> None:
    from ecg_experiments.data.images import ImageDataModule

    beats, out = three_records
    source = RenderedBeats(beats=beats, renderer=WaveformRenderer(), out_dir=str(out / "dm"),
                           image_size=24, max_per_class=30, seed=0)
    dm = ImageDataModule(source=source, class_names=list("NSVFQ"), split="records",
                         group_regex=r"^(.+)_\d+\.png$", image_size=24, mean=[0.5] * 3,
                         std=[0.5] * 3,
                         val_fraction=0.34, test_fraction=0.33)
    dm.setup("fit")
    assert dm.root is not None and dm.root.parent == out / "dm"
    records = dm.split_frame["path"].str.extract(r"/mitdb-(\d+)_")[0]
    per_split = dm.split_frame.assign(record=records).groupby("split")["record"].unique()
    assert sorted(np.concatenate(per_split.to_list())) == ["100", "207", "208"]
    assert all(len(r) == 1 for r in per_split)  # one record per split, none shared


@pytest.mark.parametrize("renderer", [SpectrogramRenderer(), ScalogramRenderer(),
                                      WaveformRenderer()], ids=lambda r: r.name)
@pytest.mark.parametrize("size", [64, 227])
@pytest.mark.parametrize("channels", [3, 1])
def test_images_drawn_on_the_fly_have_the_pixels_of_the_png_files(
        renderer, size: int, channels: int, tmp_path: Path) -> None:
    from ecg_experiments.data.image_files import load_image

    rng = np.random.default_rng(size)
    beats = np.concatenate([_sine(3.0) + 0.3 * rng.standard_normal((1, 187)) for _ in range(5)])
    beats[:, 150:] = 0.0  # the zero padding of the Kaggle recipe
    beats = beats.astype(np.float32)
    paths = [tmp_path / f"{i}.png" for i in range(len(beats))]
    write_images(renderer, beats, RATE, size, paths, progress=False)
    drawn = RenderedBeatImages(beats, np.zeros(len(beats)), renderer, RATE, size,
                               transform=None, channels=channels)
    for i, path in enumerate(paths):
        from_file = np.asarray(load_image(path, channels))
        on_the_fly = np.asarray(drawn.image(i))
        assert on_the_fly.shape == from_file.shape == ((size, size, 3) if channels == 3
                                                       else (size, size))
        assert np.array_equal(on_the_fly, from_file)
    assert from_file.std() > 0  # not a blank image


def test_on_the_fly_datamodule_splits_and_tensors_equal_the_png_folders(three_records) -> None:
    """The same split (by record), the same file names, and the same tensors from PNG folders
    and from images drawn on the fly; nothing written to disk on the fly."""
    import torch

    from ecg_experiments.data.images import ImageDataModule

    beats, out = three_records
    modules = {}
    for on_the_fly in (False, True):
        source = RenderedBeats(beats=beats, renderer=SpectrogramRenderer(),
                               out_dir=str(out / f"fly{on_the_fly}"), image_size=32,
                               max_per_class=20, seed=0, on_the_fly=on_the_fly)
        dm = ImageDataModule(source=source, class_names=list("NSVFQ"), split="records",
                             group_regex=r"^(.+)_\d+\.png$", image_size=32, augment=None,
                             val_fraction=0.34, test_fraction=0.33)
        dm.setup("fit")
        modules[on_the_fly] = dm
    files, drawn = modules[False], modules[True]
    assert not (out / "flyTrue").exists() and drawn.root is None
    # duplicates: PNG files are hashed, beats drawn on the fly by their samples
    same = ["index", "split", "path", "label", "duplicate", "record"]
    assert files.split_frame[same].equals(drawn.split_frame[same])
    assert [p.relative_to(files.root) for p in files.paths("test")] == drawn.paths("test")
    for split in ("train", "val", "test"):
        a, b = files.evaluation_dataset(split), drawn.evaluation_dataset(split)
        assert len(a) == len(b) > 0
        for i in range(0, len(a), 7):
            assert torch.equal(a[i][0], b[i][0]) and int(a[i][1]) == int(b[i][1])
    assert drawn.fingerprint()["images.sha256"] != ""
